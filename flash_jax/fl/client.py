"""Local training of one client: a scan over its padded steps, with the method's mask rule between phases.

`local_train` is written for a single client and vmapped over the cohort by `fl.cohort`. A padded
step (step_valid False) leaves every piece of state untouched, so a client padded to the cohort's
longest schedule ends exactly where training it alone would.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from flash_jax.data.augment import random_crop_flip
from flash_jax.fl.local_rules import MaskStep
from flash_jax.sparse import apply_masks
from flash_jax.streams import AUGMENT, MASK_UPDATE, derive



@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """Static description of local training (hashable: it is a jit static argument). The
    method's client-side records (fl/local_rules.py) enter here: `step_transform`, `finish` and
    `effective` for the run, `mask_rule` and `report` per round (`for_round`)."""

    apply_fn: Callable
    has_batch_stats: bool
    augment: bool
    make_optimizer: Callable[[jax.Array], optax.GradientTransformation] = optax.sgd
    clip_grad_norm: float = 0.0    # > 0: each step's gradient of the trained weights scaled to at most this norm
    finish: Callable | None = None  # (maskable params) -> the client's final masks, after its last step
    effective: Callable | None = None  # (params) -> the weights the model computes with (SparsyFed's Powerprop)
    step_transform: Any = None     # a step transform: how each step computes its gradient
    mask_rule: Any = None          # a local mask rule: the mask changes between phases
    report: Any = None             # a gradient report: uploaded besides the model

    def for_round(self, mode) -> ClientSpec:
        """This spec with a round's LocalMode (fl/rules.py): its mask rule and gradient report."""
        return dataclasses.replace(self, mask_rule=mode.mask_rule, report=mode.report)

    @property
    def changes_masks(self) -> bool:
        return self.mask_rule is not None or self.finish is not None

    @property
    def tracks_gradient(self) -> bool:
        return self.mask_rule is not None and self.mask_rule.needs_gradient


def client_loss(spec: ClientSpec, params, batch_stats, transform_state, batch):
    """Mean loss over the real examples of `batch` (images, labels, weights: 1 real, 0 padding);
    also returns the new BatchNorm statistics and the step transform's new state."""
    x, y, weight = batch
    variables = {"params": params if spec.effective is None else spec.effective(params)}
    apply_fn = spec.apply_fn
    if spec.step_transform is not None:
        apply_fn, transform_state = spec.step_transform.wrap(apply_fn, transform_state)
    if spec.has_batch_stats:
        variables["batch_stats"] = batch_stats
        logits, updates = apply_fn(variables, x, train=True, example_mask=weight, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        logits = apply_fn(variables, x, train=True, example_mask=weight)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    loss = jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return loss, (batch_stats, transform_state)


def clip_trained_gradient(grads, masks, max_norm: float):
    """Scale the whole gradient so that its trained part (masked-out entries excluded, since the mask
    discards their update) has global L2 norm at most `max_norm`. With logits, an unclipped SGD step
    at lr 0.1 can throw MNISTNet's 5120-input dense layer into divergence on a skewed client."""
    norm = optax.global_norm(apply_masks(grads, masks))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * scale, grads)


class ClientSchedule(NamedTuple):
    """One client's data for the round: the store (the cohort's, shared) and its padded plan into it."""

    store_x: jax.Array
    store_y: jax.Array
    example_index: jax.Array  # (steps, batch): the store rows of each step's examples
    example_valid: jax.Array  # (steps, batch): real examples (padding: False)
    step_valid: jax.Array     # (steps,): real steps


class ClientStart(NamedTuple):
    """Where one client starts: the model and masks it receives, its key and its budget of active
    entries (d_c * N_m)."""

    params: dict
    batch_stats: dict
    masks: dict
    key: jax.Array
    target_count: jax.Array


class RoundInputs(NamedTuple):
    """Scalars every participant of the round shares."""

    lr: Any
    mask_rate: Any         # handed to the round's local mask rule (FedDST: the readjustment ratio)
    round_key: jax.Array


class StepCarry(NamedTuple):
    """What local training carries from step to step."""

    params: dict
    batch_stats: dict
    opt_state: Any
    gradient: dict         # the latest dense gradient of the maskable tensors (mask rules that read it), {} without
    transform_state: Any   # the step transform's state, {} without
    report: Any            # the gradient report's accumulator, {} without


class LocalCarry(NamedTuple):
    """What local training carries from phase to phase."""

    steps: StepCarry
    masks: dict
    mask_state: Any        # the local mask rule's own state, () without


def _keep_if(valid, new, old):
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)


def _train_phase(spec: ClientSpec, optimizer, schedule: ClientSchedule, augment_key, carry: LocalCarry,
                 phase_inputs) -> tuple[LocalCarry, jax.Array]:
    """Local SGD over one phase's steps with the phase's masks fixed; also the phase's loss sum."""
    masks = carry.masks

    def step(steps: StepCarry, inputs):
        index, weight_mask, valid, t = inputs
        x, y = schedule.store_x[index], schedule.store_y[index]
        if spec.augment:
            x = random_crop_flip(derive(augment_key, t), x)
        weight = weight_mask.astype(jnp.float32)
        (loss, (new_stats, new_transform)), grads = jax.value_and_grad(client_loss, argnums=1, has_aux=True)(
            spec, steps.params, steps.batch_stats, steps.transform_state, (x, y, weight))
        if spec.clip_grad_norm > 0:
            grads = clip_trained_gradient(grads, masks, spec.clip_grad_norm)
        updates, new_opt = optimizer.update(grads, steps.opt_state, steps.params)
        new_params = apply_masks(optax.apply_updates(steps.params, updates), masks)
        gradient = steps.gradient
        if spec.tracks_gradient:  # the dense gradient, inactive entries included
            flat_grads = traverse_util.flatten_dict(grads, sep="/")
            gradient = {p: flat_grads[p] for p in masks}
        report = steps.report if spec.report is None else spec.report.accumulate(steps.report, grads)
        new = StepCarry(new_params, new_stats, new_opt, gradient, new_transform, report)
        return _keep_if(valid, new, steps), jnp.where(valid, loss, 0.0)

    steps, losses = jax.lax.scan(step, carry.steps, phase_inputs)
    return carry._replace(steps=steps), jnp.sum(losses)


def _update_masks(spec: ClientSpec, carry: LocalCarry, key, progress, target_count, rate) -> LocalCarry:
    """The local mask rule at a phase boundary; the parameters outside the new masks become 0."""
    params = carry.steps.params
    flat = traverse_util.flatten_dict(params, sep="/")
    step = MaskStep(key, {p: flat[p] for p in carry.masks}, carry.masks,
                    carry.steps.gradient if spec.tracks_gradient else None, progress, target_count, rate)
    masks, mask_state = spec.mask_rule.update(step, carry.mask_state)
    return LocalCarry(carry.steps._replace(params=apply_masks(params, masks)), masks, mask_state)


def local_train(spec: ClientSpec, phase_lengths: tuple[int, ...], schedule: ClientSchedule, start: ClientStart,
                shared: RoundInputs):
    """Train one client; returns (params, batch_stats, masks, mean training loss over its steps, its
    gradient report ({} without)).

    The round's local mask rule runs at the phase boundaries it picks (fl/local_rules.py): client
    sparse learning at every one (mid-epoch for E=1, between epochs for E>1), FedDST's readjustment
    at the last, so the regrown weights (which start at 0) train for the rest of the last epoch
    instead of reaching the server at 0, where its magnitude pruning would drop them at once. Equal
    phases (E>1 epochs) run as a scan over epochs, so compile time does not grow with E.
    """
    optimizer = spec.make_optimizer(shared.lr)
    masks = start.masks
    params = apply_masks(start.params, masks)
    step_valid = schedule.step_valid
    num_steps = jnp.sum(step_valid)  # E * steps_per_epoch of this client
    augment_key, update_key = derive(start.key, AUGMENT), derive(start.key, MASK_UPDATE)
    steps = StepCarry(params, start.batch_stats, optimizer.init(params),
                      {p: jnp.zeros(m.shape, jnp.float32) for p, m in masks.items()} if spec.tracks_gradient else {},
                      {} if spec.step_transform is None else spec.step_transform.init(masks),
                      {} if spec.report is None else spec.report.init(params, tuple(masks)))
    carry = LocalCarry(steps, masks, () if spec.mask_rule is None else spec.mask_rule.init())
    train_phase = functools.partial(_train_phase, spec, optimizer, schedule, augment_key)

    def boundary(carry, phase, steps_done):
        return _update_masks(spec, carry, derive(update_key, phase), steps_done / num_steps, start.target_count,
                             shared.mask_rate)

    inputs = (schedule.example_index, schedule.example_valid, step_valid, jnp.arange(step_valid.shape[0]))
    num_phases = len(phase_lengths)
    if num_phases > 1 and len(set(phase_lengths)) == 1:  # E > 1: one phase per epoch
        by_epoch = jax.tree.map(lambda a: a.reshape((num_phases, phase_lengths[0]) + a.shape[1:]), inputs)
        steps_done = jnp.cumsum(jnp.sum(by_epoch[2], axis=1))

        def epoch(carry, epoch_inputs):
            e, phase_inputs = epoch_inputs
            carry, loss = train_phase(carry, phase_inputs)
            if spec.mask_rule is not None:
                carry = jax.lax.cond(spec.mask_rule.at(e, num_phases), lambda c: boundary(c, e, steps_done[e]),
                                     lambda c: c, carry)
            return carry, loss

        carry, losses = jax.lax.scan(epoch, carry, (jnp.arange(num_phases), by_epoch))
        loss_sum = jnp.sum(losses)
    else:  # E = 1: a mask update splits the epoch into two phases of different lengths
        loss_sum, first = jnp.zeros(()), 0
        for phase, length in enumerate(phase_lengths):
            carry, loss = train_phase(carry, jax.tree.map(lambda a: a[first:first + length], inputs))
            loss_sum, first = loss_sum + loss, first + length
            if spec.mask_rule is not None and spec.mask_rule.at(phase, num_phases):
                carry = boundary(carry, phase, jnp.sum(step_valid[:first]))
    return _finish(spec, carry) + (loss_sum / jnp.maximum(num_steps, 1),
                                   {} if spec.report is None else spec.report.finalize(carry.steps.report))


def _finish(spec: ClientSpec, carry: LocalCarry) -> tuple[dict, dict, dict]:
    """(params, batch_stats, masks) after the method's finishing step, e.g. Top-k's global cut to d."""
    params, masks = carry.steps.params, carry.masks
    if spec.finish is not None:
        flat = traverse_util.flatten_dict(params, sep="/")
        masks = spec.finish({p: flat[p] for p in masks})
        params = apply_masks(params, masks)
    return params, carry.steps.batch_stats, masks


def momentum_sgd(lr, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (PyTorch's SGD; FedDST's clients)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))
