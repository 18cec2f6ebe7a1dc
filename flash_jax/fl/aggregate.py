"""Server aggregation over a leading client axis."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def fedavg(stacked, weights):
    """Sample-weighted mean over axis 0 of every leaf (FedAvg; BatchNorm statistics included)."""
    weights = weights / jnp.sum(weights)
    return jax.tree.map(lambda x: jnp.tensordot(weights, x, axes=1).astype(x.dtype), stacked)
