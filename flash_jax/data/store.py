"""Client store on the device and per-round cohort batching plans.

All clients' examples live in one packed device array; a client is an (offset, count) slice of it.
A round's batches are index plans built on the device from keys derived from (seed, round, client),
so the data a client sees never depends on which other clients share its cohort or chunk.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

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


class CohortLayout(NamedTuple):
    """Static shape of a cohort's plans (hashable: a jit static argument).

    Every client is padded to `steps` batches of `batch_size` per epoch. The caller's `phases` cut
    the step axis into phases, aligned across clients so that whatever runs between phases (for
    federated sparse learning, a mask update) runs for everybody at once: `phases.lengths(steps,
    epochs)` gives the static (padded) phase lengths, `phases.of_client(steps, epochs)` a client's
    own (epoch, first step, number of steps) per phase, from its (traced) steps per epoch.
    """

    batch_size: int
    steps: int
    epochs: int
    phase_lengths: tuple[int, ...]
    phases: Any


class CohortPlan(NamedTuple):
    """Where each client's local steps sit in the cohort's padded step axis.

    `example_index` (K, T, B) indexes the store; `example_valid` marks real examples (a client's last
    batch may be partial); `step_valid` (K, T) marks real steps.
    """

    example_index: jax.Array
    example_valid: jax.Array
    step_valid: jax.Array


def steps_per_epoch(count, batch_size: int):
    return -(-count // batch_size)


def padded_count(count: int, cap: int) -> int:
    """`count` rounded up to the grid 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3*2^(k-1)), at most `cap`.

    A cohort padded to its own largest client would take a new shape, and a recompile, nearly every
    round when client sizes differ; on this grid the padded count is under 1.5 times the cohort's
    largest, and a run sees at most about 2*log2(cap) shapes. `cap` (the store's largest client) is always a shape of its
    own, so equal-size partitions are never padded.
    """
    power = 1 << max(count - 1, 0).bit_length()  # the smallest power of two >= count
    return min(3 * power // 4 if 4 * count <= 3 * power else power, cap)


def cohort_layout(store: ClientStore, client_ids, *, batch_size: int, epochs: int, phases) -> CohortLayout:
    """The padded shape of a cohort: its largest client's count on the `padded_count` grid, in
    batches of `batch_size` (fewer when no client can fill them, so a client's batches are the
    same whatever its cohort)."""
    count = padded_count(int(store.counts[np.asarray(client_ids)].max()), int(store.counts.max()))
    batch_size = min(batch_size, count)
    steps = steps_per_epoch(count, batch_size)
    return CohortLayout(batch_size, steps, epochs, phases.lengths(steps, epochs), phases)


def client_plan(layout: CohortLayout, shuffle_key, offset, count):
    """One client's padded plan; vmapped over the cohort (key/offset/count batched)."""
    batch_size, max_steps, epochs = layout.batch_size, layout.steps, layout.epochs
    slots = max_steps * batch_size
    position = jnp.arange(slots)

    def epoch_order(epoch):
        scores = jax.random.uniform(jax.random.fold_in(shuffle_key, epoch), (slots,))
        return jnp.argsort(jnp.where(position < count, scores, 2.0))  # padding sorts last

    ex_index = (offset + jax.vmap(epoch_order)(jnp.arange(epochs))).reshape(epochs, max_steps, batch_size)
    ex_valid = (position < count).reshape(max_steps, batch_size)
    steps = steps_per_epoch(count, batch_size)

    own_epoch, own_step, step_valid = [], [], []
    for length, (epoch, start, client_len) in zip(layout.phase_lengths, layout.phases.of_client(steps, epochs)):
        t = jnp.arange(length)
        own_epoch.append(jnp.full_like(t, epoch))
        own_step.append(start + t)
        step_valid.append(t < client_len)
    own_epoch = jnp.concatenate(own_epoch)
    own_step = jnp.clip(jnp.concatenate(own_step), 0, max_steps - 1)
    step_valid = jnp.concatenate(step_valid)
    example_valid = ex_valid[own_step] & step_valid[:, None]
    example_index = jnp.where(example_valid, ex_index[own_epoch, own_step], offset)
    return example_index, example_valid, step_valid


def cohort_plan(layout: CohortLayout, shuffle_keys, offsets, counts) -> CohortPlan:
    """Plans for a cohort (or a chunk of one) from per-client shuffle keys (derived from seed, round
    and client id); traceable, so the cohort function builds them inside its own jit."""
    return CohortPlan(*jax.vmap(functools.partial(client_plan, layout))(shuffle_keys, offsets, counts))
