"""Everything fixed for a run, built once from the Config and the data: the federation's data on the
device, the model, its maskable tensors, the method and local training's static description.

The Setup is the first argument of every rule of a method (fl/rules.py, fl/methods.py)."""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import Mesh
from tqdm.auto import tqdm

from flash_jax import hosts
from flash_jax.config import Config, ConfigError
from flash_jax.data.partition import partition
from flash_jax.data.sources import Dataset
from flash_jax.data.store import ClientStore, build_store
from flash_jax.fl.client import ClientSpec
from flash_jax.fl.mesh import client_mesh, place
from flash_jax.fl.methods import Method, get_method
from flash_jax.fl.rules import Reparameterization
from flash_jax.models import ModelDef, get_model, init_variables, resolve_conv_impl, with_fast_flax_convs
from flash_jax.settings import validate_against_data, validate_against_model, validate_against_tensors
from flash_jax.sparse import maskable_paths

AUGMENTED_DATASETS = ("cifar10", "cifar100", "tiny_imagenet")


def learning_rate_schedule(config: Config) -> Callable[[int], float]:
    """The learning-rate schedule: exponential decay from lr_start; 'run' reaches lr_end at the last round, 'authors' keeps
    their hard-coded 1000-round horizon and their one-round delay (round 0 and 1 both use lr_start)."""
    rate = config.lr_end / config.lr_start
    if config.lr_schedule == "run":
        schedule = optax.exponential_decay(config.lr_start, max(config.fl_rounds - 1, 1), rate)
        return lambda r: float(schedule(r))
    schedule = optax.exponential_decay(config.lr_start, 1000, rate)
    return lambda r: float(schedule(max(r - 1, 0)))


@dataclasses.dataclass(frozen=True)
class Federation:
    """The clients' data packed on the device, and the test set (replicated on the mesh once, not
    sent every round)."""

    store: ClientStore
    test_x: jax.Array
    test_y: jax.Array
    test_partition: list  # each client's test examples (empty when clients outnumber them)
    input_shape: tuple[int, ...]
    mesh: Mesh | None  # the client axis is sharded over it; None on one device


@dataclasses.dataclass(frozen=True)
class MaskableTensors:
    paths: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    sizes: dict[str, int]
    num_maskable: int
    dense_size: int  # entries sent dense in every transfer: unmasked params and BatchNorm statistics


class CompileLog:
    """The cohort shapes a run has compiled so far; a new one gets a line on stderr."""

    def __init__(self, quiet: bool):
        self.seen, self.quiet = set(), quiet

    def log_if_new(self, signature, describe: Callable[[], str]) -> None:
        if signature not in self.seen:
            self.seen.add(signature)
            if not self.quiet:
                tqdm.write(f"new cohort shape #{len(self.seen)} (compiling): {describe()}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every rule of a method gets first: the run's settings (`config`: every field and knob),
    the `method`, the federation's `data` (client store, test set, mesh), the `model` and its
    `tensors` (maskable paths, shapes, sizes), the learning-rate schedule `lr` (of the 0-based count
    of rounds done), the hetero `level_budgets`, and, derived from the method's rules, local
    training's `spec` and the `reparameterization`."""

    config: Config
    method: Method
    data: Federation
    model: ModelDef
    eval_apply: Callable  # same parameters; XLA's native conv is fastest for one un-vmapped model
    tensors: MaskableTensors
    lr: Callable[[int], float]
    level_budgets: tuple[float, ...]  # each budget level's density as a fraction of d, highest (the server mask) first
    compiled: CompileLog

    @functools.cached_property
    def reparameterization(self) -> Reparameterization | None:
        return self.method.reparameterization(self)

    @functools.cached_property
    def spec(self) -> ClientSpec:
        """Local training's static description, from the settings and the method's client rule."""
        config, client, model = self.config, self.method.client, self.model
        # a model built from flax's own Conv computes it in the run's fast formulation too
        apply_fn = with_fast_flax_convs(model.module.apply, resolve_conv_impl(config.conv_impl))
        return ClientSpec(apply_fn=apply_fn, has_batch_stats=model.has_batch_stats,
                          augment=config.dataset in AUGMENTED_DATASETS, make_optimizer=client.optimizer(self),
                          clip_grad_norm=config.clip_grad_norm, finish=client.finish(self),
                          effective=self.reparameterization.effective if self.reparameterization else None,
                          step_transform=client.step_transform(self))


def _maskable_tensors(config: Config, model: ModelDef, input_shape, sparse: bool) -> MaskableTensors:
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), input_shape))
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    try:
        paths = maskable_paths(variables["params"], config.mask_pattern or model.mask_pattern)
    except ValueError:
        tensors = ", ".join(sorted(flat))
        if config.mask_pattern is None:
            raise ConfigError(f"--model_type {config.model_type}: its mask pattern {model.mask_pattern!r} matches "
                              f"no tensor ({tensors}); register it with a pattern that does, or pass --mask_pattern"
                              ) from None
        raise ConfigError(f"--mask_pattern={config.mask_pattern!r} is invalid: it matches no tensor of "
                          f"{config.model_type} ({tensors})") from None
    sizes = {p: math.prod(flat[p].shape) for p in paths}
    validate_against_tensors(config, sizes, sparse)
    num_maskable = sum(sizes.values())
    return MaskableTensors(paths=paths, shapes={p: flat[p].shape for p in paths}, sizes=sizes,
                           num_maskable=num_maskable,
                           dense_size=sum(math.prod(v.shape) for v in jax.tree.leaves(variables)) - num_maskable)


def build_setup(config: Config, dataset: Dataset) -> Setup:
    validate_against_data(config, len(dataset.train_y))
    method = get_method(config.experiment_type)
    alpha = None if config.iid else config.alpha
    train_parts = partition(dataset.train_y, config.num_users, alpha, config.seed)
    test_parts = partition(dataset.test_y, config.num_users, alpha, config.seed + 1) \
        if config.num_users <= len(dataset.test_y) else []
    try:
        model = get_model(config.model_type, dataset.num_classes, config.conv_impl, config.mnistnet_softmax)
    except ValueError as err:
        raise ConfigError(f"--model_type {config.model_type}: {err}") from None
    validate_against_model(config, dataset.input_shape, model.min_input_size)
    tensors = _maskable_tensors(config, model, dataset.input_shape, method.sparse)
    mesh = client_mesh()
    store = build_store(dataset.train_x, dataset.train_y, train_parts)
    store = store._replace(x=place(mesh, store.x, split=False), y=place(mesh, store.y, split=False))
    data = Federation(store=store, test_x=place(mesh, jnp.asarray(dataset.test_x), split=False),
                      test_y=place(mesh, jnp.asarray(dataset.test_y), split=False), test_partition=test_parts,
                      input_shape=dataset.input_shape, mesh=mesh)
    eval_model = get_model(config.model_type, dataset.num_classes, "xla", config.mnistnet_softmax)
    return Setup(config=config, method=method, data=data, model=model, eval_apply=eval_model.module.apply,
                 tensors=tensors, lr=learning_rate_schedule(config), level_budgets=config.density_levels[0],
                 compiled=CompileLog(config.quiet or not hosts.is_writer()))
