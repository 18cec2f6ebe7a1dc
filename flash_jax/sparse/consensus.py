"""Server-side mask consensus: FLASH's sensitivity rescaling (ALGORITHMS.md §3, stage 1)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flash_jax.sparse.masks import Masks


def client_layer_densities(client_masks: Masks) -> dict[str, float]:
    """Per-tensor density averaged over clients (masks with a leading client axis): the only thing
    stage-1 clients send back."""
    counts = jax.device_get({p: jnp.sum(m.reshape(m.shape[0], -1), axis=1) for p, m in client_masks.items()})
    return {p: float(counts[p].mean()) / math.prod(client_masks[p].shape[1:]) for p in client_masks}


def sensitivity_densities(layer_density: dict[str, float], sizes: dict[str, int], density: float) -> dict[str, float]:
    """Rescale the clients' layer densities delta_l so the total budget is d*N_m:
    lambda = d*N_m / sum_l delta_l*n_l, d_l = min(lambda*delta_l, 1)."""
    budget = density * sum(sizes.values())
    scale = budget / sum(layer_density[p] * sizes[p] for p in sizes)
    return {p: min(scale * layer_density[p], 1.0) for p in sizes}
