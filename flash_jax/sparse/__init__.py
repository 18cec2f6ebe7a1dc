"""Masks as pytrees (init, top-k, apply, densities) and client sparse learning (MASK_UPDATE)."""

from flash_jax.sparse.masks import (
    Masks,
    apply_masks,
    layer_counts,
    magnitude_masks,
    maskable_paths,
    pack_rows,
    random_masks,
    random_masks_from_counts,
    stack_levels,
    topk_mask,
    unpack_rows,
    unpacked,
)
from flash_jax.sparse.consensus import (SUBSAMPLE_METHODS, client_layer_densities, client_mask_counts,
                                        level_masks, mask_consensus, next_mask, prune_union,
                                        sensitivity_densities)
from flash_jax.sparse.sparse_learning import SLState, mask_update, random_grow_scores, readjust_masks, sl_init

__all__ = [
    "SUBSAMPLE_METHODS",
    "Masks",
    "SLState",
    "apply_masks",
    "client_layer_densities",
    "client_mask_counts",
    "layer_counts",
    "level_masks",
    "magnitude_masks",
    "mask_consensus",
    "next_mask",
    "mask_update",
    "random_grow_scores",
    "maskable_paths",
    "pack_rows",
    "prune_union",
    "random_masks",
    "random_masks_from_counts",
    "readjust_masks",
    "sensitivity_densities",
    "sl_init",
    "stack_levels",
    "topk_mask",
    "unpack_rows",
    "unpacked",
]
