"""Client store on the device and per-round cohort batching plans.

All clients' examples live in one packed device array; a client is an (offset, count) slice of it.
A round's batches are index plans built on the device from keys derived from (seed, round, client),
so the data a client sees never depends on which other clients share its cohort or chunk.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class ClientStore(NamedTuple):
    """Packed examples of every client; offsets/counts stay on the host to size static shapes."""

    x: jax.Array
    y: jax.Array
    offsets: np.ndarray
    counts: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.counts)


def build_store(x: np.ndarray, y: np.ndarray, client_indices: Sequence[np.ndarray]) -> ClientStore:
    order = np.concatenate(client_indices)
    counts = np.array([len(ix) for ix in client_indices], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ClientStore(jnp.asarray(x[order]), jnp.asarray(y[order], dtype=jnp.int32), offsets, counts)


class CohortPlan(NamedTuple):
    """Where each client's local steps sit in the cohort's padded step axis.

    `example_index` (K, T, B) indexes the store; `example_valid` marks real examples (a client's last
    batch may be partial); `step_valid` (K, T) marks real steps. `phase_lengths` (static) splits the
    step axis at the mask-update boundaries of ALGORITHMS.md §1, aligned across clients so that one
    mask update runs between phases for everybody.
    """

    example_index: jax.Array
    example_valid: jax.Array
    step_valid: jax.Array
    steps_per_epoch: jax.Array
    phase_lengths: tuple[int, ...]


def steps_per_epoch(count, batch_size: int):
    return -(-count // batch_size)


def phase_layout(max_steps: int, epochs: int) -> tuple[int, ...]:
    """Static phase lengths for a cohort whose longest client has `max_steps` batches per epoch.

    One epoch: the mask update follows step floor(s/2), so phase 1 holds steps 0..floor(s/2).
    Several epochs: one phase per epoch, updates in between.
    """
    if epochs == 1:
        first = max_steps // 2 + 1
        return (first, max_steps - first) if max_steps - first > 0 else (first,)
    return (max_steps,) * epochs


def client_plan(shuffle_key, offset, count, *, max_count: int, batch_size: int, epochs: int,
                phase_lengths: tuple[int, ...]):
    """One client's padded plan; vmapped over the cohort (key/offset/count batched)."""
    max_steps = steps_per_epoch(max_count, batch_size)
    slots = max_steps * batch_size
    position = jnp.arange(slots)

    def epoch_order(epoch):
        scores = jax.random.uniform(jax.random.fold_in(shuffle_key, epoch), (slots,))
        return jnp.argsort(jnp.where(position < count, scores, 2.0))  # padding sorts last

    ex_index = (offset + jax.vmap(epoch_order)(jnp.arange(epochs))).reshape(epochs, max_steps, batch_size)
    ex_valid = (position < count).reshape(max_steps, batch_size)
    steps = steps_per_epoch(count, batch_size)

    own_epoch, own_step, step_valid = [], [], []
    for phase, length in enumerate(phase_lengths):
        t = jnp.arange(length)
        if epochs == 1:  # phase 0: steps 0..floor(s/2); phase 1: the rest
            first = steps // 2 + 1
            start, client_len = (0, first) if phase == 0 else (first, steps - first)
            own_epoch.append(jnp.zeros_like(t))
        else:  # one phase per epoch
            start, client_len = 0, steps
            own_epoch.append(jnp.full_like(t, phase))
        own_step.append(start + t)
        step_valid.append(t < client_len)
    own_epoch = jnp.concatenate(own_epoch)
    own_step = jnp.clip(jnp.concatenate(own_step), 0, max_steps - 1)
    step_valid = jnp.concatenate(step_valid)
    example_valid = ex_valid[own_step] & step_valid[:, None]
    example_index = jnp.where(example_valid, ex_index[own_epoch, own_step], offset)
    return example_index, example_valid, step_valid, steps


def cohort_plan(shuffle_keys, client_ids, store: ClientStore, *, batch_size: int, epochs: int) -> CohortPlan:
    """Plans for a cohort from per-client shuffle keys (derived from seed, round and client id)."""
    client_ids = np.asarray(client_ids)
    counts = store.counts[client_ids]
    max_count = int(counts.max())
    batch_size = min(batch_size, max_count)  # same batches, no slots that no client can fill
    phases = phase_layout(steps_per_epoch(max_count, batch_size), epochs)
    plan = _cohort_plan_jit(shuffle_keys, jnp.asarray(store.offsets[client_ids]), jnp.asarray(counts),
                            max_count, batch_size, epochs, phases)
    return CohortPlan(*plan, phases)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _cohort_plan_jit(shuffle_keys, offsets, counts, max_count, batch_size, epochs, phases):
    return jax.vmap(lambda k, o, c: client_plan(k, o, c, max_count=max_count, batch_size=batch_size,
                                                epochs=epochs, phase_lengths=phases))(shuffle_keys, offsets, counts)
