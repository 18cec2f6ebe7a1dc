"""Seeded client partitions: Dirichlet label skew ("LDA", as Flower's `create_lda_partitions`) and IID.

The authors' partition ignores the seed; ours is a pure function of `seed` so a run can be reproduced
and resumed. The test set is partitioned by calling the same function with a seed derived from it.
"""

from __future__ import annotations

import math

import numpy as np


def lda_partition(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Dirichlet partition with equal client sizes, as the authors partition (docs/methods.md).

    Reference process, per client k in order: draw p_k ~ Dir(alpha * 1_C); repeat floor(n/N) times:
    draw a class from p_k renormalised over the classes that still have samples, pop an unused sample
    of it. Leftover samples (n mod N) are unused.

    Instead of one Python step per sample we fill a client in blocks. Drawing from p_k renormalised
    over the non-exhausted classes is the same as drawing i.i.d. from p_k and skipping draws of
    exhausted classes. In a block of r such draws, class j keeps min(count_j, available_j) of them no
    matter in which order they came, and the client cannot be full before the block ends. So
    counts ~ Multinomial(r, p_k restricted to available classes), keep min(counts, available), then
    draw the r' overflowing draws again in a new block. That yields the sequential process's
    distribution of per-client class counts in at most about C+1 blocks per client. Which samples of
    a class are popped is irrelevant (each class pool is in random order).

    If p_k puts no mass at all on the remaining classes (possible when a tiny alpha makes every
    remaining entry underflow to 0), the sequential process is undefined; we then draw uniformly
    over the remaining classes.
    """
    labels = np.asarray(labels)
    _check(len(labels), num_clients)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (or None/inf for IID), got {alpha}")
    rng = np.random.default_rng(seed)
    per_client = len(labels) // num_clients

    # Shuffle, then group by class: each class pool is a random permutation of its samples.
    order = rng.permutation(len(labels))
    classes, class_of = np.unique(labels[order], return_inverse=True)
    by_class = order[np.argsort(class_of, kind="stable")]
    available = np.bincount(class_of, minlength=len(classes)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(available)[:-1]])  # next unused sample of each class

    probs = rng.dirichlet(np.full(len(classes), float(alpha)), size=num_clients)
    parts = []
    for k in range(num_clients):
        taken = np.zeros(len(classes), dtype=np.int64)
        remaining = per_client
        while remaining > 0:
            open_ = available > taken
            q = np.where(open_, probs[k], 0.0)
            total = q.sum()
            q = q / total if total > 0 else open_ / open_.sum()
            counts = rng.multinomial(remaining, q)
            got = np.minimum(counts, available - taken)
            taken += got
            remaining -= int(got.sum())
        idx = np.concatenate([by_class[s : s + t] for s, t in zip(starts, taken) if t])
        starts += taken
        available -= taken
        parts.append(rng.permutation(idx).astype(np.int64))
    return parts


def iid_partition(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Uniformly random equal-size shards; the n mod N leftover examples are unused, as in LDA."""
    _check(num_examples, num_clients)
    per_client = num_examples // num_clients
    perm = np.random.default_rng(seed).permutation(num_examples).astype(np.int64)
    return list(perm[: per_client * num_clients].reshape(num_clients, per_client))


def partition(labels: np.ndarray, num_clients: int, alpha: float | None, seed: int) -> list[np.ndarray]:
    """alpha None or inf means IID; otherwise Dirichlet(alpha) label skew."""
    if alpha is None or alpha == math.inf:
        return iid_partition(len(labels), num_clients, seed)
    return lda_partition(labels, num_clients, alpha, seed)


def _check(num_examples: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > num_examples:
        raise ValueError(f"num_clients={num_clients} exceeds the {num_examples} examples to partition")
