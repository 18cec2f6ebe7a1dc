"""Masks as pytrees (init, top-k, apply, densities) and client sparse learning (MASK_UPDATE)."""

from flash_jax.sparse.masks import (
    Masks,
    apply_masks,
    layer_counts,
    layer_density,
    magnitude_masks,
    mask_count,
    mask_density,
    mask_shapes,
    maskable_paths,
    nonzero_density,
    random_masks,
    random_masks_from_counts,
    topk_mask,
)
from flash_jax.sparse.consensus import (SUBSAMPLE_METHODS, client_layer_densities, client_mask_counts, hamming,
                                        mask_consensus, next_mask, sensitivity_densities)
from flash_jax.sparse.sparse_learning import SLState, mask_update, sl_init

__all__ = [
    "SUBSAMPLE_METHODS",
    "Masks",
    "SLState",
    "apply_masks",
    "client_layer_densities",
    "client_mask_counts",
    "hamming",
    "layer_counts",
    "layer_density",
    "magnitude_masks",
    "mask_consensus",
    "mask_count",
    "mask_density",
    "mask_shapes",
    "next_mask",
    "mask_update",
    "maskable_paths",
    "nonzero_density",
    "random_masks",
    "random_masks_from_counts",
    "sensitivity_densities",
    "sl_init",
    "topk_mask",
]
