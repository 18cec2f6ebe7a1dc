"""Client sparse learning's MASK_UPDATE: magnitude prune, redistribute by mean
magnitude, regrow at random (or by a score such as |gradient|).

One pure function of arrays with static shapes: the prune rate, the target count and the RNG key are
data, so a cohort of clients runs it under one ``vmap`` with per-client budgets. Per-layer work is
a Python loop over the (static, small) set of maskable tensors with two sorts each (prune, grow);
the per-layer scalars are stacked into length-L vectors for the redistribution arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flash_jax.sparse.masks import Masks, topk_mask

__all__ = ["SLState", "mask_update", "readjust_masks", "sl_init"]


class SLState(NamedTuple):
    """Growth-adjustment memory across the mask updates of one client update.

    Growth counts are rounded and capped, so nnz drifts from the target; ``adjust`` (A) feeds the
    drift back into the next update's growth, smoothed by the running mean of past deficits.
    """

    adjust: jax.Array  # A, float32 scalar
    deficit_sum: jax.Array  # sum of past deficits (target - nnz), float32
    deficit_count: jax.Array  # number of past deficits, int32


def sl_init() -> SLState:
    """Zero state: the authors restart A and its history at every client update."""
    return SLState(
        adjust=jnp.zeros((), jnp.float32),
        deficit_sum=jnp.zeros((), jnp.float32),
        deficit_count=jnp.zeros((), jnp.int32),
    )


def _redistribute(want: jax.Array, cap: jax.Array) -> jax.Array:
    """Cap per-layer growth and spread the excess evenly over the layers that still have room.

    Integer split; the remainder goes one each to the lowest-index open layers. Every pass either
    places all the excess or fills at least one more layer, so L passes reach the fixed point
    (a fori_loop of fixed length keeps it jittable). Excess that no layer can hold is dropped.
    """
    grown = jnp.minimum(want, cap)
    excess = jnp.sum(want - grown)

    def spread(_, carry):
        grown, excess = carry
        open_ = grown < cap
        share, rest = jnp.divmod(excess, jnp.maximum(jnp.sum(open_), 1))
        rank = jnp.cumsum(open_) - 1
        add = jnp.where(open_, share + (rank < rest), 0)
        new = jnp.minimum(grown + add, cap)
        return new, excess - jnp.sum(new - grown)

    grown, _ = lax.fori_loop(0, want.shape[0], spread, (grown, excess))
    return grown


def random_grow_scores(key: jax.Array, masks: Masks) -> dict[str, jax.Array]:
    """Uniform scores for random growth, one draw for all tensors in sorted path order, sliced: each
    threefry call adds ~0.3 s of XLA:CPU compile time."""
    paths = sorted(masks)
    bounds = np.cumsum([0] + [masks[p].size for p in paths])
    noise = jax.random.uniform(key, (int(bounds[-1]),))
    return {p: noise[lo:hi].reshape(masks[p].shape) for p, lo, hi in zip(paths, bounds[:-1], bounds[1:])}


def mask_update(
    params_flat: dict[str, jax.Array],
    masks: Masks,
    prune_rate: float | jax.Array,
    target_count: float | jax.Array,
    state: SLState,
    grow_scores: dict[str, jax.Array],
) -> tuple[Masks, SLState]:
    """One MASK_UPDATE (client sparse learning's) with exact counts.

    ``params_flat`` holds (at least) the masked tensors, keyed like ``masks``; ``prune_rate`` is
    the current p; ``target_count`` is d_c * N_m. Layer order (for remainders) is sorted path order.
    Growth picks the inactive entries after removal (a just-removed entry may come back) with the
    largest ``grow_scores``: uniform ones (`random_grow_scores`, the authors' random growth) or e.g.
    |gradient| (finite values). The caller re-applies the returned masks to the parameters. If every
    active weight is zero, rho is uniform (1/L) instead of 0/0.
    """
    paths = sorted(masks)
    n_layers = len(paths)
    mask = [masks[p] for p in paths]
    mag = [jnp.abs(params_flat[p]).astype(jnp.float32) for p in paths]

    size = jnp.array([m.size for m in mask], jnp.int32)
    active = jnp.stack([jnp.sum(m, dtype=jnp.int32) for m in mask])
    mag_sum = jnp.stack([jnp.sum(jnp.where(m, w, 0.0)) for m, w in zip(mask, mag)])
    mean_mag = mag_sum / jnp.maximum(active, 1)
    total_mag = jnp.sum(mean_mag)
    safe_total = jnp.where(total_mag > 0, total_mag, 1.0)
    rho = jnp.where(total_mag > 0, mean_mag / safe_total, 1.0 / n_layers)

    # Prune: a nearly dense layer that is gaining density is not pruned below its zero fraction.
    p = jnp.asarray(prune_rate, jnp.float32)
    zero_frac = (size - active) / size
    layer_rate = jnp.where(
        (zero_frac < 0.2) & (rho > 1.0 / n_layers), jnp.minimum(p, zero_frac), p
    )
    removed = jnp.clip(jnp.ceil(layer_rate * active).astype(jnp.int32), 0, active)
    kept = [
        topk_mask(jnp.where(m, w, -jnp.inf), a - r)
        for m, w, a, r in zip(mask, mag, active, removed)
    ]

    # Regrow: share the removed count (plus adjustment A) by mean magnitude, capped at 99% of the
    # layer's inactive entries; floor(0.99 x) = x - ceil(x / 100) in exact integer arithmetic.
    inactive = size - (active - removed)
    cap = inactive - (inactive + 99) // 100
    total = jnp.sum(removed).astype(jnp.float32) + state.adjust
    want = jnp.maximum(jnp.ceil(rho * total), 0).astype(jnp.int32)
    grown = _redistribute(want, cap)
    new_masks = {}
    for path, k, g in zip(paths, kept, grown):
        scores = grow_scores[path].astype(jnp.float32)
        new_masks[path] = k | topk_mask(jnp.where(k, -jnp.inf, scores), g)

    deficit = jnp.asarray(target_count, jnp.float32) - jnp.sum(active - removed + grown)
    deficit_sum = state.deficit_sum + deficit
    deficit_count = state.deficit_count + 1
    adjust = 0.25 * state.adjust + 0.75 * deficit + deficit_sum / deficit_count
    return new_masks, SLState(adjust, deficit_sum, deficit_count)


def readjust_masks(params_flat: dict[str, jax.Array], masks: Masks, grow_scores: dict[str, jax.Array],
                   ratio: float | jax.Array) -> Masks:
    """FedDST's readjustment: in every tensor, drop the round(ratio * a_l) active
    entries of smallest |theta| and grow as many inactive ones with the largest ``grow_scores``
    (|gradient|), so each tensor keeps its count. ``ratio`` may be traced."""
    new_masks = {}
    for path in sorted(masks):
        mask = masks[path]
        active = jnp.sum(mask, dtype=jnp.int32)
        moved = jnp.round(jnp.asarray(ratio, jnp.float32) * active).astype(jnp.int32)
        kept = topk_mask(jnp.where(mask, jnp.abs(params_flat[path]).astype(jnp.float32), -jnp.inf), active - moved)
        scores = jnp.where(kept, -jnp.inf, grow_scores[path].astype(jnp.float32))
        new_masks[path] = kept | topk_mask(scores, moved)
    return new_masks
