"""The round state: everything that crosses rounds, as one typed pytree (what a checkpoint holds).

RNG keys are pure functions of (seed, stream, round, client) and every client update starts a fresh
optimizer, so neither is part of it. Arrays may live on the device (the model, masks) or the host
(numpy: ids and budget levels); integer counters are Python ints, since bit totals outgrow int32.
A part a method does not use is an empty dict, so every method has the same state type.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flax import struct

from flash_jax.fl.hetero import client_budget_levels, level_masks_of
from flash_jax.fl.setup import Setup
from flash_jax.models import init_variables
from flash_jax.sparse import Masks, apply_masks
from flash_jax.streams import INIT, MASK, key

# A checkpoint records the version of the state's layout; another version is refused, not guessed at.
FORMAT_VERSION = 2


@struct.dataclass
class Model:
    params: dict[str, Any]
    batch_stats: dict[str, Any]  # {} for models without BatchNorm


@struct.dataclass
class ServerMasks:
    """One mask per budget level, stacked on a leading level axis, highest (the mask at d) first;
    one level without hetero budgets, {} for a dense method. Every level's mask has an id, renewed
    whenever it changes; a client that holds its level's current id downloads no mask (id 0,
    derived from the shared seed, is known to everybody)."""

    levels: Masks
    ids: np.ndarray

    @property
    def top(self) -> Masks:
        """The server mask at density d."""
        return {p: m[0] for p, m in self.levels.items()}


@struct.dataclass
class ClientTable:
    """Per-client state, indexed by client id on the leading axis."""

    masks: Masks          # a mask of each client's own (NST); {} when clients hold the server's
    level: np.ndarray     # budget level of each client (hetero-FLASH 'client' assignment; else 0)
    mask_id: np.ndarray   # id of the server mask each client downloaded last


@struct.dataclass
class CommCounters:
    cumulative_bits: int
    dense_cumulative_bits: int  # what dense FedAvg would have sent by now, for comm_ratio_vs_dense


@struct.dataclass
class RoundState:
    round: int
    model: Model
    server: ServerMasks
    clients: ClientTable
    comm: CommCounters
    server_state: Any  # the server-mask rule's own pytree, of the type its init_state declares; {} for none


def init_state(setup: Setup) -> RoundState:
    """The seeded initial model, the method's initial masks, nothing communicated yet."""
    config, method = setup.config, setup.method
    variables = init_variables(setup.model, key(config.seed, INIT), setup.data.input_shape)
    masks = method.server_mask.init(setup, key(config.seed, MASK), variables["params"])
    params = apply_masks(variables["params"], masks)
    if setup.reparameterization:
        params = setup.reparameterization.stored(params)
    return RoundState(
        round=0, model=Model(params, variables.get("batch_stats", {})),
        server=ServerMasks(levels=level_masks_of(setup, params, masks), ids=np.arange(len(setup.level_budgets))),
        clients=ClientTable(masks=method.client.init(setup, masks),
                            level=client_budget_levels(config),
                            mask_id=np.zeros(config.num_users, np.int64)),
        comm=CommCounters(cumulative_bits=0, dense_cumulative_bits=0),
        server_state=method.server_mask.init_state(setup, params))
