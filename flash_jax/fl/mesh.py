"""The devices a cohort's client axis is split over: a 1-D mesh, and how arrays are placed on it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CLIENTS = "clients"  # the mesh axis of the client dimension


def client_mesh() -> Mesh | None:
    """A 1-D mesh over every device, its axis named 'clients'; None with one device (nothing to shard)."""
    devices = jax.devices()
    return Mesh(np.asarray(devices), (CLIENTS,)) if len(devices) > 1 else None


def place(mesh: Mesh | None, tree, split: bool):
    """Arrays onto `mesh`, split along the leading (client) axis or replicated (with no mesh: onto the
    default device). The cohort function's inputs always arrive placed alike, so a round never
    recompiles for a new input placement.

    Host arrays go through make_array_from_callback, which hands each device its slice of the full
    array, so the same call builds global arrays when the mesh spans several hosts (each holding the
    same values); device arrays are resharded where they differ.
    """
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    sharding = NamedSharding(mesh, PartitionSpec(CLIENTS) if split else PartitionSpec())

    def put(x):
        if isinstance(x, jax.Array):
            return x if x.sharding == sharding else jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def constrain(mesh: Mesh | None, tree, split: bool):
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(CLIENTS) if split else PartitionSpec())
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)
