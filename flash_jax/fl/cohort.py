"""A cohort's local training and aggregation: equal chunks of clients, each one jitted call that
trains its clients (vmap of local_train) and adds their weighted sums to the running sums, with the
client axis sharded over the devices of a 1-D mesh.

Peak memory follows the chunk size, not the cohort size: only the sums and the clients' small
per-client outputs (final masks when they change, losses) outlive a chunk. Chunks all have one shape
(the last is padded with weight-0 copies of the cohort's first client), so they compile once.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from flash_jax.data.store import ClientStore, CohortLayout, cohort_layout, cohort_plan, steps_per_epoch
from flash_jax.fl.aggregate import Aggregation, Contributions
from flash_jax.fl.client import ClientSchedule, ClientSpec, ClientStart, RoundInputs, local_train
from flash_jax.fl.mesh import constrain, place
from flash_jax.fl.phases import MASK_UPDATE_PHASES
from flash_jax.fl.setup import Setup
from flash_jax.sparse import pack_rows, unpack_rows, unpacked
from flash_jax.streams import SHUFFLE, derive

def chunk_size(clients_per_chunk: int, cohort: int, devices: int) -> int:
    """Clients per jitted call: --clients_per_chunk (0: the whole cohort), at most the cohort, rounded
    up to a multiple of the device count so every device gets the same number of clients."""
    size = min(clients_per_chunk, cohort) if clients_per_chunk else cohort
    return -(-size // devices) * devices


class ChunkPlan(NamedTuple):
    """The static part of a cohort call (hashable): local training, the padded shape, the
    aggregation and the mesh the client axis is sharded over."""

    spec: ClientSpec
    layout: CohortLayout
    aggregation: Aggregation
    mesh: Mesh | None


class ServerModel(NamedTuple):
    """What every participant receives: the model and the mask(s) to train in. `masks` is shared, or
    (with clients["mask_index"]) a stack from which participant k takes masks[mask_index[k]]."""

    params: dict
    batch_stats: dict
    masks: dict


@functools.partial(jax.jit, static_argnames=("plan",), donate_argnames=("sums",))
def train_chunk(plan: ChunkPlan, examples, model: ServerModel, shared: RoundInputs, clients, sums):
    """Train one chunk of clients and add their weighted sums (the plan's aggregation: parameters,
    and FedAvg of BatchNorm statistics) to `sums` (donated).

    `examples` are the client store's images and labels; `clients` holds per-client arrays: ids
    (keys are fold_in(round_key, id)), offsets and counts into the store, target counts, weights (0
    for padding) and, when each client trains with its own mask, either mask_index into the leading
    axis of `model.masks` or the masks themselves as bit-packed rows (sparse.pack_rows) under "masks".
    Returns the new sums, the clients' final masks (when they can change, else None) and their mean
    training losses.
    """
    spec, layout = plan.spec, plan.layout
    keys = jax.vmap(derive, in_axes=(None, 0))(shared.round_key, clients["ids"])
    shuffle_keys = jax.vmap(lambda k: derive(k, SHUFFLE))(keys)
    cohort = cohort_plan(layout, shuffle_keys, clients["offsets"], clients["counts"])
    per_client_masks = "mask_index" in clients or "masks" in clients
    masks = model.masks
    if "masks" in clients:
        flat_params = traverse_util.flatten_dict(model.params, sep="/")
        masks = unpack_rows(clients["masks"], {p: flat_params[p].shape for p in clients["masks"]})
    elif per_client_masks:
        masks = jax.tree.map(lambda m: m[clients["mask_index"]], masks)

    schedules = ClientSchedule(*examples, cohort.example_index, cohort.example_valid, cohort.step_valid)
    starts = ClientStart(model.params, model.batch_stats, masks, keys, clients["targets"])
    client_params, client_stats, client_masks, losses, reports = jax.vmap(
        functools.partial(local_train, spec, layout.phase_lengths),
        in_axes=(ClientSchedule(None, None, 0, 0, 0),
                 ClientStart(None, None, 0 if per_client_masks else None, 0, 0), None))(schedules, starts, shared)
    report_weights = clients["weights"] if spec.report is None or spec.report.by_samples \
        else (clients["weights"] > 0).astype(jnp.float32)
    sums = plan.aggregation.update(sums, Contributions(client_params, client_stats, client_masks, reports,
                                                       clients["weights"], report_weights))
    sums = constrain(plan.mesh, sums, split=False)
    # final masks leave the chunk bit-packed: the cohort's stay 8x smaller until they are joined; with
    # several processes they are gathered to every process, which all read them
    per_client = (pack_rows(client_masks) if spec.changes_masks else None, losses)
    return sums, constrain(plan.mesh, per_client, split=jax.process_count() == 1)


@functools.partial(jax.jit, static_argnums=0)
def _finalize(aggregation: Aggregation, sums):
    return aggregation.finalize(sums)


class CohortResult(NamedTuple):
    params: dict
    batch_stats: dict
    losses: jax.Array          # each participant's mean training loss
    reports: dict              # the participants' gradient reports, averaged ({} without)
    # the participants' final masks in cohort order, bit-packed (sparse.pack_rows): 8x smaller to
    # gather and keep (None: they cannot change)
    client_rows: dict | None

    def client_masks(self) -> dict | None:
        """The participants' final masks as booleans (None: they cannot change)."""
        if self.client_rows is None:
            return None
        flat = traverse_util.flatten_dict(self.params, sep="/")
        return unpacked(self.client_rows, {p: flat[p].shape for p in self.client_rows})


def train_cohort(plan: ChunkPlan, chunk: int, store: ClientStore, model: ServerModel, shared: RoundInputs,
                 clients: dict[str, np.ndarray]) -> CohortResult:
    """The whole cohort in chunks of `chunk` clients (`train_chunk`); `clients` are its per-client
    host arrays (as there, without weights: a client weighs its sample count)."""
    ids = clients["ids"]
    cohort = len(ids)
    padded = -(-cohort // chunk) * chunk
    slot = np.concatenate([np.arange(cohort), np.zeros(padded - cohort, np.int64)])  # padding copies client 0
    inputs = jax.tree.map(lambda value: np.asarray(value)[slot], clients)
    inputs["weights"] = np.where(np.arange(padded) < cohort, store.counts[ids][slot], 0).astype(np.float32)
    model = ServerModel(*place(plan.mesh, tuple(model), split=False))
    report = plan.spec.report
    reports = {} if report is None else report.finalize(report.init(model.params, tuple(model.masks)))
    sums = place(plan.mesh, plan.aggregation.init(model.params, model.batch_stats, model.masks, reports), split=False)
    outputs = []
    for start in range(0, padded, chunk):
        chunk_inputs = place(plan.mesh, jax.tree.map(lambda value: value[start:start + chunk], inputs), split=True)
        sums, per_client = train_chunk(plan, (store.x, store.y), model, shared, chunk_inputs, sums)
        outputs.append(per_client)
    client_rows, losses = jax.tree.map(lambda *parts: _in_cohort_order(parts, cohort), *outputs)
    params, batch_stats, reports = _finalize(plan.aggregation, sums)
    return CohortResult(params, batch_stats, losses, reports, client_rows)


def _in_cohort_order(parts, cohort: int):
    """A per-client output of every chunk, joined, without the padding (no copy for one exact chunk)."""
    joined = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return joined if joined.shape[0] == cohort else joined[:cohort]


class Participants(NamedTuple):
    """Who trains in a cohort call, and in which masks: the shared model.masks by default; with
    `mask_index`, participant k takes model.masks[mask_index[k]]; with `own_masks` (bit-packed
    rows, one per participant) its own. `budgets`: density targets as fractions of d (None: all at d)."""

    ids: np.ndarray
    budgets: np.ndarray | None = None
    mask_index: np.ndarray | None = None
    own_masks: dict | None = None


def train_clients(setup: Setup, spec: ClientSpec, participants: Participants, model: ServerModel,
                  shared: RoundInputs, epochs: int) -> tuple[CohortResult, dict[str, float]]:
    """One cohort's local training and aggregation, --clients_per_chunk clients per jitted call;
    client keys are fold_in(shared.round_key, client id).

    Returns the cohort's CohortResult, and the round's padding_efficiency (real client-steps over
    padded ones) and compiled_cohort_shapes (distinct cohort shapes this run has needed).
    """
    config, store, mesh, ids = setup.config, setup.data.store, setup.data.mesh, participants.ids
    layout = cohort_layout(store, ids, batch_size=config.local_bs, epochs=epochs, phases=MASK_UPDATE_PHASES)
    chunk = chunk_size(config.clients_per_chunk, len(ids), 1 if mesh is None else mesh.size)
    plan = ChunkPlan(spec, layout, setup.method.aggregation(setup), mesh)
    per_client = participants.mask_index is not None or participants.own_masks is not None
    setup.compiled.log_if_new((plan, chunk, per_client), lambda: _describe(plan, chunk, per_client))
    budgets = np.ones(len(ids)) if participants.budgets is None else participants.budgets
    clients = {"ids": ids, "offsets": store.offsets[ids], "counts": store.counts[ids],
               "targets": (budgets * config.density * setup.tensors.num_maskable).astype(np.float32)}
    if participants.mask_index is not None:
        clients["mask_index"] = participants.mask_index
    if participants.own_masks is not None:
        clients["masks"] = participants.own_masks
    result = train_cohort(plan, chunk, store, model, shared, clients)
    real_steps = epochs * int(steps_per_epoch(store.counts[ids], layout.batch_size).sum())
    padded_steps = -(-len(ids) // chunk) * chunk * sum(layout.phase_lengths)
    shapes = {"padding_efficiency": real_steps / padded_steps, "compiled_cohort_shapes": len(setup.compiled.seen)}
    return result, shapes


def _describe(plan: ChunkPlan, chunk: int, per_client_masks: bool) -> str:
    spec, layout = plan.spec, plan.layout
    masks = "fixed masks" if spec.mask_rule is None else spec.mask_rule.name
    return (f"{chunk} clients per call x {layout.epochs} epoch(s) x {layout.steps} steps x batch "
            f"{layout.batch_size}, phases {layout.phase_lengths}, {masks}"
            f"{', per-client masks' if per_client_masks else ''}"
            f"{', FMA' if plan.aggregation.per_entry else ''}")
