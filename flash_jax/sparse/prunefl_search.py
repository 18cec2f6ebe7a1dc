"""PruneFL's mask search ADJUST, as one vectorised pass on the host.

It greedily maximises U/V: U the squared gradients kept (an estimate of the empirical-risk
reduction), V = T0 + sum_l c_l * active_l the time of a round. Each tensor first drops its
floor(dtp * active) smallest-|theta| active entries (exact count, ties to the lower index); then
the dropped and inactive entries join one list sorted by S_j / c_l (descending; ties in layer and
index order), and the greedy adds them while S_j / c_l > U/V of the set so far and the count stays
within the cap. Sorting once replaces the original's heap of per-layer lists: both visit candidates
in the same order, and adding j raises U/V exactly when S_j / c_l > U/V, so the greedy stops at the
first candidate that fails.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class CostModel(NamedTuple):
    """PruneFL's round time: T0 plus c_l per active entry of each maskable tensor."""

    costs: dict[str, float]
    t0: float


class SquaredGradients(NamedTuple):
    """Accumulated squared gradients of the maskable tensors, and their sum over every other
    parameter (always kept)."""

    maskable: dict[str, np.ndarray]
    other: float


def cost_model(paths: tuple[str, ...], sizes: dict[str, int], given: str, time_const: float) -> CostModel:
    """c_l, the cost per entry of each maskable tensor (`given`: comma-separated in sorted path order;
    empty: 1 each), and T0 = time_const * sum_l c_l n_l."""
    values = [float(c) for c in given.split(",")] if given else []
    costs = dict(zip(paths, values)) if values else {p: 1.0 for p in paths}
    return CostModel(costs, time_const * sum(costs[p] * sizes[p] for p in paths))


def adjust(theta: dict[str, np.ndarray], mask: dict[str, np.ndarray], gradients: SquaredGradients, dtp: float,
           cost: CostModel, cap: float | None = None) -> dict[str, np.ndarray]:
    """The new mask of the maskable tensors (bool, shaped like `mask`); `cap`: the most active
    maskable entries allowed before an addition (None: no cap)."""
    paths, squared, costs = sorted(mask), gradients.maskable, cost.costs
    u, v = float(gradients.other), float(cost.t0)
    kept, ratios, scores, entry_costs, owners = {}, [], [], [], []
    for p in paths:
        active = np.flatnonzero(np.asarray(mask[p]).reshape(-1))
        magnitude = np.abs(np.asarray(theta[p], np.float64).reshape(-1))
        s = np.asarray(squared[p], np.float64).reshape(-1)
        dropped = math.floor(dtp * active.size)
        keep = np.zeros(magnitude.size, bool)
        keep[active[np.argsort(magnitude[active], kind="stable")[dropped:]]] = True
        kept[p] = keep
        u += float(s[keep].sum())
        v += costs[p] * int(keep.sum())
        candidates = np.flatnonzero(~keep)
        ratios.append(s[candidates] / costs[p])
        scores.append(s[candidates])
        entry_costs.append(np.full(candidates.size, costs[p]))
        owners.append((p, candidates))
    ratio = np.concatenate(ratios)
    order = np.argsort(-ratio, kind="stable")
    gained = np.concatenate(scores)[order]
    spent = np.concatenate(entry_costs)[order]
    u_before = u + np.concatenate([[0.0], np.cumsum(gained)[:-1]])
    v_before = v + np.concatenate([[0.0], np.cumsum(spent)[:-1]])
    fails = np.flatnonzero(ratio[order] * v_before <= u_before)  # S_j/c_l <= U/V, without dividing
    added = int(fails[0]) if fails.size else order.size
    if cap is not None:  # additions stop at the cap (the original checks `>` and may pass it by one)
        active_now = sum(int(k.sum()) for k in kept.values())
        added = min(added, max(0, math.floor(cap) - active_now))
    chosen = np.zeros(order.size, bool)
    chosen[order[:added]] = True
    start = 0
    for p, candidates in owners:
        kept[p][candidates[chosen[start:start + candidates.size]]] = True
        start += candidates.size
    return {p: kept[p].reshape(np.shape(mask[p])) for p in paths}


def ratio(mask: dict[str, np.ndarray], gradients: SquaredGradients, cost: CostModel) -> float:
    """U/V of a mask: what ADJUST maximises."""
    squared = gradients.maskable
    u = gradients.other + sum(float(np.asarray(squared[p], np.float64)[np.asarray(mask[p])].sum()) for p in mask)
    v = cost.t0 + sum(cost.costs[p] * int(np.asarray(mask[p]).sum()) for p in mask)
    return u / v


def readjust(squared: dict[str, np.ndarray], costs: dict[str, float], t0: float,
             keep_fraction: float) -> dict[str, np.ndarray]:
    """The FedDST authors' PruneFL search, a new mask built from scratch: visit
    the entries by S_j descending (ties in layer and index order) and add each while S_j / c_l >=
    U / T (U the S added so far, T = t0 + their costs) or fewer than keep_fraction * N_m are in."""
    paths = sorted(squared)
    s = np.concatenate([np.asarray(squared[p], np.float64).reshape(-1) for p in paths])
    c = np.concatenate([np.full(np.size(squared[p]), costs[p]) for p in paths])
    order = np.argsort(-s, kind="stable")
    u_before = np.concatenate([[0.0], np.cumsum(s[order])[:-1]])
    t_before = t0 + np.concatenate([[0.0], np.cumsum(c[order])[:-1]])
    required = keep_fraction * s.size
    fails = np.flatnonzero((s[order] / c[order] * t_before < u_before) & (np.arange(s.size) > required))
    chosen = np.zeros(s.size, bool)
    chosen[order[:int(fails[0]) if fails.size else s.size]] = True
    bounds = np.cumsum([0] + [np.size(squared[p]) for p in paths])
    return {p: chosen[a:b].reshape(np.shape(squared[p])) for p, a, b in zip(paths, bounds[:-1], bounds[1:])}
