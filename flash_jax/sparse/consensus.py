"""Server-side mask consensus: stage-1 rescaling, NEXT_MASK, hetero levels,
FedDST's union pruning, and the consensus measures."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flash_jax.sparse.masks import Masks, pack_rows, topk_mask


def as_rows(client_masks: Masks) -> dict[str, jax.Array]:
    """Masks with a leading client axis as bit-packed rows (sparse.pack_rows); packed ones as they are."""
    return client_masks if next(iter(client_masks.values())).dtype == jnp.uint8 else pack_rows(client_masks)


@jax.jit
def _row_counts(rows: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return _per_row(lambda row: {p: _popcount(r) for p, r in row.items()}, rows)


def client_mask_counts(client_masks: Masks) -> dict[str, jax.Array]:
    """Active entries per client and tensor, from boolean masks with a leading client axis or
    their packed rows (popcounts: no widening of every mask to int32 at once)."""
    return _row_counts(as_rows(client_masks))


def client_layer_densities(client_masks: Masks) -> dict[str, float]:
    """Per-tensor density averaged over clients: the only thing stage-1 clients send back."""
    counts = jax.device_get(client_mask_counts(client_masks))
    return {p: float(counts[p].mean()) / math.prod(client_masks[p].shape[1:]) for p in client_masks}


def sensitivity_densities(layer_density: dict[str, float], sizes: dict[str, int], density: float) -> dict[str, float]:
    """Rescale the clients' layer densities delta_l so the total budget is d*N_m:
    lambda = d*N_m / sum_l delta_l*n_l, d_l = min(lambda*delta_l, 1)."""
    budget = density * sum(sizes.values())
    scale = budget / sum(layer_density[p] * sizes[p] for p in sizes)
    return {p: min(scale * layer_density[p], 1.0) for p in sizes}


def _popcount(rows: jax.Array) -> jax.Array:
    return jnp.sum(jax.lax.population_count(rows), axis=-1, dtype=jnp.int32)


def _per_row(f, rows):
    """f over the rows, 64 at a time: XLA's CPU backend widens a reduction's whole input to int32
    first, which over 1,000 MNISTNet masks at once is GBs."""
    return jax.lax.map(f, rows, batch_size=64)


def _held(rows: jax.Array, multiplicity: jax.Array, size: int, block: int = 16) -> jax.Array:
    """How many participants hold each entry, from bit-packed rows, `block` rows at a time (a
    weighted sum as a matmul: exact in float32 below 2**24 participants)."""
    pad = -rows.shape[0] % block
    rows = jnp.pad(rows, ((0, pad), (0, 0))).reshape(-1, block, rows.shape[1])
    weights = jnp.pad(multiplicity, (0, pad)).reshape(-1, block).astype(jnp.float32)

    def add(held, part):
        bits = jnp.unpackbits(part[0], axis=1, count=size).astype(jnp.float32)
        return held + part[1] @ bits, None

    held, _ = jax.lax.scan(add, jnp.zeros(size, jnp.float32), (rows, weights))
    return held.astype(jnp.int32)


@jax.jit
def _consensus_counts(clients: dict[str, jax.Array], multiplicity: jax.Array, server_mask: Masks,
                      previous_server_mask: Masks):
    """Counts over bit-packed masks: memory O(K*N_m/8), not the GBs of int32 temporaries XLA's CPU
    backend made of 1,000 boolean MNISTNet masks, and with the client axis split over devices each
    gathers the cohort's masks 8x smaller. Padding bits are 0 in every packed row."""
    server = pack_rows({p: m[None] for p, m in server_mask.items()})
    previous = pack_rows({p: m[None] for p, m in previous_server_mask.items()})

    def one_client(row):
        def count(bits):
            return sum(_popcount(bits(row[p], server[p][0], previous[p][0])) for p in row)
        return {"to_server": count(lambda c, s, q: c ^ s), "both": count(lambda c, s, q: c & s),
                "either": count(lambda c, s, q: c | s), "activated": count(lambda c, s, q: c & ~q),
                "deactivated": count(lambda c, s, q: ~c & q)}

    per_client = _per_row(one_client, clients)

    held = jnp.concatenate([_held(clients[p], multiplicity, server_mask[p].size) for p in sorted(clients)])
    k = jnp.sum(multiplicity)
    return {
        "differing_pairs": jnp.sum(held.astype(jnp.float32) * (k - held)),
        "to_server": per_client["to_server"],
        "iou_to_server": per_client["both"] / jnp.maximum(per_client["either"], 1),
        "server_change": sum(_popcount(server[p] ^ previous[p])[0] for p in server),
        "union": jnp.sum(held > 0, dtype=jnp.int32),
        "activated": per_client["activated"],
        "deactivated": per_client["deactivated"],
        "reactivated": sum(_popcount(server[p] & ~previous[p])[0] for p in server),
        "server": sum(_popcount(server[p])[0] for p in server),
    }


def mask_consensus(client_masks: Masks, server_mask: Masks, previous_server_mask: Masks,
                   multiplicity: np.ndarray | None = None) -> dict[str, float]:
    """The paper's consensus measures for one round, as Python floats from exact counts.

    client_masks has a leading axis of distinct masks (boolean, or bit-packed rows); participant-
    weighted by `multiplicity` (how many participants hold each; default one each), so a mask shared
    by K participants is passed once instead of K times. Mean pairwise Hamming distance uses that a
    coordinate held by c of K clients differs in c*(K-c) of the K*(K-1)/2 pairs.
    """
    rows = next(iter(client_masks.values())).shape[0]
    multiplicity = np.ones(rows, np.int64) if multiplicity is None else np.asarray(multiplicity, np.int64)
    counts = jax.device_get(_consensus_counts(as_rows(client_masks), jnp.asarray(multiplicity, jnp.int32),
                                              server_mask, previous_server_mask))
    k = int(multiplicity.sum())
    n = sum(m.size for m in server_mask.values())
    return {
        "mask_hamming_clients": float(counts["differing_pairs"]) / (max(k * (k - 1) / 2, 1) * n),
        "mask_hamming_to_server": float(np.dot(multiplicity, counts["to_server"])) / (k * n),
        "mask_iou_to_server": float(np.dot(multiplicity, counts["iou_to_server"])) / k,
        "server_mask_change": float(counts["server_change"]) / n,
        "union_density": float(counts["union"]) / n,
        "server_mask_density": float(counts["server"]) / n,  # may exceed the model's: weights at 0 in the mask
        # regrowth, in entries: a participant's mask against the mask it received
        # (the previous server mask; for NST, Top-k and SparsyFed the support of the model it got)
        "mask_activated": float(np.dot(multiplicity, counts["activated"])) / k,
        "mask_deactivated": float(np.dot(multiplicity, counts["deactivated"])) / k,
        "server_reactivated": int(counts["reactivated"]),
    }


SUBSAMPLE_METHODS = ("avg", "aggregate")


def next_mask(client_masks: Masks | None, params_flat: dict[str, jax.Array], density, subsample_method: str,
              client_budgets: jax.Array | None = None, current_mask: Masks | None = None) -> Masks:
    """JMWST's NEXT_MASK: per-tensor budgets e_l from the clients' mean counts ('avg') or the
    aggregated model's support ('aggregate'; client_masks unused), scaled by
    lam = min(1, d*N_m / sum e_l) and floored; each tensor keeps exactly its m_l largest |theta_l|.
    ``params_flat`` holds exactly the maskable tensors.

    ``client_budgets`` (hetero-FLASH: each client's density as a fraction of d, with the
    ``current_mask`` at d): 'avg' then averages only the clients whose budget is d, whose sparse
    learning aimed at d; if none took part, the budgets are ``current_mask``'s counts (the mask keeps
    its layer densities and re-selects the largest weights). Clients below d cannot stand in: their
    layer profile is not the d profile scaled down (a saturated layer stays full), and lam <= 1
    would leave the d mask below d for good."""
    paths = sorted(params_flat)
    if subsample_method == "avg":
        num_clients = next(iter(client_masks.values())).shape[0]
        at_d = jnp.ones(num_clients, bool) if client_budgets is None else jnp.asarray(client_budgets) == 1.0
        budget = {}
        for p in paths:
            counts = jnp.sum(client_masks[p].reshape(num_clients, -1), axis=1, dtype=jnp.float32)
            mean_at_d = jnp.sum(jnp.where(at_d, counts, 0.0)) / jnp.maximum(jnp.sum(at_d), 1)
            if current_mask is not None:
                mean_at_d = jnp.where(jnp.any(at_d), mean_at_d, jnp.sum(current_mask[p], dtype=jnp.float32))
            budget[p] = mean_at_d
    elif subsample_method == "aggregate":
        budget = {p: jnp.count_nonzero(params_flat[p]).astype(jnp.float32) for p in paths}
    else:
        raise ValueError(f"subsample_method must be one of {SUBSAMPLE_METHODS}, got {subsample_method!r}")
    total = sum(params_flat[p].size for p in paths)
    scale = jnp.minimum(1.0, density * total / jnp.maximum(sum(budget.values()), 1.0))
    return {p: topk_mask(jnp.abs(params_flat[p]), jnp.floor(scale * budget[p]).astype(jnp.int32)) for p in paths}


def level_masks(params_flat: dict[str, jax.Array], top_mask: Masks, density, levels: tuple[float, ...]) -> Masks:
    """hetero-FLASH's server masks, stacked on a leading level axis: level 1 is ``top_mask`` (the
    SPDST/JMWST mask at d); a level h < 1 is NEXT_MASK(theta masked to ``top_mask``, h*d, 'aggregate'),
    a top-k of |theta| inside the top mask's support, so the levels nest."""
    masked = {p: jnp.where(top_mask[p], w, 0.0) for p, w in params_flat.items()}
    per_level = [top_mask if h == 1.0 else next_mask(None, masked, h * density, "aggregate") for h in levels]
    return {p: jnp.stack([m[p] for m in per_level]) for p in sorted(params_flat)}


def prune_union(params_flat: dict[str, jax.Array], client_masks: Masks, counts: dict[str, int]) -> Masks:
    """FedDST's server mask: the union of the participants' masks, magnitude-pruned tensor by tensor
    back to ``counts`` (an entry of the union always outranks one outside it, even at |theta| = 0)."""
    masks = {}
    for path in sorted(params_flat):
        union = jnp.any(client_masks[path], axis=0)
        masks[path] = topk_mask(jnp.where(union, jnp.abs(params_flat[path]), -1.0), counts[path])
    return masks
