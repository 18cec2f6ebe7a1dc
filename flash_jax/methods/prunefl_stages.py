"""PruneFL's client side and its stages before the rounds: the gradient reports its clients upload,
the original's initial pruning at one client and ADJUST (sparse/prunefl_search.py) on squared
dense gradients; the FedDST authors' initial one-client rounds and READJUST on the mean last-step
gradient."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util

from flash_jax.comm import VALUE_BITS, model_bits
from flash_jax.fl.accounting import model_transfer_bits, with_stage_bits
from flash_jax.fl.client import RoundInputs, clip_trained_gradient, client_loss
from flash_jax.fl.cohort import Participants, ServerModel, train_clients
from flash_jax.fl.rules import LocalMode
from flash_jax.sparse import apply_masks, stack_levels
from flash_jax.sparse.prunefl_search import CostModel, SquaredGradients, adjust, cost_model, readjust
from flash_jax.streams import PRUNEFL_FEDDST_INITIAL, PRUNEFL_INITIAL_PRUNING, generator, key

PRUNE_BASE = 0.3  # the FedDST authors' READJUST: p = 0.3 in the initial stage, 0.3 * 0.5^t in round t


@struct.dataclass
class DenseWeights:
    """The original PruneFL's own server state: the last value of every maskable weight, pruned ones
    included, so a weight ADJUST adds back resumes from it."""

    dense: dict


def cost_model_of(setup) -> CostModel:
    """PruneFL's cost model (c_l, T0) from --prunefl_layer_costs and --prunefl_time_const."""
    return cost_model(setup.tensors.paths, setup.tensors.sizes, setup.config.prunefl_layer_costs,
                      setup.config.prunefl_time_const)


def adjusted_mask(setup, dense: dict, mask: dict, squared_tree: dict, dtp: float, cap: float | None) -> dict:
    """ADJUST on the host from the (averaged) squared gradients of every parameter."""
    flat = jax.device_get(traverse_util.flatten_dict(squared_tree, sep="/"))
    paths = setup.tensors.paths
    other = float(sum(np.sum(v, dtype=np.float64) for p, v in flat.items() if p not in paths))
    new = adjust(jax.device_get(dense), jax.device_get(mask), SquaredGradients({p: flat[p] for p in paths}, other), dtp,
                 cost_model_of(setup), cap)
    return {p: jnp.asarray(m) for p, m in new.items()}


def readjusted_mask(setup, mean_gradient: dict, prune: float) -> dict:
    """READJUST from the participants' mean last-step gradient, keeping at least 1 - prune of the
    maskable weights."""
    costs, t0 = cost_model_of(setup)
    flat = jax.device_get(traverse_util.flatten_dict(mean_gradient, sep="/"))  # the average comes back nested
    squared = {p: np.square(np.asarray(flat[p], np.float64)) for p in setup.tensors.paths}
    return {p: jnp.asarray(m) for p, m in readjust(squared, costs, t0, 1.0 - prune).items()}


@dataclasses.dataclass(frozen=True)
class SquaredGradientSum:
    """PruneFL's gradient report: the square of the client's summed dense gradient of every
    parameter, averaged with sample weights."""

    by_samples = True

    @staticmethod
    def init(params, paths):
        return jax.tree.map(jnp.zeros_like, params)

    @staticmethod
    def accumulate(total, grads):
        return jax.tree.map(jnp.add, total, grads)

    @staticmethod
    def finalize(total):
        return jax.tree.map(jnp.square, total)

    @staticmethod
    def upload_values(tensors) -> int:
        return tensors.num_maskable + tensors.dense_size  # every parameter, dense


@dataclasses.dataclass(frozen=True)
class LastGradient:
    """The FedDST authors' PruneFL report: the dense gradient of the maskable tensors at the
    client's last step, averaged over the participants unweighted."""

    by_samples = False

    @staticmethod
    def init(params, paths):
        flat = traverse_util.flatten_dict(params, sep="/")
        return {p: jnp.zeros(flat[p].shape, jnp.float32) for p in paths}

    @staticmethod
    def accumulate(last, grads):
        flat = traverse_util.flatten_dict(grads, sep="/")
        return {p: flat[p] for p in last}

    @staticmethod
    def finalize(last):
        return last

    @staticmethod
    def upload_values(tensors) -> int:
        return tensors.num_maskable


SQUARED_GRADIENT_SUM, LAST_GRADIENT = SquaredGradientSum(), LastGradient()


def is_readjust_round(config, r: int) -> bool:
    """The FedDST authors' READJUST rounds: 1, 1 + R, ... as their code counts rounds (from 0)."""
    return (r - 1) % config.prunefl_adjust_every == 0


@functools.partial(jax.jit, static_argnums=0)
def _ip_round(spec, params, batch_stats, masks, batches, lr):
    """One IP round: an SGD step on each fixed batch with the masked model; the per-step squared
    gradients, summed."""
    optimizer = optax.sgd(lr)

    def step(carry, batch):
        params, batch_stats, squared = carry
        x, y = batch
        (_, (batch_stats, _)), grads = jax.value_and_grad(client_loss, argnums=1, has_aux=True)(
            spec, apply_masks(params, masks), batch_stats, {}, (x, y, jnp.ones(y.shape, jnp.float32)))
        grads = apply_masks(grads, masks)  # the forward pass uses theta * mask
        if spec.clip_grad_norm > 0:
            grads = clip_trained_gradient(grads, masks, spec.clip_grad_norm)
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        squared = jax.tree.map(lambda s, g: s + g * g, squared, grads)
        return (optax.apply_updates(params, updates), batch_stats, squared), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (params, batch_stats, squared), _ = jax.lax.scan(step, (params, batch_stats, zeros), batches)
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
        params, batch_stats, round_squared = _ip_round(setup.spec, params, batch_stats, mask, (xs, ys), config.lr_start)
        squared = jax.tree.map(jnp.add, squared, round_squared)
        if start is not None and (r - start) % config.prunefl_ip_adjust_every == 0:
            flat = traverse_util.flatten_dict(params, sep="/")
            mask = adjusted_mask(setup, {p: flat[p] for p in setup.tensors.paths}, mask, squared,
                                 config.prunefl_max_dec, None)
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
                              server_state=DenseWeights({p: flat[p] for p in setup.tensors.paths}))
    return with_stage_bits(new_state, upload), {"client": client, "rounds": r, "gate_round": start,
                                                "densities": densities}


def feddst_initial_stage(setup, state):
    """Rounds 0 .. --prunefl_initial_rounds - 1: one seeded random client trains from the global model
    and mask and its model becomes the global one; on rounds 1, 1+R, ... its last-step gradient
    rebuilds the mask (p = 0.3). Stops early once 5 rebuilds in a row changed under 10% of the mask.
    Each round is a round trip with one client (upload: the model, and the gradient when rebuilding)."""
    config, tensors = setup.config, setup.tensors
    params, batch_stats, mask, bits, changes = state.model.params, state.model.batch_stats, state.server.top, 0, []
    known = True  # the first mask (all weights) follows from the seed
    for r in range(config.prunefl_initial_rounds):
        client = np.array([generator(config.seed, PRUNEFL_FEDDST_INITIAL, r).integers(config.num_users)])
        rebuild = is_readjust_round(config, r)
        spec = setup.spec.for_round(LocalMode(report=LAST_GRADIENT if rebuild else None))
        result, _ = train_clients(setup, spec, Participants(client), ServerModel(params, batch_stats, mask),
                                  RoundInputs(setup.lr(0), 0.0, key(config.seed, PRUNEFL_FEDDST_INITIAL, r)),
                                  config.local_epoch)
        bits += model_transfer_bits(tensors, params, mask_known=known)
        bits += model_bits({p: int(mask[p].sum()) for p in mask}, tensors.sizes, tensors.dense_size, mask_known=True)
        params, batch_stats, known = result.params, result.batch_stats, True
        if rebuild:
            bits += VALUE_BITS * tensors.num_maskable
            new = readjusted_mask(setup, result.reports, PRUNE_BASE)
            changes.append(sum(int(jnp.sum(new[p] != mask[p])) for p in mask) / tensors.num_maskable)
            mask, known = new, False
            params = apply_masks(params, mask)
            if len(changes) >= 5 and all(c < 0.1 for c in changes[-5:]):
                break
    server = state.server.replace(levels=stack_levels(mask), ids=state.server.ids + (not known))
    new_state = with_stage_bits(state.replace(model=state.model.replace(params=params, batch_stats=batch_stats),
                                              server=server), bits)
    density = sum(int(m.sum()) for m in mask.values()) / tensors.num_maskable
    return new_state, {"rounds": r + 1, "mask_changes": changes, "density": density}
