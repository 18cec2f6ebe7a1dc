"""The rules a method is composed of, each a pair of pure functions as in optax: `init` builds its
part of the round state, `update` moves it on by one round.

- ClientRule: how a participant treats its mask. `init` gives the per-client masks (NST keeps one
  per client; {}: clients train with the server's), `local` says what local training does with
  the mask this round (nothing, sparse learning toward the client's budget, FedDST's
  readjustment), `update` folds the participants' final masks back into the per-client masks.
- ServerMaskRule: how the server mask evolves. `init` draws the first mask at d from the seed,
  `update` returns a ServerUpdate from the round's outcome (its None parts: unchanged).

- Aggregation (fl/aggregate.py): FedAvg or FMA, chosen per Config.

Every callable of a rule (and of a Method, fl/methods.py) takes the run's Setup first (fl/setup.py:
the config with every knob, the data, the model and its maskable tensors, the level budgets);
so do the callables the rule builders below take. A rule sees rounds numbered from 1, as the
metrics do: round t is the t-th round of training.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flash_jax.fl.aggregate import FEDAVG, FMA, Aggregation
from flash_jax.fl.client import momentum_sgd
from flash_jax.fl.local_rules import sparse_learning
from flash_jax.hosts import to_host
from flash_jax.sparse import Masks, magnitude_masks, next_mask, pack_rows, random_masks, stack_levels, unpacked

__all__ = ["Aggregation", "ClientRule", "LocalMode", "Reparameterization", "RoundOutcome", "ServerMaskRule",
           "ServerUpdate", "FEDAVG", "FMA"]


class LocalMode(NamedTuple):
    """What a participant's local training does this round (the records: fl/local_rules.py)."""

    mask_rule: Any = None          # a local mask rule: the mask changes between phases (None: it stays)
    mask_rate: float = 0.0         # handed to the mask rule (FedDST: the readjustment ratio)
    dense: bool = False            # train every weight (no mask) this round
    report: Any = None             # a gradient report the participants upload besides their model
    metrics: tuple[tuple[str, float], ...] = ()  # logged with the round


class RoundOutcome(NamedTuple):
    """What a server-mask rule may look at after the cohort's aggregation."""

    round: int                  # this round's number, from 1 (as in the metrics)
    key: jax.Array              # the server's own randomness this round: streams.key(seed, SERVER_UPDATE, round)
    ids: np.ndarray             # the participants
    budgets: np.ndarray         # their density targets as fractions of d
    mode: LocalMode
    maskable: dict[str, jax.Array]  # the aggregated maskable tensors, by path
    client_rows: dict | None    # the participants' final masks, bit-packed (None: nobody's could change)
    server_mask: Masks          # the mask at d of the round's start
    reports: dict               # the participants' gradient reports, averaged ({} without)
    server_state: Any           # the rule's own pytree (ServerMaskRule.init_state)

    @property
    def client_masks(self) -> Masks | None:
        """The participants' final masks as booleans, unpacked when a rule asks (a 1,000-client NST
        cohort's take 0.26 GB so, and NST's rule never asks)."""
        if self.client_rows is None:
            return None
        return unpacked(self.client_rows, {p: m.shape for p, m in self.server_mask.items()})


class ServerUpdate(NamedTuple):
    """What a server-mask rule returns after a round: each part None is kept as it was."""

    mask: Masks | None = None
    maskable: dict | None = None  # new values of maskable tensors by path (before the mask applies)
    state: Any = None             # the rule's new own pytree


class ClientRule(NamedTuple):
    init: Callable[[Any, Masks], Masks]  # (setup, initial server mask) -> per-client masks
    local: Callable[[Any, int], LocalMode]  # (setup, round from 1)
    # (setup, per-client masks, ids, the participants' final masks as bit-packed rows or None) -> per-client masks
    update: Callable[[Any, Masks, np.ndarray, dict | None], Masks]
    optimizer: Callable[[Any], Callable[[Any], optax.GradientTransformation]] = lambda setup: optax.sgd
    # (setup) -> None, or the finishing step: the trained maskable tensors -> the client's final masks
    finish: Callable[[Any], Callable | None] = lambda setup: None
    # (setup) -> None, or a step transform (fl/local_rules.py), e.g. SparsyFed's activation pruning
    step_transform: Callable[[Any], Any] = lambda setup: None


class Reparameterization(NamedTuple):
    """Weights stored, sent and averaged as one thing, computed with as another (SparsyFed's
    Powerprop): `stored` maps initial weights to what is stored, `effective` what is stored to the
    weights the model computes with; both over the whole params tree."""

    stored: Callable[[dict], dict]
    effective: Callable[[dict], dict]


class ServerMaskRule(NamedTuple):
    init: Callable[[Any, jax.Array, dict], Masks]  # (setup, key, initial params) -> the mask at d
    update: Callable[[Any, RoundOutcome], ServerUpdate]  # (setup, outcome)
    masks_model: bool = True  # the new mask multiplies the model (False: it is the model's support)
    # (setup, initial params) -> the rule's own state: a pytree of a type it declares ({}: none)
    init_state: Callable[[Any, dict], Any] = lambda setup, params: {}


def _no_own_masks(setup, server_mask: Masks) -> Masks:
    return {}


def _own_masks_unchanged(setup, client_masks: Masks, ids, final_masks) -> Masks:
    return client_masks


def _private(setup, server_mask: Masks) -> dict[str, np.ndarray]:
    """Every client's mask, bit-packed rows in host memory (one copy per process however many
    devices: 10,000 MNISTNet masks take 0.33 GB so, 2.6 GB as booleans)."""
    row = to_host(pack_rows(stack_levels(server_mask)))
    return {p: np.tile(r, (setup.config.num_users, 1)) for p, r in row.items()}


def _store(setup, client_masks: dict[str, np.ndarray], ids, final_rows) -> dict[str, np.ndarray]:
    rows = to_host(final_rows)
    table = {p: t.copy() for p, t in client_masks.items()}
    for p, t in table.items():
        t[ids] = rows[p]
    return table


CLIENT_FIXED_MASK = ClientRule(init=_no_own_masks, local=lambda setup, t: LocalMode(), update=_own_masks_unchanged)
"""Participants train inside the server mask they receive and send it back unchanged."""

CLIENT_PRIVATE_SPARSE_LEARNING = ClientRule(
    init=_private, local=lambda setup, t: LocalMode(mask_rule=sparse_learning(setup.config)), update=_store)
"""Each client keeps a mask of its own across rounds and moves it by sparse learning (NST)."""


def sparse_learning_every(interval: Callable[[Any], int]) -> ClientRule:
    """Sparse learning on the rounds where the server renews its mask (rounds 1, 1 + interval(setup),
    ...), a fixed mask in between (JMWST with r_int)."""
    return CLIENT_FIXED_MASK._replace(local=lambda setup, t: LocalMode(
        mask_rule=sparse_learning(setup.config) if (t - 1) % interval(setup) == 0 else None))


def _random_at_d(setup, key, params) -> Masks:
    return random_masks(key, setup.tensors.shapes, setup.config.density)


def _dense_init(setup, key, params) -> Masks:
    return {}


def _unchanged(setup, outcome) -> ServerUpdate:
    return ServerUpdate()


SERVER_NO_MASK = ServerMaskRule(init=_dense_init, update=_unchanged)
"""A dense method: no mask at all (server-mask rules are SERVER_*, client rules CLIENT_*)."""

SERVER_FIXED_MASK = ServerMaskRule(init=_random_at_d, update=_unchanged)
"""A random mask at d from the shared seed, kept for the run (PDST; SPDST after stage 1)."""

SERVER_MODEL_SUPPORT = ServerMaskRule(init=_random_at_d, update=lambda setup, outcome: ServerUpdate(
    mask=_support(outcome.maskable)), masks_model=False)
"""Without a shared mask, the server's is the support of the averaged model: the union of the
participants' masks (NST)."""


def all_weights(setup, key, params) -> Masks:
    """A dense start: every maskable weight in the mask."""
    return {p: jnp.ones(s, bool) for p, s in setup.tensors.shapes.items()}


SERVER_DENSE_START_SUPPORT = SERVER_MODEL_SUPPORT._replace(init=all_weights)
"""The support of the averaged model, from a dense start (Top-k, SparsyFed)."""


def global_cut(density: float) -> Callable[[dict], Masks]:
    """A client's final masks: its K_d = round(d * N_m) largest |weights| ranked across all maskable
    tensors (one threshold, ties to the lower index), as B1.3's PRUNE_GLOBAL."""
    return lambda maskable: magnitude_masks(maskable, sorted(maskable), density, scope="global")


def train_dense_then_cut(weight_decay: Callable[[Any], float],
                         step_transform: Callable[[Any], Any] = lambda setup: None) -> ClientRule:
    """Participants train every weight (SGD, weight decay on all parameters) from the model they
    receive, then cut it to d with `global_cut` (Top-k, SparsyFed)."""
    return CLIENT_FIXED_MASK._replace(
        local=lambda setup, t: LocalMode(dense=True),
        optimizer=lambda setup: functools.partial(momentum_sgd, momentum=None, weight_decay=weight_decay(setup)),
        finish=lambda setup: global_cut(setup.config.density), step_transform=step_transform)


@jax.jit
def _support(maskable: dict[str, jax.Array]) -> Masks:
    return {p: w != 0 for p, w in maskable.items()}


def next_mask_every(interval: Callable[[Any], int], subsample: Callable[[Any], str]) -> ServerMaskRule:
    """NEXT_MASK on rounds 1, 1 + interval(setup), ... from the participants' sparse-learned
    masks (JMWST); hetero participants below d do not set the budgets (see sparse.next_mask)."""
    def update(setup, outcome: RoundOutcome) -> ServerUpdate:
        if (outcome.round - 1) % interval(setup) != 0:
            return ServerUpdate()
        return ServerUpdate(mask=_next_mask(outcome.client_masks, outcome.maskable, setup.config.density,
                                            subsample(setup), jnp.asarray(outcome.budgets, jnp.float32),
                                            outcome.server_mask))
    return ServerMaskRule(init=_random_at_d, update=update)


_next_mask = jax.jit(next_mask, static_argnums=3)


def magnitude_at_d(setup, key, params) -> Masks:
    """The seeded initial model magnitude-pruned tensor by tensor to d (FedDST's start)."""
    return magnitude_masks(params, setup.tensors.paths, setup.config.density, scope="layer")


def by_update_mode(setup) -> Aggregation:
    """--update_mode 0: FedAvg; 1: FMA, each coordinate averaged over the clients holding it."""
    return FMA if setup.config.update_mode == 1 else FEDAVG
