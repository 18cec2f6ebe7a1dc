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
    """FMA (§2): a maskable coordinate is the sample-weighted mean over the clients whose mask holds
    it (0 where nobody does); every other tensor is FedAvg'd. With equal client sizes (the LDA and
    IID partitions) this is §2's plain sum over holders divided by their number; with sample
    weights it is also FedDST's aggregation."""
    averaged = traverse_util.flatten_dict(fedavg(stacked_params, weights), sep="/")
    stacked = traverse_util.flatten_dict(stacked_params, sep="/")
    for path, masks in client_masks.items():
        held = masks * weights.reshape((-1,) + (1,) * (masks.ndim - 1))
        holders = jnp.sum(held, axis=0)
        total = jnp.sum(held * stacked[path], axis=0)
        averaged[path] = jnp.where(holders > 0, total / jnp.where(holders > 0, holders, 1.0), 0.0).astype(
            stacked[path].dtype)
    return traverse_util.unflatten_dict(averaged, sep="/")
