"""What the processes of a run share once they run (flash_jax/processes.py starts them): process 0
writes, a value they agree on, a point they all reach, whole arrays on every process. With one
process each is the plain single-process answer."""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_writer() -> bool:
    """Process 0 writes the workdir's files and shows progress; the others compute alongside."""
    return jax.process_index() == 0


def max_over_processes(value: int) -> int:
    """The largest of the processes' values (a stop signal, a failure code); the value itself with
    one process. Every process must call it at the same point."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def gather_text(text: str) -> list[str]:
    """Every process's `text`, in process order (one collective call for the lengths, one for the bytes)."""
    data = np.frombuffer(text.encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [bytes(row[:n]).decode() for row, n in zip(rows, lengths)]


def wait_for_writer(name: str) -> None:
    """Every process waits here until process 0 has reached the same point."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(tree):
    """Numpy copies of a tree's arrays, whole on every process even where the arrays are split
    across processes (a cohort's per-client outputs)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)
    return jax.tree.map(get, tree)
