"""PruneFL (Jiang et al., TNNLS 2022) as two methods sharing this module.

prunefl, the original: initial pruning at one client, then every R rounds the server re-decides one
global mask with ADJUST from the participants' squared dense gradients, under a uniform cost model
(round time proportional to the active parameters, T0 = --prunefl_time_const * N_m). Its density is
emergent; --prunefl_max_density caps it for comparisons at FLASH's d. Pruned weights keep their last
value at the server, and come back with it when ADJUST re-adds them.

prunefl_feddst, as the FedDST authors re-implemented it (bibikar/feddst): an initial stage of one client per
round, then every R rounds a mask rebuilt by READJUST from the participants' mean last-step
gradient, keeping at least 1 - 0.3 * 0.5^t of the maskable weights, so the model is at least 70%
dense and becomes fully dense by round 52. Clients use FedDST's optimizer (--feddst_momentum,
--feddst_weight_decay); re-added weights start at 0.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from flax import traverse_util

from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FEDAVG, LocalMode, ServerMaskRule, ServerUpdate, all_weights
from flash_jax.methods.feddst import feddst_optimizer
from flash_jax.methods.prunefl_stages import (LAST_GRADIENT, PRUNE_BASE, SQUARED_GRADIENT_SUM, DenseWeights,
                                              adjusted_mask, feddst_initial_stage, initial_pruning,
                                              is_readjust_round, readjusted_mask)


def is_adjust_round(config, r: int) -> bool:
    """Rounds R, 2R, ... as the original counts rounds (from 0): its first adjustment at round 50."""
    return r >= config.prunefl_adjust_every and (r - config.prunefl_adjust_every) % config.prunefl_adjust_every == 0


def prune_fraction(config, r: int) -> float:
    return config.prunefl_max_dec * 0.5 ** (r / config.prunefl_dec_half_life)


def density_cap(config, r: int, num_maskable: int) -> float | None:
    """Active entries allowed: --prunefl_max_density, moving linearly to --prunefl_target_density."""
    top, target = config.prunefl_max_density, config.prunefl_target_density
    if target > 0:
        return (top + (target - top) * r / config.fl_rounds) * num_maskable
    return top * num_maskable if top < 1.0 else None


def _positive_numbers(text: str) -> bool:
    """Empty, or comma-separated finite numbers > 0."""
    try:
        return not text or all(math.isfinite(v) and v > 0 for v in (float(part) for part in text.split(",")))
    except ValueError:
        return False


def _server_update(setup, outcome) -> ServerUpdate:
    """Aggregated values where the mask holds, the server's last values elsewhere; ADJUST on
    adjustment rounds."""
    config, r = setup.config, outcome.round - 1  # r: the round as the original counts it, from 0
    fill = (lambda m, new, old: jnp.where(m, new, old)) if config.prunefl_regrow_init == "stale" \
        else (lambda m, new, old: jnp.where(m, new, 0.0))
    dense = {p: fill(outcome.server_mask[p], outcome.maskable[p], outcome.server_state.dense[p])
             for p in outcome.maskable}
    state = DenseWeights(dense)
    if outcome.mode.report is None:
        return ServerUpdate(state=state)
    mask = adjusted_mask(setup, dense, outcome.server_mask, outcome.reports, prune_fraction(config, r),
                         density_cap(config, r, setup.tensors.num_maskable))
    return ServerUpdate(mask=mask, maskable=dense, state=state)


def _local(setup, t: int) -> LocalMode:
    return LocalMode(report=SQUARED_GRADIENT_SUM if is_adjust_round(setup.config, t - 1) else None)


def _dense_state(setup, params) -> DenseWeights:
    flat = traverse_util.flatten_dict(params, sep="/")
    return DenseWeights({p: flat[p] for p in setup.tensors.paths})


def _feddst_server_update(setup, outcome) -> ServerUpdate:
    """READJUST on the rounds the participants sent their last-step gradient, keeping at least
    1 - 0.3 * 0.5^r of the weights (r: the round as the FedDST code counts it, from 0)."""
    if outcome.mode.report is None:
        return ServerUpdate()
    return ServerUpdate(mask=readjusted_mask(setup, outcome.reports, PRUNE_BASE * 0.5 ** (outcome.round - 1)))


def _feddst_local(setup, t: int) -> LocalMode:
    return LocalMode(report=LAST_GRADIENT if is_readjust_round(setup.config, t - 1) else None)


PRUNEFL = register_method(Method(
    name="prunefl", help="PruneFL: initial pruning at one client, then ADJUST of one global mask every R rounds",
    client=CLIENT_FIXED_MASK._replace(local=_local),
    server_mask=ServerMaskRule(init=all_weights, update=_server_update, init_state=_dense_state),
    aggregation=lambda setup: FEDAVG, stage1=initial_pruning, stage1_record="initial_pruning.json", group="PruneFL",
    knobs=(
        Knob("prunefl_adjust_every", 50, "PruneFL: FL rounds between adjustments R", lambda v: v >= 1, ">= 1"),
        Knob("prunefl_max_density", 1.0, "PruneFL: cap on the active maskable share (set --density's value for "
             "comparisons at FLASH's d; 1: none)", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
        Knob("prunefl_target_density", 0.0, "PruneFL: with the cap, move it linearly to this over the run (0: fixed)",
             lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
        Knob("prunefl_time_const", 0.7, "PruneFL: tau = T0 / sum_l c_l n_l (larger: denser)", lambda v: v > 0, "> 0"),
        Knob("prunefl_layer_costs", "", "PruneFL: comma-separated cost per entry of each maskable tensor, in sorted "
             "path order (empty: 1 each)", _positive_numbers, "empty, or comma-separated numbers > 0, one per "
             "maskable tensor", per_tensor=True),
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
        Knob("prunefl_variant", "original", "PruneFL: only the original; the FedDST authors' re-implementation is "
             "--experiment_type prunefl_feddst", lambda v: v == "original",
             "original (the FedDST authors' re-implementation is --experiment_type prunefl_feddst)"),
    )))

PRUNEFL_FEDDST = register_method(Method(
    name="prunefl_feddst", help="PruneFL as the FedDST authors re-implemented it: READJUST every R rounds, "
    "at least 70% dense",
    client=CLIENT_FIXED_MASK._replace(local=_feddst_local, optimizer=feddst_optimizer),
    server_mask=ServerMaskRule(init=all_weights, update=_feddst_server_update),
    aggregation=lambda setup: FEDAVG, stage1=feddst_initial_stage, stage1_record="initial_pruning.json",
    group="PruneFL",
    knobs=(Knob("prunefl_initial_rounds", 5, "PruneFL (prunefl_feddst): rounds of the one-client initial stage",
                lambda v: v >= 1, ">= 1"),)))
