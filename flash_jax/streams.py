"""Every random stream of a run, and the one way keys are made: a key (or a numpy generator) is a
pure function of (seed, stream, indices...), so results do not depend on the order or the device
the work runs in.

`derive` folds indices into a key one after the other; a client's key is its round's key with the
client id folded in, and its own uses fold one of the client streams into that.
"""
from __future__ import annotations

import jax
import numpy as np

# streams of the run's seed
INIT, MASK, ROUND, SENSITIVITY, REINIT, STAGE2_MASK, HETERO, SERVER_UPDATE = range(8)
PRUNEFL_INITIAL_PRUNING = 100  # PruneFL's initial-pruning client and its batches
PRUNEFL_FEDDST_INITIAL = 101   # the FedDST authors' PruneFL: its initial stage's clients and keys
# streams of a client's key
SHUFFLE, MASK_UPDATE, AUGMENT = 0, 1, 2


def derive(key: jax.Array, *indices) -> jax.Array:
    """`key` with each index folded in, in order."""
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


def key(seed: int, stream: int, *indices) -> jax.Array:
    """The JAX key of (seed, stream, indices...)."""
    return derive(jax.random.PRNGKey(seed), stream, *indices)


def generator(seed: int, stream: int, *indices) -> np.random.Generator:
    """The numpy generator of (seed, stream, indices...), for draws made on the host."""
    return np.random.default_rng([seed, stream, *indices])


def sample_clients(seed: int, stream: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """Cohort of a round: a pure function of (seed, stage stream, round), sampled without replacement."""
    return generator(seed, stream, round_index).choice(num_clients, per_round, replace=False)
