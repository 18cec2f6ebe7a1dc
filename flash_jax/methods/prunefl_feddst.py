"""PruneFL as the FedDST authors re-implemented it (BASELINES.md B3.6; --prunefl_variant feddst):
an initial stage of one client per round, then every R rounds (1, 1+R, ...) a mask rebuilt by
READJUST from the participants' mean last-step gradient, keeping at least 1 - 0.3 * 0.5^t of the
maskable weights, so the model is at least 70% dense and becomes fully dense by round 51. Clients
use FedDST's optimizer (--feddst_momentum, --feddst_weight_decay); re-added weights start at 0."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flash_jax.comm import VALUE_BITS, model_bits
from flash_jax.fl.client import momentum_sgd
from flash_jax.fl.cohort import ServerModel, train_clients
from flash_jax.fl.accounting import model_transfer_bits, with_stage_bits
from flash_jax.fl.rules import ServerUpdate
from flash_jax.sparse import apply_masks, stack_levels
from flash_jax.sparse.prunefl_search import cost_model, readjust
from flash_jax.streams import PRUNEFL_FEDDST_INITIAL, generator, key

PRUNE_BASE = 0.3  # p = 0.3 in the initial stage, 0.3 * 0.5^t in round t


def is_readjust_round(config, t: int) -> bool:
    return (t - 1) % config.prunefl_adjust_every == 0


def optimizer(config):
    return functools.partial(momentum_sgd, momentum=config.feddst_momentum, weight_decay=config.feddst_weight_decay)


def cost_model_of(setup) -> tuple[dict[str, float], float]:
    """PruneFL's cost model (c_l, T0) from --prunefl_layer_costs and --prunefl_time_const."""
    return cost_model(setup.tensors.paths, setup.tensors.sizes, setup.config.prunefl_layer_costs,
                      setup.config.prunefl_time_const)


def _rebuild(setup, mean_gradient: dict, prune: float) -> dict:
    costs, t0 = cost_model_of(setup)
    flat = jax.device_get(traverse_util.flatten_dict(mean_gradient, sep="/"))  # the average comes back nested
    squared = {p: np.square(np.asarray(flat[p], np.float64)) for p in setup.tensors.paths}
    return {p: jnp.asarray(m) for p, m in readjust(squared, costs, t0, 1.0 - prune).items()}


def server_update(setup, outcome):
    if not outcome.mode.gradient_report:
        return ServerUpdate()
    return ServerUpdate(mask=_rebuild(setup, outcome.reports, PRUNE_BASE * 0.5 ** (outcome.round - 1)))


def initial_stage(setup, state):
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
        spec = dataclasses.replace(setup.spec, gradient_report="last" if rebuild else "")
        round_key = key(config.seed, PRUNEFL_FEDDST_INITIAL, r)
        result, _ = train_clients(setup, spec, client, round_key, ServerModel(params, batch_stats, mask),
                                  epochs=config.local_epoch, lr=setup.lr(0))
        bits += model_transfer_bits(tensors, params, mask_known=known)
        bits += model_bits({p: int(mask[p].sum()) for p in mask}, tensors.sizes, tensors.dense_size, mask_known=True)
        params, batch_stats, known = result.params, result.batch_stats, True
        if rebuild:
            bits += VALUE_BITS * tensors.num_maskable
            new = _rebuild(setup, result.reports, PRUNE_BASE)
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
