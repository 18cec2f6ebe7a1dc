"""Binary weight masks as flat dicts of bool arrays, and the exact-count tools to build them.

A mask set is ``Masks = dict[str, jax.Array]``: one bool array per maskable tensor, keyed by the
tensor's '/'-joined path (``flax.traverse_util.flatten_dict(params, sep="/")``) and shaped like it;
dense tensors have no entry. Every function here is pure and shape-static, so it
runs under ``jit`` with traced densities / counts and under ``vmap`` with a leading client axis.

Counts are exact rather than thresholded: FLASH compares layer densities across clients and rounds,
and a threshold on tied scores (zeros, equal magnitudes) silently keeps too many or too few entries.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

Masks = dict[str, jax.Array]
Shapes = dict[str, tuple[int, ...]]

__all__ = [
    "Masks",
    "apply_masks",
    "layer_counts",
    "magnitude_masks",
    "maskable_paths",
    "pack_rows",
    "random_masks",
    "random_masks_from_counts",
    "topk_mask",
    "unpack_rows",
    "unpacked",
]


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Both nested and already-flat ('/'-keyed) dicts flatten to the same '/'-keyed dict."""
    return traverse_util.flatten_dict(tree, sep="/")


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def maskable_paths(params: Mapping[str, Any], pattern: str) -> tuple[str, ...]:
    """Sorted paths matching ``re.search(pattern, path)``; sorted order is the canonical layer order
    (per-tensor RNG keys, remainder distribution) so every caller must agree on it."""
    flat = _flatten(params)
    paths = tuple(sorted(p for p in flat if re.search(pattern, p)))
    if not paths:
        available = "\n  ".join(sorted(flat))
        raise ValueError(
            f"mask pattern {pattern!r} matches no parameter; available paths:\n  {available}"
        )
    return paths


def _shapes(shapes_or_params: Mapping[str, Any]) -> Shapes:
    """Accept {path: shape} or a (flat or nested) tree holding exactly the tensors to mask."""
    flat = _flatten(shapes_or_params)
    return {
        p: tuple(int(s) for s in v) if isinstance(v, (tuple, list)) else tuple(v.shape)
        for p, v in sorted(flat.items())
    }


def apply_masks(params: Mapping[str, Any], masks: Masks) -> dict[str, Any]:
    """Zero the inactive entries; the output keeps the input's form (nested in, nested out; a flat
    '/'-keyed dict stays flat) so it can sit between optimizer steps without reshuffling trees."""
    nested = any(isinstance(v, Mapping) for v in params.values())
    flat = dict(_flatten(params))
    for path, mask in masks.items():
        if path not in flat:
            raise KeyError(f"mask for {path!r} has no parameter (available: {sorted(flat)})")
        w = flat[path]
        flat[path] = jnp.where(mask, w, jnp.zeros_like(w))
    return traverse_util.unflatten_dict(flat, sep="/") if nested else flat


def topk_mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
    """Bool mask of ``scores.shape`` with exactly ``clip(k, 0, scores.size)`` True entries: the k
    largest scores, ties going to the lower flat index. ``k`` may be traced (per-client counts under
    vmap) because the count enters as data (``rank < k``), never as a shape.

    A radix select instead of a sort: the k-th largest value is found bit by bit from the scores'
    order-preserving 32-bit keys (32 counting passes), then ties at it are ranked by a cumulative
    sum. Same result as a stable descending argsort, about 20x faster on XLA's CPU backend, whose
    comparison sort dominated NST's client mask updates (benchmarks/RESULTS.md).
    """
    flat = scores.reshape(-1)
    keys = _order_keys(flat)
    k = jnp.clip(k, 0, flat.size)

    def take_bit(bit, threshold):
        candidate = threshold | (jnp.uint32(1) << (31 - bit).astype(jnp.uint32))
        return jnp.where(jnp.sum(keys >= candidate, dtype=jnp.int32) >= k, candidate, threshold)

    kth = jax.lax.fori_loop(0, 32, take_bit, jnp.uint32(0))  # largest t with #(keys >= t) >= k
    above = keys > kth
    tied = keys == kth
    tie_rank = jnp.cumsum(tied, dtype=jnp.int32) - 1
    keep = above | (tied & (tie_rank < k - jnp.sum(above, dtype=jnp.int32)))
    return keep.reshape(scores.shape)


def _order_keys(values: jax.Array) -> jax.Array:
    """uint32 keys ordered like the float values (-0.0 equal to 0.0; -inf lowest, +inf highest)."""
    values = values.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(values == 0, 0.0, values), jnp.uint32)  # not x + 0.0: XLA drops it
    negative = bits >> 31 == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _round_count(density: Any, n: int) -> int | jax.Array:
    if isinstance(density, jax.core.Tracer):
        return jnp.clip(jnp.round(density * n), 0, n).astype(jnp.int32)
    return min(max(round(float(density) * n), 0), n)


def layer_counts(
    shapes: Mapping[str, tuple[int, ...]], densities: float | Mapping[str, Any]
) -> dict[str, int]:
    """Exact active counts ``round(d_l * n_l)`` clipped to ``[0, n_l]``.

    Rounding is to nearest with ties to even (Python's ``round``; ``jnp.round`` agrees), so e.g.
    d=0.5 on n=5 gives 2. Concrete densities are multiplied in float64 and give Python ints; a
    traced density (inside jit/vmap) gives an int32 scalar computed in float32, which can differ by
    one only when d_l*n_l lies within float32 error of a half-integer.
    """
    if isinstance(densities, Mapping):
        missing = set(shapes) - set(densities)
        if missing:
            raise KeyError(f"no density for {sorted(missing)}")
        return {p: _round_count(densities[p], _size(s)) for p, s in shapes.items()}
    return {p: _round_count(densities, _size(s)) for p, s in shapes.items()}


def _uniform_flat(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform scores drawn as a vector: with jax's default partitionable threefry, XLA:CPU takes
    seconds to compile a draw of a rank-4 (conv kernel) shape but well under one for a flat one."""
    return jax.random.uniform(key, (_size(shape),))


def random_masks_from_counts(
    key: jax.Array, shapes_or_params: Mapping[str, Any], counts: Mapping[str, int | jax.Array]
) -> Masks:
    """Uniform random masks with exactly ``counts[l]`` active entries (counts may be traced).

    Tensor ``i`` in sorted path order uses ``fold_in(key, i)``, so a layer's mask does not change
    when another layer's count does, and the masks follow from a shared seed alone.
    """
    shapes = _shapes(shapes_or_params)
    return {
        p: topk_mask(_uniform_flat(jax.random.fold_in(key, i), s), counts[p]).reshape(s)
        for i, (p, s) in enumerate(shapes.items())
    }


def random_masks(
    key: jax.Array, shapes_or_params: Mapping[str, Any], densities: float | Mapping[str, Any]
) -> Masks:
    """Uniform random masks at ``densities`` (one float or one per path) with the exact counts of
    :func:`layer_counts`. ``shapes_or_params``: {path: shape}, or a tree of the maskable tensors
    only (every entry gets a mask)."""
    shapes = _shapes(shapes_or_params)
    return random_masks_from_counts(key, shapes, layer_counts(shapes, densities))


def magnitude_masks(
    params: Mapping[str, Any],
    paths: tuple[str, ...] | list[str],
    density: float | Mapping[str, Any],
    scope: str = "global",
) -> Masks:
    """Keep the largest |w| entries of the given tensors.

    ``scope="global"`` ranks all the tensors together and keeps exactly ``round(density * N_m)``
    (NST's model "pruned back to d": layers keep whatever share their magnitudes earn);
    ``scope="layer"`` keeps the exact per-layer counts of :func:`layer_counts` (density may then be
    one per path). Ties go to the lower index (in sorted path order, then flat index).
    """
    flat = _flatten(params)
    paths = sorted(paths)
    if scope == "layer":
        counts = layer_counts({p: flat[p].shape for p in paths}, density)
        return {p: topk_mask(jnp.abs(flat[p]), counts[p]) for p in paths}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if isinstance(density, Mapping):
        raise TypeError("scope='global' takes one density for all tensors, not one per path")
    scores = jnp.concatenate([jnp.abs(flat[p]).reshape(-1) for p in paths])
    keep = topk_mask(scores, _round_count(density, scores.size))
    masks, start = {}, 0
    for p in paths:
        n = flat[p].size
        masks[p] = keep[start : start + n].reshape(flat[p].shape)
        start += n
    return masks


def stack_levels(masks: Masks) -> Masks:
    """A single mask as a stack of one level."""
    return jax.tree.map(lambda m: m[None], masks)


def pack_rows(masks: Masks) -> dict[str, jax.Array]:
    """Masks with a leading row axis (one per client), each row flattened and bit-packed into
    uint8: 8x smaller than bool, for state kept per client (NST's 10,000 private masks). 64 rows at
    a time: XLA's CPU backend widens what it packs, which for 1,000 MNISTNet masks at once is GBs."""
    if not masks:  # a dense method's
        return {}
    return jax.lax.map(lambda row: {p: jnp.packbits(m.reshape(-1)) for p, m in row.items()}, masks, batch_size=64)


def unpack_rows(rows: Mapping[str, jax.Array], shapes: Shapes) -> Masks:
    """pack_rows undone: bool masks shaped (rows,) + shapes[path]."""
    return {p: jnp.unpackbits(r, axis=1, count=_size(shapes[p])).astype(bool).reshape((r.shape[0],) + tuple(shapes[p]))
            for p, r in rows.items()}


def unpacked(rows: Mapping[str, jax.Array], shapes: Shapes) -> Masks:
    """unpack_rows as one jitted call, for use outside jit."""
    return _unpack_jitted(rows, tuple((p, tuple(shape)) for p, shape in sorted(shapes.items())))


@functools.partial(jax.jit, static_argnums=1)
def _unpack_jitted(rows, shapes):
    return unpack_rows(rows, dict(shapes))
