"""PruneFL (Jiang et al., TNNLS 2022; BASELINES.md B3, the original variant): initial pruning at one
client, then every R rounds the server re-decides one global mask with ADJUST from the
participants' squared dense gradients, under a uniform cost model (round time proportional to the
active parameters, T0 = --prunefl_time_const * N_m). Its density is emergent; --prunefl_max_density
caps it for comparisons at FLASH's d. Pruned weights keep their last value at the server, and come
back with it when ADJUST re-adds them."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from flash_jax.fl.client import clip_trained_gradient, client_loss
from flash_jax.fl.accounting import model_transfer_bits, with_stage_bits
from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.methods import prunefl_feddst
from flash_jax.methods.prunefl_feddst import cost_model_of
from flash_jax.fl.rules import FEDAVG, FIXED_MASK, LocalMode, ServerMaskRule, ServerUpdate, all_weights
from flash_jax.sparse import apply_masks, stack_levels
from flash_jax.sparse.prunefl_search import adjust
from flash_jax.streams import PRUNEFL_INITIAL_PRUNING, generator


def is_adjust_round(config, t: int) -> bool:
    """Rounds R, 2R, ... (0-based), as the original's first adjustment at round 50."""
    return t >= config.prunefl_adjust_every and (t - config.prunefl_adjust_every) % config.prunefl_adjust_every == 0


def prune_fraction(config, t: int) -> float:
    return config.prunefl_max_dec * 0.5 ** (t / config.prunefl_dec_half_life)


def density_cap(config, t: int, num_maskable: int) -> float | None:
    """Active entries allowed: --prunefl_max_density, moving linearly to --prunefl_target_density."""
    top, target = config.prunefl_max_density, config.prunefl_target_density
    if target > 0:
        return (top + (target - top) * t / config.fl_rounds) * num_maskable
    return top * num_maskable if top < 1.0 else None


def _search(setup, dense: dict, mask: dict, squared_tree: dict, dtp: float, cap: float | None) -> dict:
    """ADJUST on the host from the (averaged) squared gradients of every parameter."""
    flat = jax.device_get(traverse_util.flatten_dict(squared_tree, sep="/"))
    paths, (costs, t0) = setup.tensors.paths, cost_model_of(setup)
    other = float(sum(np.sum(v, dtype=np.float64) for p, v in flat.items() if p not in paths))
    new = adjust(jax.device_get(dense), jax.device_get(mask), {p: flat[p] for p in paths}, other, dtp, costs, t0, cap)
    return {p: jnp.asarray(m) for p, m in new.items()}


def _server_update(setup, outcome):
    """Aggregated values where the mask holds, the server's last values elsewhere; ADJUST on
    adjustment rounds."""
    config, r = setup.config, outcome.round - 1  # r: the round as the original counts it, from 0
    if config.prunefl_variant == "feddst":
        return prunefl_feddst.server_update(setup, outcome)
    fill = (lambda m, new, old: jnp.where(m, new, old)) if config.prunefl_regrow_init == "stale" \
        else (lambda m, new, old: jnp.where(m, new, 0.0))
    dense = {p: fill(outcome.server_mask[p], outcome.maskable[p], outcome.server_state["dense"][p])
             for p in outcome.maskable}
    state = {"dense": dense}
    if not outcome.mode.gradient_report:
        return ServerUpdate(state=state)
    mask = _search(setup, dense, outcome.server_mask, outcome.reports, prune_fraction(config, r),
                   density_cap(config, r, setup.tensors.num_maskable))
    return ServerUpdate(mask=mask, maskable=dense, state=state)


@functools.partial(jax.jit, static_argnums=0)
def _ip_round(spec, params, batch_stats, masks, xs, ys, lr):
    """One IP round: an SGD step on each fixed batch with the masked model; the per-step squared
    gradients, summed."""
    optimizer = optax.sgd(lr)

    def step(carry, batch):
        params, batch_stats, squared = carry
        x, y = batch
        (_, (batch_stats, _)), grads = jax.value_and_grad(client_loss, argnums=1, has_aux=True)(
            spec, apply_masks(params, masks), batch_stats, {}, x, y, jnp.ones(y.shape, jnp.float32))
        grads = apply_masks(grads, masks)  # the forward pass uses theta * mask
        if spec.clip_grad_norm > 0:
            grads = clip_trained_gradient(grads, masks, spec.clip_grad_norm)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        squared = jax.tree.map(lambda s, g: s + g * g, squared, grads)
        return (optax.apply_updates(params, updates), batch_stats, squared), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (params, batch_stats, squared), _ = jax.lax.scan(step, (params, batch_stats, zeros), (xs, ys))
    return params, batch_stats, squared


@functools.partial(jax.jit, static_argnums=0)
def _ip_accuracy(apply_fn, variables, xs, ys):
    logits = apply_fn(variables, xs.reshape((-1,) + xs.shape[2:]), train=False)
    return jnp.mean(jnp.argmax(logits, -1) == ys.reshape(-1))


def initial_pruning(setup, state):
    """B3.2: one client (the first of a seeded permutation) trains on fixed batches of its data; from
    the round its accuracy on them reaches factor/classes, ADJUST (uncapped) runs every
    --prunefl_ip_adjust_every rounds until the density changes by at most --prunefl_ip_tol
    --prunefl_ip_patience times in a row, or --prunefl_ip_max_rounds. The client uploads the pruned
    model once; every client's first download then carries the new mask."""
    config, store = setup.config, setup.data.store
    rng = generator(config.seed, PRUNEFL_INITIAL_PRUNING)
    client = int(rng.permutation(config.num_users)[0])
    batch = min(config.local_bs, int(store.counts[client]))
    rows = np.stack([rng.choice(store.counts[client], batch, replace=False)
                     for _ in range(config.prunefl_ip_batches)]) + store.offsets[client]
    xs, ys = store.x[rows], store.y[rows]
    params, batch_stats, mask = state.model.params, state.model.batch_stats, state.server.top
    squared = jax.tree.map(jnp.zeros_like, params)
    start, densities, stable, num_classes = None, [], [], setup.model.module.num_classes
    for r in range(1, config.prunefl_ip_max_rounds + 1):
        if start is None and (r - 1) % 10 == 0:
            variables = {"params": apply_masks(params, mask), "batch_stats": batch_stats}
            accuracy = float(_ip_accuracy(setup.eval_apply, variables if setup.model.has_batch_stats
                                          else {"params": variables["params"]}, xs, ys))
            start = r if accuracy >= config.prunefl_ip_acc_factor / num_classes else None
        params, batch_stats, round_squared = _ip_round(setup.spec, params, batch_stats, mask, xs, ys, config.lr_start)
        squared = jax.tree.map(jnp.add, squared, round_squared)
        if start is not None and (r - start) % config.prunefl_ip_adjust_every == 0:
            flat = traverse_util.flatten_dict(params, sep="/")
            mask = _search(setup, {p: flat[p] for p in setup.tensors.paths}, mask, squared, config.prunefl_max_dec,
                           None)
            squared = jax.tree.map(jnp.zeros_like, params)
            densities.append(sum(int(m.sum()) for m in mask.values()) / setup.tensors.num_maskable)
            if len(densities) > 1:
                stable.append(abs(densities[-1] / densities[-2] - 1) <= config.prunefl_ip_tol)
            if len(stable) >= config.prunefl_ip_patience and all(stable[-config.prunefl_ip_patience:]):
                break
    flat = traverse_util.flatten_dict(params, sep="/")
    masked = apply_masks(params, mask)
    upload = model_transfer_bits(setup.tensors, masked, mask_known=False)
    server = state.server.replace(levels=stack_levels(mask), ids=state.server.ids + 1)
    new_state = state.replace(model=state.model.replace(params=masked, batch_stats=batch_stats), server=server,
                              server_state={"dense": {p: flat[p] for p in setup.tensors.paths}})
    return with_stage_bits(new_state, upload), {"client": client, "rounds": r, "gate_round": start,
                                                "densities": densities}


def _stage1(setup, state):
    if setup.config.prunefl_variant == "feddst":
        return prunefl_feddst.initial_stage(setup, state)
    return initial_pruning(setup, state)


def _local(config, t: int) -> LocalMode:
    r = t - 1  # the round as the original counts it, from 0
    if config.prunefl_variant == "feddst":
        return LocalMode(gradient_report="last" if prunefl_feddst.is_readjust_round(config, r) else "")
    return LocalMode(gradient_report="sum_squared" if is_adjust_round(config, r) else "")


def _optimizer(config):
    return prunefl_feddst.optimizer(config) if config.prunefl_variant == "feddst" else optax.sgd


def _dense_state(setup, params):
    flat = traverse_util.flatten_dict(params, sep="/")
    return {"dense": {p: flat[p] for p in setup.tensors.paths}}


PRUNEFL = register_method(Method(
    name="prunefl", help="PruneFL: initial pruning at one client, then ADJUST of one global mask every R rounds",
    client=FIXED_MASK._replace(local=_local, optimizer=_optimizer),
    server_mask=ServerMaskRule(init=all_weights, update=_server_update, init_state=_dense_state),
    aggregation=lambda config: FEDAVG, stage1=_stage1, stage1_record="initial_pruning.json", group="PruneFL",
    knobs=(
        Knob("prunefl_variant", "original", "PruneFL: the original (jiangyuang/PruneFL) or the FedDST authors' "
             "re-implementation (bibikar/feddst)", choices=("original", "feddst")),
        Knob("prunefl_adjust_every", 50, "PruneFL: FL rounds between adjustments R", lambda v: v >= 1, ">= 1"),
        Knob("prunefl_max_density", 1.0, "PruneFL: cap on the active maskable share (set --density's value for "
             "comparisons at FLASH's d; 1: none)", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
        Knob("prunefl_target_density", 0.0, "PruneFL: with the cap, move it linearly to this over the run (0: fixed)",
             lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
        Knob("prunefl_time_const", 0.7, "PruneFL: tau = T0 / sum_l c_l n_l (larger: denser)", lambda v: v > 0, "> 0"),
        Knob("prunefl_layer_costs", "", "PruneFL: comma-separated cost per entry of each maskable tensor, in sorted "
             "path order (empty: 1 each)"),
        Knob("prunefl_max_dec", 0.3, "PruneFL: initial prune fraction dtp", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
        Knob("prunefl_dec_half_life", 10000.0, "PruneFL: rounds over which dtp halves", lambda v: v > 0, "> 0"),
        Knob("prunefl_ip_batches", 10, "PruneFL: initial pruning's fixed minibatches", lambda v: v >= 1, ">= 1"),
        Knob("prunefl_ip_max_rounds", 1000, "PruneFL: initial pruning's round limit", lambda v: v >= 1, ">= 1"),
        Knob("prunefl_ip_adjust_every", 50, "PruneFL: initial pruning's rounds between adjustments",
             lambda v: v >= 1, ">= 1"),
        Knob("prunefl_ip_tol", 0.1, "PruneFL: initial pruning stops after relative density changes within this",
             lambda v: v >= 0, ">= 0"),
        Knob("prunefl_ip_patience", 5, "PruneFL: ... this many times in a row", lambda v: v >= 1, ">= 1"),
        Knob("prunefl_ip_acc_factor", 1.5, "PruneFL: initial pruning adjusts once accuracy >= this / classes",
             lambda v: v >= 0, ">= 0"),
        Knob("prunefl_regrow_init", "stale", "PruneFL: a re-added weight restarts at its last value or at 0",
             choices=("stale", "zero")),
        Knob("prunefl_initial_rounds", 5, "PruneFL (feddst variant): rounds of the one-client initial stage",
             lambda v: v >= 1, ">= 1"),
    )))
