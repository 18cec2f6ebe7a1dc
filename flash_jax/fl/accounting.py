"""Communication of a round as a pure function of the round's start and end.

Every server mask (one per budget level) has an id, renewed whenever it changes; a participant
whose held id is its level's current one downloads no mask; a participant whose mask cannot change
in training uploads none.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flash_jax.comm import dense_model_bits, model_bits
from flash_jax.fl.evaluate import server_nnz
from flash_jax.fl.state import ClientTable, CommCounters, RoundState, ServerMasks
from flash_jax.sparse import client_mask_counts


class Uploads(NamedTuple):
    """The participants' masks after training: a stack of distinct masks (bit-packed rows,
    sparse.pack_rows) and each participant's row in it. `changed`: the masks came out of training
    (the server does not know them)."""

    masks: dict
    row: np.ndarray
    changed: bool
    extra_bits: int = 0  # what the participants upload besides their models (gradient reports), in all


class Levels(NamedTuple):
    """The participants, and the budget level each trains at (its server mask's row)."""

    ids: np.ndarray
    level_index: np.ndarray


@jax.jit
def _level_changes(old, new) -> jax.Array:
    """Which levels' masks differ between two stacked mask sets."""
    return sum(jnp.any((old[p] != new[p]).reshape(old[p].shape[0], -1), axis=1) for p in old) > 0


@jax.jit
def _level_nnz(maskable, stacked_masks) -> dict[str, jax.Array]:
    """Per level and tensor: non-zero server weights inside that level's mask (what it downloads)."""
    return {p: jnp.sum(((maskable[p] != 0) & m).reshape(m.shape[0], -1), axis=1, dtype=jnp.int32)
            for p, m in stacked_masks.items()}


def account(tensors, sparse: bool, old: RoundState, new_level_masks: dict, levels: Levels,
            uploads: Uploads) -> tuple[ServerMasks, ClientTable, CommCounters, dict[str, float]]:
    """The round's bits: the server's new mask ids, the clients' held ids, the new counters and the
    round's metrics. `tensors` is the setup's MaskableTensors."""
    ids, level_index = levels
    sizes, k = tensors.sizes, len(ids)
    dense = dense_model_bits(tensors.dense_size + tensors.num_maskable)
    server, clients = old.server, old.clients
    if not sparse:
        down = up = dense * k
        new_server = server.replace(levels=new_level_masks)
    else:
        flat = traverse_util.flatten_dict(old.model.params, sep="/")
        level_nnz = jax.device_get(_level_nnz({p: flat[p] for p in tensors.paths}, server.levels))
        held = clients.mask_id[ids] == server.ids[level_index]
        down = sum(model_bits({p: level_nnz[p][lv] for p in sizes}, sizes, tensors.dense_size, mask_known=bool(h))
                   for lv, h in zip(level_index, held))
        up_nnz = jax.device_get(client_mask_counts(uploads.masks))
        up = sum(model_bits({p: up_nnz[p][row] for p in sizes}, sizes, tensors.dense_size,
                            mask_known=not uploads.changed) for row in uploads.row)
        holders = clients.mask_id.copy()
        holders[ids] = server.ids[level_index]
        changed = np.asarray(jax.device_get(_level_changes(server.levels, new_level_masks)))
        mask_ids = server.ids.copy()
        mask_ids[changed] = mask_ids.max() + 1 + np.arange(changed.sum())
        new_server = ServerMasks(levels=new_level_masks, ids=mask_ids)
        clients = clients.replace(mask_id=holders)
    up += uploads.extra_bits
    comm = CommCounters(cumulative_bits=old.comm.cumulative_bits + up + down,
                        dense_cumulative_bits=old.comm.dense_cumulative_bits + 2 * dense * k)
    metrics = {"upload_bits": up, "download_bits": down, "cumulative_bits": comm.cumulative_bits,
               "comm_ratio_vs_dense": comm.cumulative_bits / comm.dense_cumulative_bits}
    return new_server, clients, comm, metrics


def model_transfer_bits(tensors, params, mask_known: bool) -> int:
    """One transfer of `params`: the non-zero entries of its maskable tensors (`tensors`: the setup's
    MaskableTensors) sparse, with their mask unless the receiver knows it, the rest dense."""
    return model_bits(server_nnz(params, tensors.paths), tensors.sizes, tensors.dense_size, mask_known=mask_known)


def with_stage_bits(state: RoundState, bits: int) -> RoundState:
    """`state` with `bits` sent by a method's stage before the rounds counted; dense FedAvg has no
    such stage, so what it would have sent stays."""
    return state.replace(comm=state.comm.replace(cumulative_bits=state.comm.cumulative_bits + bits))
