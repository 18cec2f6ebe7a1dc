"""The federated round loop: sample, train the cohort, aggregate, evaluate, log.

State that crosses rounds is one pytree (`state`): round, params, batch statistics, the server mask
and, for NST, every client's private mask. All randomness comes from keys derived from
(seed, stream, round, client), so results do not depend on how the cohort is computed.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax
from tqdm.auto import tqdm

from flash_jax.comm import VALUE_BITS, dense_model_bits, model_bits
from flash_jax.config import Config, ConfigError
from flash_jax.data.partition import partition
from flash_jax.data.sources import Dataset, load_dataset
from flash_jax.data.store import ClientStore, build_store, cohort_layout, steps_per_epoch
from flash_jax.fl.checkpoint import Checkpoints, saved_settings
from flash_jax.fl.client import ClientSpec, momentum_sgd
from flash_jax.fl.cohort import chunk_size, client_mesh, place, train_cohort
from flash_jax.fl.evaluate import evaluate
from flash_jax.fl.methods import METHODS, Method
from flash_jax.fl.stops import Interrupted, StopSignals, check_finite
from flash_jax.models import ModelDef, get_model, init_variables
from flash_jax.sparse import (apply_masks, client_layer_densities, client_mask_counts, layer_counts, level_masks,
                              magnitude_masks, mask_consensus, maskable_paths, next_mask, prune_union, random_masks,
                              sensitivity_densities)
from flash_jax.workdir import (WorkdirLock, append_jsonl, check_workdir, rewrite_metrics, set_old_metrics_aside,
                               write_json)
from flax import traverse_util

# Streams folded into the seed's key (and into client sampling), one per use.
INIT_STREAM, MASK_STREAM, ROUND_STREAM, SENSITIVITY_STREAM, REINIT_STREAM, STAGE2_MASK_STREAM, HETERO_STREAM = range(7)
AUGMENTED_DATASETS = ("cifar10", "cifar100", "tiny_imagenet")


def learning_rate_schedule(config: Config) -> Callable[[int], float]:
    """§4: exponential decay from lr_start; 'run' reaches lr_end at the last round, 'authors' keeps
    their hard-coded 1000-round horizon and their one-round delay (round 0 and 1 both use lr_start)."""
    rate = config.lr_end / config.lr_start
    if config.lr_schedule == "run":
        schedule = optax.exponential_decay(config.lr_start, max(config.fl_rounds - 1, 1), rate)
        return lambda r: float(schedule(r))
    schedule = optax.exponential_decay(config.lr_start, 1000, rate)
    return lambda r: float(schedule(max(r - 1, 0)))


def sample_clients(seed: int, stream: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """Cohort of a round: a pure function of (seed, stage stream, round), sampled without replacement."""
    return np.random.default_rng([seed, stream, round_index]).choice(num_clients, per_round, replace=False)


def feddst_readjust_ratio(config: Config, round_index: int) -> float:
    """FedDST's readjustment fraction: on rounds 1, 1+R_adj, 1+2R_adj, ... (its code's schedule), cosine-
    annealed from --feddst_readjust_ratio to 0 at half the rounds, after which masks stay fixed."""
    end = config.fl_rounds // 2
    if round_index >= end or (round_index - 1) % config.feddst_readjust_every != 0:
        return 0.0
    return config.feddst_readjust_ratio * (1.0 + math.cos(math.pi * round_index / end)) / 2.0


def _largest_remainder(shares: tuple[float, ...], total: int) -> np.ndarray:
    """Integer counts summing to `total` in proportion to `shares` (Hamilton's method)."""
    quotas = np.asarray(shares) * total
    counts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def client_budget_levels(config: Config) -> np.ndarray:
    """hetero-FLASH: each client's budget level (index into Config.density_levels), fixed for the run
    like a device's resource limit: exact shares of the N clients, assigned by a seeded permutation."""
    levels, shares = config.density_levels
    assigned = np.repeat(np.arange(len(levels)), _largest_remainder(shares, config.num_users))
    return np.random.default_rng([config.seed, HETERO_STREAM]).permutation(assigned)


def slot_budget_levels(config: Config) -> np.ndarray:
    """The authors' assignment: the i-th sampled participant gets the i-th entry of a K-long list,
    lowest budgets first (their [0.5]*3 + [0.75]*3 + [1]*4 for K=10)."""
    levels, shares = config.density_levels
    per_slot = np.repeat(np.arange(len(levels)), _largest_remainder(shares, config.clients_per_round))
    return per_slot[::-1].copy()


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything fixed for a run: data on the device, model, maskable tensors, local-training spec."""

    config: Config
    method: Method
    store: ClientStore
    test_x: jax.Array
    test_y: jax.Array
    test_partition: list
    model: ModelDef
    eval_apply: Callable  # same parameters; XLA's native conv is fastest for one un-vmapped model
    paths: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    sizes: dict[str, int]
    input_shape: tuple[int, ...]
    num_maskable: int
    dense_size: int  # entries sent dense in every transfer: unmasked params and BatchNorm statistics
    spec: ClientSpec
    lr: Callable[[int], float]
    levels: tuple[float, ...]  # budget levels as fractions of d, highest (the server mask) first
    layer_counts: dict[str, int]  # exact per-tensor counts at density d (FedDST keeps them)
    mesh: Mesh | None  # the client axis is sharded over it; None on one device
    cohort_shapes: set = dataclasses.field(default_factory=set)  # cohort shapes compiled so far


def build_setup(config: Config, dataset: Dataset) -> Setup:
    config.validate_against_data(len(dataset.train_y))
    method = METHODS[config.experiment_type]
    alpha = None if config.iid else config.alpha
    train_parts = partition(dataset.train_y, config.num_users, alpha, config.seed)
    test_parts = partition(dataset.test_y, config.num_users, alpha, config.seed + 1) \
        if config.num_users <= len(dataset.test_y) else []
    model = get_model(config.model_type, dataset.num_classes, config.conv_impl, config.mnistnet_softmax)
    config.validate_against_model(dataset.input_shape, model.min_input_size)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), dataset.input_shape))
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    try:
        paths = maskable_paths(variables["params"], config.mask_pattern or model.mask_pattern)
    except ValueError:
        raise ConfigError(f"--mask_pattern={config.mask_pattern!r} is invalid: it matches no tensor of "
                          f"{config.model_type} ({', '.join(sorted(flat))})") from None
    config.validate_against_tensors({p: math.prod(flat[p].shape) for p in paths}, method.sparse)
    num_maskable = sum(math.prod(flat[p].shape) for p in paths)
    optimizer = functools.partial(momentum_sgd, momentum=config.feddst_momentum,
                                  weight_decay=config.feddst_weight_decay) if method.readjust else optax.sgd
    spec = ClientSpec(apply_fn=model.module.apply, has_batch_stats=model.has_batch_stats,
                      sparse_learning=method.client_sparse_learning, prune_rate=config.prune_rate,
                      augment=config.dataset in AUGMENTED_DATASETS, make_optimizer=optimizer, growth=config.growth,
                      clip_grad_norm=config.clip_grad_norm)
    mesh = client_mesh()  # the store and test set are replicated on it once, not sent every round
    store = build_store(dataset.train_x, dataset.train_y, train_parts)
    store = store._replace(x=place(mesh, store.x, split=False), y=place(mesh, store.y, split=False))
    return Setup(config=config, method=method, store=store,
                 test_x=place(mesh, jnp.asarray(dataset.test_x), split=False),
                 test_y=place(mesh, jnp.asarray(dataset.test_y), split=False),
                 test_partition=test_parts, model=model,
                 eval_apply=get_model(config.model_type, dataset.num_classes, "xla",
                                      config.mnistnet_softmax).module.apply, paths=paths,
                 shapes={p: flat[p].shape for p in paths}, sizes={p: math.prod(flat[p].shape) for p in paths},
                 input_shape=dataset.input_shape,
                 num_maskable=num_maskable, spec=spec,
                 dense_size=sum(math.prod(v.shape) for v in jax.tree.leaves(variables)) - num_maskable,
                 lr=learning_rate_schedule(config), levels=config.density_levels[0],
                 layer_counts=layer_counts({p: flat[p].shape for p in paths}, config.density), mesh=mesh)


def init_state(setup: Setup) -> dict[str, Any]:
    config = setup.config
    base = jax.random.PRNGKey(config.seed)
    variables = init_variables(setup.model, jax.random.fold_in(base, INIT_STREAM), setup.input_shape)
    params = variables["params"]
    masks = {}
    if setup.method.readjust:  # FedDST: the seeded init, magnitude-pruned tensor by tensor
        masks = magnitude_masks(params, setup.paths, config.density, scope="layer")
    elif setup.method.sparse:
        masks = random_masks(jax.random.fold_in(base, MASK_STREAM), setup.shapes, config.density)
    params = apply_masks(params, masks)
    client_masks = {}
    if setup.method.per_client_masks:
        client_masks = jax.tree.map(lambda m: jnp.broadcast_to(m, (config.num_users,) + m.shape), masks)
    # Every server mask (one per budget level) has an id, renewed whenever it changes; a client that
    # holds its level's current id downloads no mask. Id 0, derived from the shared seed, is known
    # to everybody.
    state = {"round": 0, "params": params, "batch_stats": variables.get("batch_stats", {}),
             "server_mask": masks, "client_masks": client_masks, "mask_ids": np.arange(len(setup.levels)),
             "client_mask_id": np.zeros(config.num_users, np.int64), "cumulative_bits": 0,
             "dense_cumulative_bits": 0}
    if config.hetero_client:
        state["client_level"] = client_budget_levels(config)
        state["level_masks"] = _hetero_masks(setup, params, masks)
    return state


def _hetero_masks(setup: Setup, params, server_mask):
    flat = traverse_util.flatten_dict(params, sep="/")
    return _level_masks({p: flat[p] for p in setup.paths}, server_mask, setup.config.density, setup.levels)


_level_masks = jax.jit(level_masks, static_argnums=3)


def participant_levels(setup: Setup, state: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    """Budget level of each participant: its own (hetero 'client'), its slot's (hetero 'slot'; round 0
    all at d, as in the authors' code), or the only level."""
    config = setup.config
    if config.hetero_client and config.hetero_assign == "client":
        return state["client_level"][ids]
    if config.hetero_client and state["round"] > 0:
        return slot_budget_levels(config)
    return np.zeros(len(ids), np.int64)


def train_clients(setup: Setup, spec: ClientSpec, ids: np.ndarray, round_key, params, batch_stats, masks, *,
                  epochs: int, lr: float, mask_index: np.ndarray | None = None, readjust_ratio: float = 0.0,
                  budgets: np.ndarray | None = None):
    """One cohort's local training and aggregation, --clients_per_chunk clients per jitted call;
    client keys are fold_in(round_key, client id). `masks` is the shared mask, or with `mask_index` a
    stack from which participant k takes masks[mask_index[k]]. `budgets` are the participants'
    density targets as fractions of d (default: all at d).

    Returns the aggregated params and statistics, the participants' final masks (None when they
    cannot change), their training losses, and the round's padding_efficiency (real client-steps
    over padded ones) and compiled_cohort_shapes (distinct cohort shapes this run has needed).
    """
    config, store = setup.config, setup.store
    layout = cohort_layout(store, ids, batch_size=config.local_bs, epochs=epochs)
    chunk = chunk_size(config.clients_per_chunk, len(ids), 1 if setup.mesh is None else setup.mesh.size)
    fma = (config.update_mode == 1 and setup.method.sparse) or setup.method.readjust
    _note_cohort_shape(setup, spec, layout, chunk, mask_index is not None, fma)
    budgets = np.ones(len(ids)) if budgets is None else budgets
    clients = {"ids": ids, "offsets": store.offsets[ids], "counts": store.counts[ids],
               "targets": (budgets * config.density * setup.num_maskable).astype(np.float32)}
    if mask_index is not None:
        clients["mask_index"] = mask_index
    params, batch_stats, client_masks, losses = train_cohort(
        spec, layout, fma, chunk, setup.mesh, store, params, batch_stats, masks, lr, readjust_ratio, round_key, clients)
    real_steps = epochs * int(steps_per_epoch(store.counts[ids], layout.batch_size).sum())
    padded_steps = -(-len(ids) // chunk) * chunk * sum(layout.phase_lengths)
    shapes = {"padding_efficiency": real_steps / padded_steps, "compiled_cohort_shapes": len(setup.cohort_shapes)}
    return params, batch_stats, client_masks, losses, shapes


def _note_cohort_shape(setup: Setup, spec: ClientSpec, layout, chunk: int, per_client_masks: bool, fma: bool) -> None:
    """Remember the shape signature of a cohort call; a new one compiles, which gets one line on stderr."""
    signature = (spec, layout, chunk, per_client_masks, fma)
    if signature in setup.cohort_shapes:
        return
    setup.cohort_shapes.add(signature)
    if not setup.config.quiet:
        masks = "sparse learning" if spec.sparse_learning else "readjusting masks" if spec.readjust else "fixed masks"
        tqdm.write(f"new cohort shape #{len(setup.cohort_shapes)} (compiling): {chunk} clients per call x "
                   f"{layout.epochs} epoch(s) x {layout.steps} steps x batch {layout.batch_size}, phases "
                   f"{layout.phase_lengths}, {masks}{', per-client masks' if per_client_masks else ''}"
                   f"{', FMA' if fma else ''}", file=sys.stderr)


def sensitivity_stage(setup: Setup, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """FLASH stage 1: K_d clients run sparse learning for init_epoch epochs from the shared init and
    mask; only their per-layer densities reach the server, which rescales them to d, draws the
    stage-2 mask with those layer densities and re-initialises the model."""
    config = setup.config
    base = jax.random.PRNGKey(config.seed)
    ids = sample_clients(config.seed, SENSITIVITY_STREAM, 0, config.num_users, config.stage1_clients)
    _, _, client_masks, _, _ = train_clients(
        setup, dataclasses.replace(setup.spec, sparse_learning=True), ids, jax.random.fold_in(base, SENSITIVITY_STREAM),
        state["params"], state["batch_stats"], state["server_mask"],
        epochs=config.init_epoch, lr=config.lr_start)
    reported = client_layer_densities(client_masks)
    sizes = setup.sizes
    densities = sensitivity_densities(reported, sizes, config.density)
    masks = random_masks(jax.random.fold_in(base, STAGE2_MASK_STREAM), setup.shapes, densities)
    variables = init_variables(setup.model, jax.random.fold_in(base, REINIT_STREAM), setup.input_shape)
    # K_d downloads of the seeded initial model, one scalar per layer per client up; the stage-2
    # mask is again drawn from the shared seed (plus the broadcast layer densities)
    download = model_bits(server_nnz(state["params"], setup.paths), sizes, setup.dense_size, mask_known=True)
    stage_bits = len(ids) * (download + VALUE_BITS * len(sizes))
    new_state = dict(state, params=apply_masks(variables["params"], masks),
                     batch_stats=variables.get("batch_stats", {}), server_mask=masks,
                     cumulative_bits=state["cumulative_bits"] + stage_bits)
    if config.hetero_client:
        new_state["level_masks"] = _hetero_masks(setup, new_state["params"], masks)
    return new_state, {"clients": ids.tolist(), "reported_layer_density": reported, "layer_density": densities}


def run_round(setup: Setup, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    config, method = setup.config, setup.method
    r = state["round"]
    ids = sample_clients(config.seed, ROUND_STREAM, r, config.num_users, config.clients_per_round)
    round_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), ROUND_STREAM), r)
    levels = participant_levels(setup, state, ids)
    budgets = np.asarray(setup.levels)[levels]
    masks, mask_index = state["server_mask"], None
    if method.per_client_masks:
        masks, mask_index = state["client_masks"], ids
    elif config.hetero_client:  # each participant trains with the mask of its budget level
        masks, mask_index = state["level_masks"], levels
    update_mask = method.next_mask and r % config.jmwst_update_interval == 0
    readjust_ratio = feddst_readjust_ratio(config, r) if method.readjust else 0.0
    spec = setup.spec
    if method.next_mask and not update_mask:  # JMWST between server-mask updates: the mask stays fixed
        spec = dataclasses.replace(spec, sparse_learning=False)
    if readjust_ratio > 0.0:
        spec = dataclasses.replace(spec, readjust=True)
    params, batch_stats, client_masks, losses, shapes = train_clients(
        setup, spec, ids, round_key, state["params"], state["batch_stats"], masks, mask_index=mask_index,
        epochs=config.local_epoch, lr=setup.lr(r), readjust_ratio=readjust_ratio, budgets=budgets)
    new_state = dict(state, round=r + 1, params=params, batch_stats=batch_stats)
    flat = traverse_util.flatten_dict(params, sep="/")
    maskable = {p: flat[p] for p in setup.paths}
    server_mask = None
    if update_mask:
        server_mask = _next_mask(client_masks, maskable, config.density, config.subsample_method,
                                 jnp.asarray(budgets, jnp.float32), state["server_mask"])
    elif spec.readjust:  # FedDST: union of the readjusted masks, pruned back to the per-tensor counts
        server_mask = _prune_union(maskable, client_masks, setup.layer_counts)
    if server_mask is not None:
        new_state.update(server_mask=server_mask, params=apply_masks(params, server_mask))
    info = {"train_loss": float(jnp.mean(losses)), "lr": setup.lr(r), **shapes}
    if method.readjust:
        info["readjust_ratio"] = readjust_ratio
    if method.per_client_masks:
        new_state["client_masks"] = jax.tree.map(lambda all_, new: all_.at[ids].set(new),
                                                 state["client_masks"], client_masks)
        # without a shared mask, the server's mask is the support of the averaged model (the union)
        new_state["server_mask"] = {p: w != 0 for p, w in maskable.items()}
    if config.hetero_client:
        new_state["level_masks"] = _hetero_masks(setup, new_state["params"], new_state["server_mask"])
        level_counts = jax.device_get(client_mask_counts(new_state["level_masks"]))  # the level axis leads
        info["hetero_level_density"] = [float(c) / setup.num_maskable for c in sum(level_counts.values())]
    # the participants' masks after training: a stack of distinct masks and each participant's row in it
    clients_changed_masks = client_masks is not None
    if clients_changed_masks:
        held, row = client_masks, np.arange(len(ids))
    elif mask_index is not None:  # every participant kept the mask it was given
        held, row = masks, mask_index
    else:
        held, row = jax.tree.map(lambda m: m[None], masks), np.zeros(len(ids), np.int64)
    if method.sparse:
        multiplicity = np.bincount(row, minlength=next(iter(held.values())).shape[0])
        info.update(mask_consensus(held, new_state["server_mask"], state["server_mask"], multiplicity))
    info.update(_account_communication(setup, state, new_state, ids, levels, held, row, clients_changed_masks))
    return new_state, info


_next_mask = jax.jit(next_mask, static_argnums=3)
_prune_union = jax.jit(prune_union)


@jax.jit
def _level_changes(old, new) -> jax.Array:
    """Which levels' masks differ between two stacked mask sets."""
    return sum(jnp.any((old[p] != new[p]).reshape(old[p].shape[0], -1), axis=1) for p in old) > 0


@jax.jit
def _level_nnz(maskable, stacked_masks) -> dict[str, jax.Array]:
    """Per level and tensor: non-zero server weights inside that level's mask (what it downloads)."""
    return {p: jnp.sum(((maskable[p] != 0) & m).reshape(m.shape[0], -1), axis=1, dtype=jnp.int32)
            for p, m in stacked_masks.items()}


def _stacked_levels(state: dict[str, Any]):
    if "level_masks" in state:
        return state["level_masks"]
    return jax.tree.map(lambda m: m[None], state["server_mask"])


def _account_communication(setup: Setup, state, new_state, ids, levels, upload_masks, row,
                           clients_changed_masks: bool) -> dict[str, float]:
    """Bits of this round (§5), updating the cumulative totals and which mask each client holds;
    participant k uploads within the mask upload_masks[row[k]]."""
    sizes = setup.sizes
    dense = dense_model_bits(setup.dense_size + setup.num_maskable)
    if not setup.method.sparse:
        down = up = dense * len(ids)
    else:
        flat = traverse_util.flatten_dict(state["params"], sep="/")
        level_nnz = jax.device_get(_level_nnz({p: flat[p] for p in setup.paths}, _stacked_levels(state)))
        held = state["client_mask_id"][ids] == state["mask_ids"][levels]
        down = sum(model_bits({p: level_nnz[p][lv] for p in sizes}, sizes, setup.dense_size, mask_known=bool(h))
                   for lv, h in zip(levels, held))
        up_nnz = jax.device_get(client_mask_counts(upload_masks))
        up = sum(model_bits({p: up_nnz[p][k] for p in sizes}, sizes, setup.dense_size,
                            mask_known=not clients_changed_masks) for k in row)
        holders = state["client_mask_id"].copy()
        holders[ids] = state["mask_ids"][levels]
        changed = np.asarray(jax.device_get(_level_changes(_stacked_levels(state), _stacked_levels(new_state))))
        mask_ids = state["mask_ids"].copy()
        mask_ids[changed] = mask_ids.max() + 1 + np.arange(changed.sum())
        new_state.update(client_mask_id=holders, mask_ids=mask_ids)
    new_state["cumulative_bits"] = state["cumulative_bits"] + up + down
    new_state["dense_cumulative_bits"] = state["dense_cumulative_bits"] + 2 * dense * len(ids)
    return {"upload_bits": up, "download_bits": down, "cumulative_bits": new_state["cumulative_bits"],
            "comm_ratio_vs_dense": new_state["cumulative_bits"] / new_state["dense_cumulative_bits"]}


def server_nnz(params, paths) -> dict[str, int]:
    flat = traverse_util.flatten_dict(params, sep="/")
    return {p: int(c) for p, c in jax.device_get(_nonzero_counts({p: flat[p] for p in paths})).items()}


@jax.jit
def _nonzero_counts(tensors: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {p: jnp.count_nonzero(t) for p, t in tensors.items()}


def model_density(params, sizes: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Overall and per-tensor non-zero fraction of the maskable tensors, from exact integer counts."""
    counts = server_nnz(params, tuple(sizes))
    return sum(counts.values()) / sum(sizes.values()), {p: counts[p] / sizes[p] for p in sizes}


def evaluate_state(setup: Setup, state: dict[str, Any]) -> dict[str, Any]:
    """Headline metrics of the global model at its true density (ALGORITHMS.md §5)."""
    def scores(params):
        variables = {"params": params, "batch_stats": state["batch_stats"]} if setup.model.has_batch_stats \
            else {"params": params}
        return evaluate(setup.eval_apply, variables, setup.test_x, setup.test_y, setup.test_partition)

    params = state["params"]
    metrics = scores(params)
    metrics["density"], metrics["layer_density"] = model_density(params, setup.sizes)
    if setup.method.report_pruned:
        pruned = apply_masks(params, magnitude_masks(params, setup.paths, setup.config.density, scope="global"))
        pruned_scores = scores(pruned)
        metrics["accuracy_pruned"] = pruned_scores["accuracy"]
        metrics["loss_pruned"] = pruned_scores["loss"]
        metrics["density_pruned"] = model_density(pruned, setup.sizes)[0]
    return metrics


def prepare_workdir(workdir: str, config: Config, setup: Setup) -> str:
    """(Re)write config.json, with what the settings resolved to; returns the metrics.jsonl path."""
    resolved = {"clients_per_round": config.clients_per_round, "maskable_tensors": list(setup.paths),
                "num_maskable": setup.num_maskable, "num_classes": int(setup.model.module.num_classes),
                "mask_pattern": config.mask_pattern or setup.model.mask_pattern,
                "jax_backend": jax.default_backend(), "jax_version": jax.__version__}
    write_json(os.path.join(workdir, "config.json"), {**config.to_dict(), "resolved": resolved})
    return os.path.join(workdir, "metrics.jsonl")


def run(config: Config, dataset: Dataset | None = None) -> list[dict[str, Any]]:
    """Train a federation end to end; returns the metric records (also written to the workdir).

    Every check that needs the data or the model runs before the workdir is touched. With a workdir
    (locked for the run) the state is checkpointed every --checkpoint_every rounds (and after stage
    1 and the last round); running again on the same workdir continues from the newest checkpoint,
    and the metric lines after it are recomputed, so a killed run loses nothing and duplicates
    nothing. Raises DivergenceError or Interrupted (fl.stops) when the run stops early.
    """
    config.validate()
    with StopSignals() as stops:
        dataset = dataset or load_dataset(config.dataset, config.path, config.data_dir)
        setup = build_setup(config, dataset)
        state = init_state(setup)
        if not config.workdir:
            return _train(setup, state, [], None, None, stops, resumed=False)
        with WorkdirLock(config.workdir):
            try:
                check_workdir(config.workdir, config, saved_settings(config.workdir))
                metrics_path = prepare_workdir(config.workdir, config, setup)
                checkpoints = Checkpoints(config.workdir)
                restored = checkpoints.restore_latest(state)
                history = []
                if restored:
                    state, history = restored
                    print(f"resuming {config.workdir} from its checkpoint of round {state['round']}", file=sys.stderr)
                else:
                    set_old_metrics_aside(metrics_path)
                rewrite_metrics(metrics_path, history)
            except OSError as err:
                raise ConfigError(f"--workdir {config.workdir} is not writable: {err.strerror or err}") from err
            return _train(setup, state, history, checkpoints, metrics_path, stops, resumed=bool(restored))


def _train(setup: Setup, state: dict[str, Any], history: list[dict[str, Any]], checkpoints: Checkpoints | None,
           metrics_path: str | None, stops: StopSignals, resumed: bool) -> list[dict[str, Any]]:
    """Stage 1 (unless resumed: the state is past it) and the rounds from state["round"] on."""
    config, start, saved_round = setup.config, time.perf_counter(), state["round"] if resumed else None
    if not resumed:
        if setup.method.sensitivity_stage:  # one jitted call: the bar shows that it runs and for how long
            with tqdm(total=1, desc=f"stage 1 ({config.stage1_clients} clients x {config.init_epoch} epochs)",
                      disable=config.quiet, dynamic_ncols=True) as stage_bar:
                state, sensitivity = sensitivity_stage(setup, state)
                stage_bar.update(1)
            if config.workdir:
                write_json(os.path.join(config.workdir, "sensitivity.json"), sensitivity)
        if checkpoints:
            checkpoints.save(state, history, config)
            saved_round = state["round"]
    bar = tqdm(range(state["round"], config.fl_rounds), desc=f"{config.experiment_type} rounds",
               initial=state["round"], total=config.fl_rounds, disable=config.quiet, dynamic_ncols=True)
    train_s, rounds_since_eval = 0.0, 0
    for r in bar:
        if stops.signum is not None:
            break
        tic = time.perf_counter()
        new_state, info = run_round(setup, state)  # returns after the device work (it reads the losses)
        check_finite(config.experiment_type, r + 1, info["train_loss"], new_state["params"])
        state = new_state
        train_s += time.perf_counter() - tic
        rounds_since_eval += 1
        if (r + 1) % config.eval_every == 0 or r + 1 == config.fl_rounds:
            record = {"round": r + 1, **evaluate_state(setup, state), **info,
                      "round_s": round(train_s / rounds_since_eval, 4),
                      "wall_s": round(time.perf_counter() - start, 3)}
            train_s, rounds_since_eval = 0.0, 0
            history.append(record)
            if metrics_path:
                append_jsonl(metrics_path, record)
            bar.set_postfix(acc=f"{record['accuracy']:.4f}", density=f"{record['density']:.4f}")
        if checkpoints and ((r + 1) % config.checkpoint_every == 0 or r + 1 == config.fl_rounds):
            checkpoints.save(state, history, config)
            saved_round = state["round"]
    bar.close()
    if stops.signum is not None:
        if checkpoints and saved_round != state["round"]:
            checkpoints.save(state, history, config)
        raise Interrupted(state["round"], stops.signum, saved=checkpoints is not None)
    return history
