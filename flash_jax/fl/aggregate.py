"""Server aggregation over a leading client axis."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util


def fedavg(stacked, weights):
    """Sample-weighted mean over axis 0 of every leaf (FedAvg; BatchNorm statistics included)."""
    weights = weights / jnp.sum(weights)
    return jax.tree.map(lambda x: jnp.tensordot(weights, x, axes=1).astype(x.dtype), stacked)


def masked_average(stacked_params, client_masks, weights):
    """FMA (§2): a maskable coordinate is the sum of the client values over the number of clients
    whose mask holds it (0 where nobody does); every other tensor is FedAvg'd."""
    averaged = traverse_util.flatten_dict(fedavg(stacked_params, weights), sep="/")
    stacked = traverse_util.flatten_dict(stacked_params, sep="/")
    for path, masks in client_masks.items():
        holders = jnp.sum(masks, axis=0, dtype=jnp.float32)
        total = jnp.sum(jnp.where(masks, stacked[path], 0.0), axis=0)
        averaged[path] = jnp.where(holders > 0, total / jnp.maximum(holders, 1.0), 0.0).astype(stacked[path].dtype)
    return traverse_util.unflatten_dict(averaged, sep="/")
