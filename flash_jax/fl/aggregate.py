"""Server aggregation as weighted running sums over a leading client axis, divided once at the end,
so a cohort can be aggregated chunk by chunk (and across devices) without keeping its clients."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import traverse_util


def weighted_sums(stacked, weights, client_masks=None) -> dict:
    """One chunk's share of the average, per '/'-joined leaf path: (sum_k w_k x_k, sum_k w_k).

    FedAvg weights every leaf by the clients' sample counts (BatchNorm statistics included).
    For the tensors in `client_masks` (FMA) the weight is per entry, sum_k w_k m_k, so a
    coordinate is averaged over the clients whose mask holds it; with equal client sizes (the LDA
    and IID partitions) that is FMA's plain sum over holders divided by their number, with sample
    weights it is FedDST's aggregation. A client of weight 0 (chunk padding) adds nothing.
    """
    sums = {}
    for path, x in traverse_util.flatten_dict(stacked, sep="/").items():
        if client_masks is not None and path in client_masks:
            held = client_masks[path] * weights.reshape((-1,) + (1,) * (x.ndim - 1))
            sums[path] = (jnp.sum(held * x, axis=0), jnp.sum(held, axis=0))
        else:
            sums[path] = (jnp.tensordot(weights, x, axes=1), jnp.sum(weights))
    return sums


def weighted_average(sums: dict):
    """The average from accumulated sums (the tree unflattened); 0 where the weight is 0 (an FMA
    coordinate that nobody holds)."""
    averaged = {p: jnp.where(w > 0, total / jnp.where(w > 0, w, 1.0), 0.0).astype(total.dtype)
                for p, (total, w) in sums.items()}
    return traverse_util.unflatten_dict(averaged, sep="/")


def zero_sums(tree, masked_paths=()) -> dict:
    """Sums over no client yet, shaped like `weighted_sums`' output for clients shaped like `tree`."""
    return {p: (jnp.zeros_like(x), jnp.zeros(x.shape if p in masked_paths else (), x.dtype))
            for p, x in traverse_util.flatten_dict(tree, sep="/").items()}


class Contributions(NamedTuple):
    """A chunk's clients' outputs, each with a leading client axis: their trained parameters,
    BatchNorm statistics, final masks, gradient reports ({} without), sample weights (0 for
    padding) and the reports' own weights."""

    params: dict
    batch_stats: dict
    masks: dict
    reports: dict
    weights: jax.Array
    report_weights: jax.Array


class Aggregation(NamedTuple):
    """A server aggregation as an init/update/finalize triple over running sums (hashable: the
    cohort's jit takes it as a static argument). `per_entry` weighs each coordinate of the masked
    tensors by the clients holding it (FMA) instead of by every client (FedAvg)."""

    name: str
    per_entry: bool

    def init(self, params, batch_stats, masked_paths, reports) -> tuple[dict, dict, dict]:
        """`reports`: shaped like the clients' reports ({} without), averaged with their own weights."""
        return (zero_sums(params, tuple(masked_paths) if self.per_entry else ()), zero_sums(batch_stats),
                zero_sums(reports))

    def update(self, sums, clients: Contributions) -> tuple[dict, dict, dict]:
        chunk = (weighted_sums(clients.params, clients.weights, clients.masks if self.per_entry else None),
                 weighted_sums(clients.batch_stats, clients.weights),
                 weighted_sums(clients.reports, clients.report_weights))
        return jax.tree.map(jnp.add, sums, chunk)

    def finalize(self, sums) -> tuple[dict, dict, dict]:
        return tuple(weighted_average(part) for part in sums)


FEDAVG = Aggregation("fedavg", per_entry=False)
FMA = Aggregation("fma", per_entry=True)
