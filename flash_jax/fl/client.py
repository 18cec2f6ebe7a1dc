"""Local training of one client: a scan over its padded steps, with sparse learning between phases.

`local_train` is written for a single client and vmapped over the cohort by `fl.cohort`. A padded
step (step_valid False) leaves every piece of state untouched, so a client padded to the cohort's
longest schedule ends exactly where training it alone would.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from flash_jax.data.augment import random_crop_flip
from flash_jax.models.activation_pruning import initial_thresholds, with_pruned_weight_gradients
from flash_jax.sparse import apply_masks, mask_update, readjust_masks, sl_init
from flash_jax.streams import AUGMENT, MASK_UPDATE, derive



@dataclasses.dataclass(frozen=True)
class ClientSpec:
    """Static description of local training (hashable: it is a jit static argument)."""

    apply_fn: Callable
    has_batch_stats: bool
    sparse_learning: bool          # the mask update of client sparse learning at every phase boundary
    prune_rate: float
    augment: bool
    make_optimizer: Callable[[jax.Array], optax.GradientTransformation] = optax.sgd
    growth: str = "random"         # sparse learning regrows at random or by largest |gradient|
    readjust: bool = False         # FedDST: one prune-and-regrow-by-|gradient| before the last phase
    clip_grad_norm: float = 0.0    # > 0: each step's gradient of the trained weights scaled to at most this norm
    finish: Callable | None = None  # (flat maskable params) -> the client's final masks, after its last step
    effective: Callable | None = None  # (params) -> the weights the model computes with (SparsyFed's Powerprop)
    act_pruning: str = "off"       # SparsyFed's activation pruning of the weight gradient: off, first_step, every_step
    # also return (PruneFL) "sum_squared": the square of the client's summed dense gradient of every
    # parameter, or "last": the dense gradient of the maskable tensors at its last step
    gradient_report: str = ""

    @property
    def changes_masks(self) -> bool:
        return self.sparse_learning or self.readjust or self.finish is not None

    @property
    def tracks_gradient(self) -> bool:
        return self.readjust or (self.sparse_learning and self.growth == "gradient") or self.gradient_report == "last"


def client_loss(spec: ClientSpec, params, batch_stats, thresholds, x, y, weight):
    """Mean loss over the real examples; also returns the new BatchNorm statistics and activation-
    pruning thresholds."""
    variables = {"params": params if spec.effective is None else spec.effective(params)}
    apply_fn = spec.apply_fn
    if spec.act_pruning != "off":
        apply_fn, thresholds = with_pruned_weight_gradients(apply_fn, thresholds, spec.act_pruning == "first_step")
    if spec.has_batch_stats:
        variables["batch_stats"] = batch_stats
        logits, updates = apply_fn(variables, x, train=True, example_mask=weight, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
    else:
        logits = apply_fn(variables, x, train=True, example_mask=weight)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    loss = jnp.sum(per_example * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return loss, (batch_stats, thresholds)


def clip_trained_gradient(grads, masks, max_norm: float):
    """Scale the whole gradient so that its trained part (masked-out entries excluded, since the mask
    discards their update) has global L2 norm at most `max_norm`. With logits, an unclipped SGD step
    at lr 0.1 can throw MNISTNet's 5120-input dense layer into divergence on a skewed client."""
    norm = optax.global_norm(apply_masks(grads, masks))
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * scale, grads)


class LocalCarry(NamedTuple):
    """What local training carries from step to step."""

    params: dict
    batch_stats: dict
    opt_state: Any
    masks: dict
    sl_state: Any          # sparse learning's growth-adjustment memory (SLState)
    grads_seen: dict       # the latest dense gradient of the masked tensors (gradient growth, readjustment)
    thresholds: dict       # activation-pruning thresholds by kernel path (SparsyFed), {} without
    grad_sum: dict         # the sum of the dense gradients of every parameter so far (PruneFL), {} without


def _keep_if(valid, new, old):
    return jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)


def local_train(spec: ClientSpec, phase_lengths: tuple[int, ...], store_x, store_y, params, batch_stats,
                masks, lr, readjust_ratio, key, example_index, example_valid, step_valid, target_count):
    """Train one client; returns (params, batch_stats, masks, mean training loss over its steps, its
    gradient report (spec.gradient_report; {} without)).

    Client sparse learning's mask update runs between phases (mid-epoch for E=1, between epochs for
    E>1); its prune rate decays linearly with the client's own completed steps. FedDST's
    readjustment (fraction ``readjust_ratio``) runs once, at the last phase boundary, so the regrown
    weights (which start at 0) train for the rest of the last epoch instead of reaching the server
    at 0, where its magnitude pruning would drop them at once. Gradient growth scores an inactive
    entry by |gradient| of the latest step. Equal phases (E>1 epochs) run as a scan over epochs, so
    compile time does not grow with E.
    """
    optimizer = spec.make_optimizer(lr)
    params = apply_masks(params, masks)
    num_steps = jnp.sum(step_valid)  # E * steps_per_epoch of this client
    augment_key = derive(key, AUGMENT)
    update_key = derive(key, MASK_UPDATE)

    def train_phase(carry, phase_inputs):
        """Local SGD over one phase's steps with the phase's mask fixed."""
        masks = carry.masks

        def step(carry, inputs):
            params, batch_stats, opt_state, grads_seen, thresholds, grad_sum = carry
            index, weight_mask, valid, t = inputs
            x, y = store_x[index], store_y[index]
            if spec.augment:
                x = random_crop_flip(derive(augment_key, t), x)
            weight = weight_mask.astype(jnp.float32)
            (loss, (new_stats, new_thresholds)), grads = jax.value_and_grad(client_loss, argnums=1, has_aux=True)(
                spec, params, batch_stats, thresholds, x, y, weight)
            if spec.clip_grad_norm > 0:
                grads = clip_trained_gradient(grads, masks, spec.clip_grad_norm)
            updates, new_opt = optimizer.update(grads, opt_state, params)
            new_params = apply_masks(optax.apply_updates(params, updates), masks)
            if spec.tracks_gradient:  # the dense gradient, inactive entries included
                flat_grads = traverse_util.flatten_dict(grads, sep="/")
                new_grads_seen = {p: flat_grads[p] for p in masks}
            else:
                new_grads_seen = grads_seen
            new_grad_sum = jax.tree.map(jnp.add, grad_sum, grads) if spec.gradient_report == "sum_squared" else grad_sum
            carry = _keep_if(valid, (new_params, new_stats, new_opt, new_grads_seen, new_thresholds, new_grad_sum),
                             (params, batch_stats, opt_state, grads_seen, thresholds, grad_sum))
            return carry, jnp.where(valid, loss, 0.0)

        (params, batch_stats, opt_state, grads_seen, thresholds, grad_sum), losses = jax.lax.scan(
            step, (carry.params, carry.batch_stats, carry.opt_state, carry.grads_seen, carry.thresholds,
                   carry.grad_sum), phase_inputs)
        return carry._replace(params=params, batch_stats=batch_stats, opt_state=opt_state, grads_seen=grads_seen,
                              thresholds=thresholds, grad_sum=grad_sum), jnp.sum(losses)

    def update_masks(carry: LocalCarry, phase, steps_done) -> LocalCarry:
        flat = traverse_util.flatten_dict(carry.params, sep="/")
        gradient_scores = {p: jnp.abs(g) for p, g in carry.grads_seen.items()} if spec.tracks_gradient else None
        sl_state = carry.sl_state
        if spec.readjust:
            masks = readjust_masks(flat, carry.masks, gradient_scores, readjust_ratio)
        else:
            prune_rate = spec.prune_rate * (1.0 - steps_done / num_steps)
            masks, sl_state = mask_update(derive(update_key, phase), flat, carry.masks, prune_rate,
                                          target_count, sl_state, grow_scores=gradient_scores)
        return carry._replace(params=apply_masks(carry.params, masks), masks=masks, sl_state=sl_state)

    grads_seen = {p: jnp.zeros(m.shape, jnp.float32) for p, m in masks.items()} if spec.tracks_gradient else {}
    thresholds = initial_thresholds(masks) if spec.act_pruning != "off" else {}
    grad_sum = jax.tree.map(jnp.zeros_like, params) if spec.gradient_report == "sum_squared" else {}
    carry = LocalCarry(params, batch_stats, optimizer.init(params), masks, sl_init(), grads_seen, thresholds,
                       grad_sum)
    inputs = (example_index, example_valid, step_valid, jnp.arange(step_valid.shape[0]))
    num_phases = len(phase_lengths)
    if num_phases > 1 and len(set(phase_lengths)) == 1:  # E > 1: one phase per epoch
        by_epoch = jax.tree.map(lambda a: a.reshape((num_phases, phase_lengths[0]) + a.shape[1:]), inputs)
        steps_done = jnp.cumsum(jnp.sum(by_epoch[2], axis=1))

        def epoch(carry, epoch_inputs):
            e, phase_inputs = epoch_inputs
            carry, loss = train_phase(carry, phase_inputs)
            if spec.changes_masks:
                boundary = e == num_phases - 2 if spec.readjust else e < num_phases - 1
                carry = jax.lax.cond(boundary, lambda c: update_masks(c, e, steps_done[e]), lambda c: c, carry)
            return carry, loss

        carry, losses = jax.lax.scan(epoch, carry, (jnp.arange(num_phases), by_epoch))
        loss_sum = jnp.sum(losses)
    else:  # E = 1: the mask update splits the epoch into two phases of different lengths
        loss_sum, start = jnp.zeros(()), 0
        for phase, length in enumerate(phase_lengths):
            carry, loss = train_phase(carry, jax.tree.map(lambda a: a[start:start + length], inputs))
            loss_sum, start = loss_sum + loss, start + length
            if spec.changes_masks and phase < num_phases - 1:
                carry = update_masks(carry, phase, jnp.sum(step_valid[:start]))
    params, masks = carry.params, carry.masks
    if spec.finish is not None:  # e.g. Top-k's global magnitude cut of the trained model to d
        flat = traverse_util.flatten_dict(params, sep="/")
        masks = spec.finish({p: flat[p] for p in masks})
        params = apply_masks(params, masks)
    report = carry.grads_seen if spec.gradient_report == "last" else jax.tree.map(jnp.square, carry.grad_sum)
    return params, carry.batch_stats, masks, loss_sum / jnp.maximum(num_steps, 1), report


def momentum_sgd(lr, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay added to the gradient (PyTorch's SGD; FedDST's clients)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))
