"""Which settings are valid: the choices of the settings that name something, the ranges of Config's
fields and of the registered methods' knobs, and the checks that need the data or the model. A run
checks its Config once (`validate`), before anything starts; each failure is a ConfigError naming the
flag and its valid range."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from flash_jax.config import GROWTH_METHODS, HETERO_ASSIGNMENTS, LR_SCHEDULES, Config, ConfigError, float_list
from flash_jax.data.sources import DATASETS
from flash_jax.fl.methods import knobs, methods
from flash_jax.fl.rules import by_update_mode
from flash_jax.models import CONV_IMPLS, model_names


def choices() -> dict[str, tuple]:
    """The valid values of the settings that name something, from the code and registries that
    define them (the validation and --help both read this)."""
    return {"experiment_type": tuple(methods()), "dataset": DATASETS, "model_type": model_names(),
            "lr_schedule": LR_SCHEDULES, "update_mode": (0, 1), "growth": GROWTH_METHODS,
            "hetero_assign": HETERO_ASSIGNMENTS, "conv_impl": ("auto",) + CONV_IMPLS}


def _field_ranges(config: Config) -> list[tuple[bool, str, str]]:
    """(within range, flag, the range) of every numeric field."""
    c = config
    return [
        (0.0 < c.density <= 1.0, "--density", "in (0, 1]"),
        (c.alpha > 0.0, "--alpha", "> 0"),
        (c.num_users >= 1, "--num_users", ">= 1"),
        (0.0 < c.frac <= 1.0, "--frac", "in (0, 1] (it selects max(floor(frac*num_users), 1) clients)"),
        (0.0 < c.init_frac <= 1.0, "--init_frac", "in (0, 1]"),
        (c.init_epoch >= 1, "--init_epoch", ">= 1"),
        (c.local_epoch >= 1, "--local_epoch", ">= 1"),
        (c.local_bs >= 1, "--local_bs", ">= 1"),
        (c.lr_start > 0.0, "--lr_start", "> 0"),
        (c.lr_end > 0.0, "--lr_end", "> 0"),
        (c.clip_grad_norm >= 0.0, "--clip_grad_norm", ">= 0 (0: no clipping)"),
        (c.fl_rounds >= 1, "--fl_rounds", ">= 1"),
        (c.max_train_loss > 0.0, "--max_train_loss", "> 0"),
        (0.0 <= c.prune_rate < 1.0, "--prune_rate", "in [0, 1)"),
        (c.eval_every >= 1, "--eval_every", ">= 1"),
        (c.checkpoint_every >= 1, "--checkpoint_every", ">= 1"),
        (c.clients_per_chunk >= 0, "--clients_per_chunk", ">= 0 (0: the whole cohort in one call)"),
        (c.host_devices >= 0, "--host_devices", ">= 0 (0: one per core)"),
        (c.num_processes >= 0, "--num_processes", ">= 0 (0: detected)"),
        (c.coordinator_timeout >= 1, "--coordinator_timeout", ">= 1 (seconds)"),
        (c.coordinator_address == "" or _is_host_port(c.coordinator_address), "--coordinator_address",
         "HOST:PORT, e.g. 10.0.0.1:1234, with a port from 1 to 65535"),
        (-1 <= c.process_id < (c.num_processes or 2**31), "--process_id",
         f"in [0, {c.num_processes}) (or -1: detected)" if c.num_processes else ">= 0 (or -1: detected)"),
        (0 <= c.seed < 2**32, "--seed", "in [0, 2**32) (a 32-bit seed, as JAX's PRNGKey takes)"),
        (c.workdir is None or c.workdir.strip() != "", "--workdir", "a folder name (omit the flag for a run that "
         "writes nothing)"),
    ]


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(re.fullmatch(r"[\w.-]+|\[[0-9a-fA-F:.]+\]", host)) and port.isdigit() and 1 <= int(port) <= 65535


def _knob_ranges(config: Config) -> list[tuple[bool, str, str]]:
    """(within range, flag, the range) of every registered method's knob."""
    checks = []
    for knob in knobs().values():
        value = getattr(config, knob.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{knob.name}={value!r} is invalid: must be a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -2**31 <= value < 2**31:
            raise ConfigError(f"--{knob.name}={value!r} is invalid: must fit in 32 bits (|value| < 2**31)")
        checks.append((value in knob.choices if knob.choices else knob.valid is None or knob.valid(value),
                       f"--{knob.name}", f"one of {', '.join(map(str, knob.choices))}" if knob.choices
                       else knob.valid_text))
    return checks


def valid_values() -> dict[str, str]:
    """Each setting's valid values in words, by name, as the validation says them (--help, the docs)."""
    config = Config()
    described = {flag[2:]: text for _, flag, text in _field_ranges(config) + _knob_ranges(config) if text}
    described.update({name: f"one of {', '.join(map(str, valid))}" for name, valid in choices().items()})
    return described


def validate(config: Config) -> Config:
    """Check every range that does not need the data; raises ConfigError on the first problem."""
    checks = [(getattr(config, name) in valid, f"--{name}", f"one of {', '.join(map(str, valid))}")
              for name, valid in choices().items()]
    checks += _field_ranges(config)
    for field in dataclasses.fields(config):  # NaN passes no range check; inf would pass some
        value = getattr(config, field.name)
        if field.type == "float" and not math.isfinite(value):
            raise ConfigError(f"--{field.name}={value!r} is invalid: must be a finite number")
    checks += _knob_ranges(config)
    for ok, flag, valid in checks:
        if not ok:
            raise ConfigError(f"{flag}={getattr(config, flag[2:])!r} is invalid: must be {valid}")
    _validate_combinations(config)
    return config


def _validate_combinations(config: Config) -> None:
    """The settings that are valid only together with others (or as a pattern)."""
    if config.mask_pattern is not None:
        try:
            re.compile(config.mask_pattern)
        except re.error as err:
            raise ConfigError(f"--mask_pattern={config.mask_pattern!r} is invalid: not a regular expression "
                              f"({err})") from None
    if config.hetero_client:
        _validate_hetero(config)
    given = [flag for flag, value, default in (("--coordinator_address", config.coordinator_address, ""),
             ("--num_processes", config.num_processes, 0), ("--process_id", config.process_id, -1))
             if value != default]
    if given and not config.distributed:
        raise ConfigError(f"{given[0]} needs --distributed (it says how the processes of one run find each other)")
    if config.download and config.path:
        raise ConfigError("--download fetches into --data_dir; it does not combine with --path (files "
                          "prepared by hand)")
    _validate_update_mode(config)
    if config.mnistnet_softmax and config.model_type != "mnistnet":
        raise ConfigError(f"--mnistnet_softmax works with --model_type mnistnet, not {config.model_type}")


def _validate_update_mode(config: Config) -> None:
    """--update_mode chooses the aggregation of the methods that leave it to the run; the others
    aggregate their own way, and a run asking them for another would be silently ignored."""
    registry = methods()
    if config.update_mode == 0 or config.experiment_type not in registry:
        return
    if registry[config.experiment_type].aggregation is not by_update_mode:
        takers = [name for name, method in registry.items() if method.aggregation is by_update_mode]
        raise ConfigError(f"--update_mode {config.update_mode} works with --experiment_type {', '.join(takers)}; "
                          f"{config.experiment_type} aggregates its own way (leave --update_mode at 0)")


def _validate_hetero(config: Config) -> None:
    hetero = [name for name, method in methods().items() if method.hetero]
    if config.experiment_type not in hetero:
        raise ConfigError(f"--hetero_client works with --experiment_type {' or '.join(hetero)}, "
                          f"not {config.experiment_type}")
    for flag, text, ok, valid in (
            ("--hetero_levels", config.hetero_levels, lambda h: 0.0 < h <= 1.0, "in (0, 1]"),
            ("--hetero_proportions", config.hetero_proportions, lambda w: 0.0 <= w <= 1.0, "in [0, 1]")):
        for value in float_list(text, flag):
            if not ok(value):  # NaN fails every comparison, so it lands here too
                raise ConfigError(f"{flag}={text!r} is invalid: {value} is not a number {valid}")
    levels, shares = config.density_levels
    if levels[0] != 1.0 or len(set(levels)) != len(levels):
        raise ConfigError(f"--hetero_levels={config.hetero_levels!r} is invalid: must be distinct fractions of "
                          "--density in (0, 1], including 1 (the server's own mask)")
    if abs(sum(shares) - 1.0) > 1e-6:
        raise ConfigError(f"--hetero_proportions={config.hetero_proportions!r} is invalid: must be >= 0 "
                          "and sum to 1")


def check_workdir_plugins(config: Config) -> None:
    """Continuing a workdir whose method or model came from a plugin needs that plugin: say which,
    as its config.json records it, instead of calling the method unknown."""
    path = os.path.join(config.workdir or "", "config.json")
    if config.plugin or not config.workdir or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # the workdir's own checks say what is wrong with it
    missing = [f"--{name} {saved.get(name)}" for name, known in (("experiment_type", methods()),
                                                                 ("model_type", model_names()))
               if isinstance(saved, dict) and saved.get(name) not in known]
    if missing and saved.get("plugin"):
        raise ConfigError(f"--workdir {config.workdir} holds a run of {' and '.join(missing)} from --plugin "
                          f"{saved['plugin']}; give --plugin {saved['plugin']} again to continue it")


def validate_against_data(config: Config, num_train_examples: int) -> None:
    if config.num_users > num_train_examples:
        raise ConfigError(f"--num_users={config.num_users} is invalid: must be <= {num_train_examples}, "
                          f"the number of training examples of {config.dataset}")


def validate_against_model(config: Config, input_shape: tuple[int, ...], min_input: int) -> None:
    """The data's images must survive the model's downsampling."""
    if min(input_shape[:2]) < min_input:
        raise ConfigError(f"--model_type {config.model_type} needs images of at least {min_input}x{min_input}, "
                          f"but --dataset {config.dataset} has {input_shape[0]}x{input_shape[1]}; pick another "
                          "model or dataset")


def validate_against_tensors(config: Config, sizes: dict[str, int], sparse: bool) -> None:
    """A sparse method needs every maskable tensor (`sizes`: path -> entries) to keep a weight at
    the lowest density it trains at."""
    for knob in methods()[config.experiment_type].knobs:
        value = getattr(config, knob.name)
        if knob.per_tensor and value and len(value.split(",")) != len(sizes):
            raise ConfigError(f"--{knob.name}={value!r} is invalid here: must give {len(sizes)} values, one per "
                              f"maskable tensor ({', '.join(sorted(sizes))})")
    lowest_level = min(config.density_levels[0])
    smallest = min(sizes, key=sizes.get)
    if sparse and round(config.density * lowest_level * sizes[smallest]) < 1:
        raise ConfigError(f"--density={config.density!r} is invalid here: {smallest} ({sizes[smallest]} weights) "
                          f"would keep no weight; must be at least {1 / (sizes[smallest] * lowest_level):.3g}")
