"""One federated round: sample the cohort, train it, aggregate, let the method's rules move the
masks on, measure consensus and communication. The method enters only through its rules."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flash_jax.comm import VALUE_BITS
from flash_jax.fl.accounting import Levels, Uploads, account
from flash_jax.fl.client import RoundInputs
from flash_jax.fl.cohort import Participants, ServerModel, train_clients
from flash_jax.fl.hetero import level_masks_of, participant_level_index
from flash_jax.fl.rules import RoundOutcome
from flash_jax.fl.setup import Setup
from flash_jax.fl.state import Model, RoundState
from flash_jax.sparse import apply_masks, mask_consensus, pack_rows, stack_levels
from flash_jax.streams import ROUND, SERVER_UPDATE, key, sample_clients


def run_round(setup: Setup, state: RoundState) -> tuple[RoundState, dict[str, Any]]:
    config, method = setup.config, setup.method
    r, t = state.round, state.round + 1  # rounds done so far; this round's number (1-based, as in the metrics)
    ids = sample_clients(config.seed, ROUND, r, config.num_users, config.clients_per_round)
    round_key = key(config.seed, ROUND, r)
    level_index = participant_level_index(config, state.clients.level, state.round, ids)
    budgets = np.asarray(setup.level_budgets)[level_index]
    # what each participant trains in: its own mask, its budget level's, or the one shared mask
    mode = method.client.local(setup, t)
    masks, mask_index, own_masks = state.server.top, None, None
    if mode.dense:
        masks = _all_true(state.server.top)
    elif state.clients.masks:
        own_masks = {p: rows[ids] for p, rows in state.clients.masks.items()}
    elif len(setup.level_budgets) > 1:
        masks, mask_index = state.server.levels, level_index
    participants = Participants(ids, budgets, mask_index, own_masks)
    result, shapes = train_clients(setup, setup.spec.for_round(mode), participants,
                                   ServerModel(state.model.params, state.model.batch_stats, masks),
                                   RoundInputs(setup.lr(r), mode.mask_rate, round_key), config.local_epoch)
    params, batch_stats, client_rows, losses = result.params, result.batch_stats, result.client_rows, result.losses
    flat = traverse_util.flatten_dict(params, sep="/")
    server_mask = state.server.top
    outcome = RoundOutcome(round=t, key=key(config.seed, SERVER_UPDATE, t), ids=ids, budgets=budgets, mode=mode,
                           maskable={p: flat[p] for p in setup.tensors.paths}, client_rows=client_rows,
                           server_mask=server_mask, reports=result.reports, server_state=state.server_state)
    update = method.server_mask.update(setup, outcome)
    if update.maskable is not None:
        flat.update(update.maskable)
        params = traverse_util.unflatten_dict(flat, sep="/")
    if update.mask is not None:
        server_mask = update.mask
        if method.server_mask.masks_model:
            params = apply_masks(params, update.mask)
    info = {"train_loss": float(jnp.mean(losses)), "lr": setup.lr(r), **shapes, **dict(mode.metrics)}
    new_level_masks = level_masks_of(setup, params, server_mask)
    if len(setup.level_budgets) > 1:
        level_counts = jax.device_get(_level_counts(new_level_masks))
        info["hetero_level_density"] = [float(c) / setup.tensors.num_maskable for c in level_counts]
    report_bits = 0 if mode.report is None else len(ids) * VALUE_BITS * mode.report.upload_values(setup.tensors)
    uploads = _uploads(participants, masks, client_rows, report_bits)
    if method.sparse:
        multiplicity = np.bincount(uploads.row, minlength=next(iter(uploads.masks.values())).shape[0])
        info.update(mask_consensus(uploads.masks, server_mask, state.server.top, multiplicity))
    server, clients, comm, comm_metrics = account(setup.tensors, method.sparse, state, new_level_masks,
                                                  Levels(ids, level_index), uploads)
    clients = clients.replace(masks=method.client.update(setup, clients.masks, ids, client_rows))
    info.update(comm_metrics)
    server_state = state.server_state if update.state is None else update.state
    return RoundState(round=r + 1, model=Model(params, batch_stats), server=server, clients=clients, comm=comm,
                      server_state=server_state), info


def _uploads(participants: Participants, masks: dict, client_rows: dict | None, report_bits: int) -> Uploads:
    """What the participants upload: their masks after training as distinct masks and each one's
    row, and the bits of their gradient reports."""
    ids, mask_index = participants.ids, participants.mask_index
    if client_rows is not None:  # masks that came out of training
        return Uploads(client_rows, np.arange(len(ids)), changed=True, extra_bits=report_bits)
    if mask_index is not None:  # every participant kept the mask of its level
        return Uploads(pack_rows(masks), mask_index, changed=False, extra_bits=report_bits)
    return Uploads(pack_rows(stack_levels(masks)), np.zeros(len(ids), np.int64), changed=False, extra_bits=report_bits)


@jax.jit
def _level_counts(stacked) -> jax.Array:
    """Active entries of each level's mask (the level axis leads)."""
    return sum(jnp.sum(m.reshape(m.shape[0], -1), axis=1, dtype=jnp.int32) for m in stacked.values())


@jax.jit
def _all_true(masks) -> dict:
    return {p: jnp.ones_like(m) for p, m in masks.items()}
