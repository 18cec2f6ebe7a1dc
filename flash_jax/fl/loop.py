"""The federated round loop: sample, train the cohort, aggregate, evaluate, log.

State that crosses rounds is one pytree (`state`): round, params, batch statistics, the server mask
and, for NST, every client's private mask. All randomness comes from keys derived from
(seed, stream, round, client), so results do not depend on how the cohort is computed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from flash_jax.config import Config, ConfigError
from flash_jax.data.partition import partition
from flash_jax.data.sources import Dataset, load_dataset
from flash_jax.data.store import ClientStore, build_store, cohort_plan
from flash_jax.fl.client import SHUFFLE_STREAM, ClientSpec, client_key
from flash_jax.fl.cohort import train_cohort
from flash_jax.fl.evaluate import evaluate
from flash_jax.fl.methods import METHODS, Method
from flash_jax.models import ModelDef, get_model, init_variables
from flash_jax.sparse import apply_masks, magnitude_masks, maskable_paths, random_masks
from flax import traverse_util

# Key streams folded into the seed's key.
INIT_STREAM, MASK_STREAM, ROUND_STREAM = 0, 1, 2
AUGMENTED_DATASETS = ("cifar10", "cifar100")


def learning_rate_schedule(config: Config) -> Callable[[int], float]:
    """§4: exponential decay from lr_start; 'run' reaches lr_end at the last round, 'authors' keeps
    their hard-coded 1000-round horizon and their one-round delay (round 0 and 1 both use lr_start)."""
    rate = config.lr_end / config.lr_start
    if config.lr_schedule == "run":
        schedule = optax.exponential_decay(config.lr_start, max(config.fl_rounds - 1, 1), rate)
        return lambda r: float(schedule(r))
    schedule = optax.exponential_decay(config.lr_start, 1000, rate)
    return lambda r: float(schedule(max(r - 1, 0)))


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> np.ndarray:
    """Cohort of a round: a pure function of (seed, round), sampled without replacement."""
    return np.random.default_rng([seed, round_index]).choice(num_clients, per_round, replace=False)


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
    num_maskable: int
    spec: ClientSpec
    lr: Callable[[int], float]


def build_setup(config: Config, dataset: Dataset) -> Setup:
    config.validate_against_data(len(dataset.train_y))
    method = METHODS[config.experiment_type]
    alpha = None if config.iid else config.alpha
    train_parts = partition(dataset.train_y, config.num_users, alpha, config.seed)
    test_parts = partition(dataset.test_y, config.num_users, alpha, config.seed + 1) \
        if config.num_users <= len(dataset.test_y) else []
    model = get_model(config.model_type, dataset.num_classes, config.conv_impl)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), dataset.input_shape))
    paths = maskable_paths(variables["params"], config.mask_pattern or model.mask_pattern)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    spec = ClientSpec(apply_fn=model.module.apply, has_batch_stats=model.has_batch_stats,
                      sparse_learning=method.client_sparse_learning, prune_rate=config.prune_rate,
                      augment=config.dataset in AUGMENTED_DATASETS)
    return Setup(config=config, method=method, store=build_store(dataset.train_x, dataset.train_y, train_parts),
                 test_x=jnp.asarray(dataset.test_x), test_y=jnp.asarray(dataset.test_y),
                 test_partition=test_parts, model=model,
                 eval_apply=get_model(config.model_type, dataset.num_classes, "xla").module.apply, paths=paths,
                 num_maskable=sum(math.prod(flat[p].shape) for p in paths), spec=spec,
                 lr=learning_rate_schedule(config))


def init_state(setup: Setup) -> dict[str, Any]:
    config = setup.config
    base = jax.random.PRNGKey(config.seed)
    variables = init_variables(setup.model, jax.random.fold_in(base, INIT_STREAM),
                               tuple(setup.store.x.shape[1:]))
    params = variables["params"]
    masks = {}
    if setup.method.sparse:
        masks = random_masks(jax.random.fold_in(base, MASK_STREAM),
                             {p: a for p, a in traverse_util.flatten_dict(params, sep="/").items()
                              if p in setup.paths}, config.density)
        params = apply_masks(params, masks)
    client_masks = {}
    if setup.method.per_client_masks:
        client_masks = jax.tree.map(lambda m: jnp.broadcast_to(m, (config.num_users,) + m.shape), masks)
    return {"round": 0, "params": params, "batch_stats": variables.get("batch_stats", {}),
            "server_mask": masks, "client_masks": client_masks}


def run_round(setup: Setup, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    config, method = setup.config, setup.method
    r = state["round"]
    ids = sample_clients(config.seed, r, config.num_users, config.clients_per_round)
    round_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), ROUND_STREAM), r)
    keys = jax.vmap(lambda c: client_key(round_key, c))(jnp.asarray(ids))
    shuffle_keys = jax.vmap(lambda k: jax.random.fold_in(k, SHUFFLE_STREAM))(keys)
    plan = cohort_plan(shuffle_keys, ids, setup.store, batch_size=config.local_bs, epochs=config.local_epoch)
    masks = state["server_mask"]
    if method.per_client_masks:
        masks = jax.tree.map(lambda m: m[ids], state["client_masks"])
    targets = jnp.full((len(ids),), config.density * setup.num_maskable, jnp.float32)
    weights = jnp.asarray(setup.store.counts[ids], jnp.float32)
    params, batch_stats, client_masks, losses = train_cohort(
        setup.spec, plan.phase_lengths, method.per_client_masks, setup.store.x, setup.store.y,
        state["params"], state["batch_stats"], masks, setup.lr(r), keys, plan.example_index,
        plan.example_valid, plan.step_valid, targets, weights)
    new_state = dict(state, round=r + 1, params=params, batch_stats=batch_stats)
    if method.per_client_masks:
        new_state["client_masks"] = jax.tree.map(lambda all_, new: all_.at[ids].set(new),
                                                 state["client_masks"], client_masks)
    return new_state, {"train_loss": float(jnp.mean(losses)), "lr": setup.lr(r)}


@jax.jit
def _nonzero_counts(tensors: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {p: jnp.count_nonzero(t) for p, t in tensors.items()}


def model_density(params, paths) -> tuple[float, dict[str, float]]:
    """Overall and per-tensor non-zero fraction of the maskable tensors, from exact integer counts."""
    flat = traverse_util.flatten_dict(params, sep="/")
    counts = jax.device_get(_nonzero_counts({p: flat[p] for p in paths}))
    sizes = {p: flat[p].size for p in paths}
    return sum(int(c) for c in counts.values()) / sum(sizes.values()), {p: int(counts[p]) / sizes[p] for p in paths}


def evaluate_state(setup: Setup, state: dict[str, Any]) -> dict[str, Any]:
    """Headline metrics of the global model at its true density (ALGORITHMS.md §5)."""
    def scores(params):
        variables = {"params": params, "batch_stats": state["batch_stats"]} if setup.model.has_batch_stats \
            else {"params": params}
        return evaluate(setup.eval_apply, variables, setup.test_x, setup.test_y, setup.test_partition)

    params = state["params"]
    metrics = scores(params)
    metrics["density"], metrics["layer_density"] = model_density(params, setup.paths)
    if setup.method.report_pruned:
        metrics["union_density"] = metrics["density"]
        pruned = apply_masks(params, magnitude_masks(params, setup.paths, setup.config.density, scope="global"))
        pruned_scores = scores(pruned)
        metrics["accuracy_pruned"] = pruned_scores["accuracy"]
        metrics["loss_pruned"] = pruned_scores["loss"]
        metrics["density_pruned"] = model_density(pruned, setup.paths)[0]
    return metrics


def prepare_workdir(workdir: str, config: Config, setup: Setup) -> str:
    """Create the workdir and write config.json; refuses a workdir that already holds a run."""
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0:
        raise ConfigError(f"--workdir {workdir} already holds a run (metrics.jsonl); choose another workdir")
    try:
        os.makedirs(workdir, exist_ok=True)
        _write_config(workdir, config, setup)
    except OSError as err:
        raise ConfigError(f"--workdir {workdir} is not writable: {err.strerror or err}") from err
    return metrics_path


def _write_config(workdir: str, config: Config, setup: Setup) -> None:
    resolved = {"clients_per_round": config.clients_per_round, "maskable_tensors": list(setup.paths),
                "num_maskable": setup.num_maskable, "num_classes": int(setup.model.module.num_classes),
                "mask_pattern": config.mask_pattern or setup.model.mask_pattern,
                "jax_backend": jax.default_backend(), "jax_version": jax.__version__}
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump({**config.to_dict(), "resolved": resolved}, f, indent=2)
    os.replace(tmp, os.path.join(workdir, "config.json"))


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(config: Config, dataset: Dataset | None = None) -> list[dict[str, Any]]:
    """Train a federation end to end; returns the metric records (also written to the workdir)."""
    config.validate()
    dataset = dataset or load_dataset(config.dataset, config.path, config.data_dir)
    setup = build_setup(config, dataset)
    metrics_path = prepare_workdir(config.workdir, config, setup) if config.workdir else None
    state = init_state(setup)
    history = []
    start = time.perf_counter()
    bar = tqdm(range(config.fl_rounds), desc=f"{config.experiment_type} rounds", disable=config.quiet,
               dynamic_ncols=True)
    for r in bar:
        state, info = run_round(setup, state)
        if (r + 1) % config.eval_every == 0 or r + 1 == config.fl_rounds:
            record = {"round": r + 1, **evaluate_state(setup, state), **info,
                      "wall_s": round(time.perf_counter() - start, 3)}
            history.append(record)
            if metrics_path:
                append_jsonl(metrics_path, record)
            bar.set_postfix(acc=f"{record['accuracy']:.4f}", density=f"{record['density']:.4f}")
    return history
