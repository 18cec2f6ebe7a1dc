"""A sweep file (TOML) and the runs it names: a base setting, axes crossed in order, per-method overrides.

    [base]                      # any run.py setting (flag names without dashes); `preset` names a
    preset = "presets/x.toml"   # run.py --config file, relative to this file
    dataset = "fashion_mnist"
    [axes]                      # crossed in this order; a run's folder is named from its values
    experiment_type = ["dense", "spdst"]
    density = [0.01, 0.05]
    seed = [1, 2, 3]
    [methods.prunefl]           # settings for the runs of one experiment_type; "{density}" is the
    prunefl_max_density = "{density}"   # run's own value of that setting
    [methods.dense]
    independent_of = ["density"]   # axes the method ignores: one run instead of one per value
    reference = true               # the report shows it but ranks the others without it
    [[claim]]                   # a paired comparison the report tests (see claims.py)
    text = "SPDST beats PDST"
    first = { experiment_type = "spdst" }
    second = { experiment_type = "pdst" }

A run is a point of the grid: its settings, a folder under the sweep folder named from them, and the
`python -m flash_jax` command that runs it there. Finished runs are recognised by their files alone
(config.json and a metrics.jsonl that reaches the last round), so a sweep restarted anywhere, even
where the checkpoints are gone, skips them.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
import sys
import tomllib
from typing import Any

from flash_jax.sweep.claims import parse_claims
from flash_jax.workdir import read_metrics

METHOD_AXIS = "experiment_type"
SEED_AXIS = "seed"  # the axis a report pairs runs by
_SETTING_REFERENCE = re.compile(r"^\{(\w+)\}$")
_SWEEP_KEYS = ("independent_of", "reference")  # keys of [methods.NAME] that are not run.py settings


class SweepError(ValueError):
    """A sweep file that cannot be read or names what does not exist; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of the grid: `axes` its values on the sweep's axes (the ones it depends on),
    `settings` everything passed to the command line, `name` its folder under the sweep folder."""

    name: str
    axes: tuple[tuple[str, Any], ...]
    settings: tuple[tuple[str, Any], ...]
    preset: str | None

    def workdir(self, out: str) -> str:
        return os.path.join(out, self.name)

    def command(self, out: str) -> list[str]:
        """The run's command line: `python -m flash_jax` with its flags, quiet, in its workdir."""
        flags = [] if self.preset is None else ["--config", self.preset]
        for key, value in self.settings:
            if value is True:
                flags.append(f"--{key}")
            elif value is not False:
                flags += [f"--{key}", str(value)]
        return [sys.executable, "-m", "flash_jax", *flags, "--quiet", "--workdir", self.workdir(out)]

    def is_done(self, out: str) -> bool:
        return finished_records(self.workdir(out), dict(self.settings).get("fl_rounds")) is not None


def finished_records(workdir: str, rounds: int | None = None) -> list[dict] | None:
    """The metric records of a finished run: config.json is there and metrics.jsonl reaches the last
    round (`rounds`, else config.json's fl_rounds; a line cut short by a kill does not count). None
    for a run that is not finished."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            saved = json.load(f)
        records, _ = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    except (OSError, ValueError):
        return None
    if rounds is None:
        rounds = saved.get("fl_rounds") if isinstance(saved, dict) else None
    return records if records and records[-1]["round"] == rounds else None


@dataclasses.dataclass(frozen=True)
class Sweep:
    axes: dict[str, list]
    runs: list[Run]
    claims: list[dict]  # the [[claim]] tables as written (checked), for the report
    references: list[str]  # methods the report shows without ranking them (e.g. dense, an upper bound)


def load_sweep(path: str) -> Sweep:
    """Read and expand a sweep file; SweepError names the first problem."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except OSError as err:
        raise SweepError(f"{path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: not valid TOML ({err})") from None
    unknown = set(spec) - {"base", "axes", "methods", "claim"}
    if unknown:
        raise SweepError(f"{path}: unknown table {sorted(unknown)[0]!r}; a sweep file has [base], [axes], "
                         "[methods.NAME] and [[claim]]")
    tables = {name: spec.get(name, {}) for name in ("base", "axes", "methods")}
    tables.update({f"methods.{name}": table for name, table in tables["methods"].items()}
                  if isinstance(tables["methods"], dict) else {})
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise SweepError(f"{path}: {name} must be a table ([{name}]), not {type(table).__name__}")
    base, axes, methods = dict(tables["base"]), tables["axes"], tables["methods"]
    preset = base.pop("preset", None)
    if preset is not None:
        preset = os.path.abspath(os.path.join(os.path.dirname(path), preset))
        if not os.path.isfile(preset):
            raise SweepError(f"{path}: preset {preset} does not exist")
    for name, values in axes.items():
        if not isinstance(values, list) or not values or len(set(map(repr, values))) != len(values):
            raise SweepError(f"{path}: axis {name} must be a non-empty list of distinct values")
    _check_names(path, base, axes, methods)
    claims = spec.get("claim", [])
    try:
        parse_claims(claims, {axis: values for axis, values in axes.items() if axis != SEED_AXIS})
    except ValueError as err:
        raise SweepError(f"{path}: {err}") from None
    references = sorted(method for method, overrides in methods.items() if overrides.get("reference"))
    return Sweep(axes=axes, runs=expand(base, axes, methods, preset), claims=claims, references=references)


def _check_names(path: str, base: dict, axes: dict, methods: dict) -> None:
    """Every setting the file names must be one run.py knows (a typo would otherwise fail every run)."""
    from flash_jax.cli import setting_names  # the command line's own list of settings

    known = setting_names()
    named = [*base, *axes] + [key for overrides in methods.values() for key in overrides if key not in _SWEEP_KEYS]
    for key in named:
        if key not in known:
            raise SweepError(f"{path}: {key!r} is not a run.py setting (see python run.py --help)")
    for method, overrides in methods.items():
        ignored = overrides.get("independent_of", [])
        if not isinstance(ignored, list) or any(axis not in axes for axis in ignored):
            raise SweepError(f"{path}: [methods.{method}] independent_of must list axes of [axes]")
        if not isinstance(overrides.get("reference", False), bool):
            raise SweepError(f"{path}: [methods.{method}] reference must be true or false")


def expand(base: dict, axes: dict, methods: dict, preset: str | None) -> list[Run]:
    """The grid's runs in axis order, each once (a method independent of an axis runs at its first
    value's place, without that value)."""
    runs, seen = [], set()
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        overrides = dict(methods.get(point.get(METHOD_AXIS, base.get(METHOD_AXIS)), {}))
        ignored = overrides.pop("independent_of", [])
        overrides.pop("reference", None)
        point = {axis: value for axis, value in point.items() if axis not in ignored}
        settings = {**base, **point}
        settings.update({key: _resolve(value, settings) for key, value in overrides.items()})
        name = run_name(point)
        if name not in seen:
            seen.add(name)
            runs.append(Run(name, tuple(point.items()), tuple(settings.items()), preset))
    return runs


def _resolve(value: Any, settings: dict) -> Any:
    """"{name}" stands for the run's own value of setting `name`."""
    match = _SETTING_REFERENCE.match(value) if isinstance(value, str) else None
    if match and match.group(1) in settings:
        return settings[match.group(1)]
    if match:
        raise SweepError(f"{value!r} refers to a setting that is neither in [base] nor in [axes]")
    return value


def run_name(point: dict) -> str:
    """METHOD/axis=value_axis=value for the axes a run depends on (the method alone if that is all)."""
    method = point.get(METHOD_AXIS)
    rest = "_".join(f"{axis}={value}" for axis, value in point.items() if axis != METHOD_AXIS) or "run"
    return rest if method is None else f"{method}/{rest}"


def shard(runs: list[Run], spec: str) -> list[Run]:
    """--shard I/N: every N-th run from the I-th (I from 0), so the N slices cover the grid once."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise SweepError(f"--shard {spec!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise SweepError(f"--shard {spec!r}: needs N >= 1 and 0 <= I < N")
    return runs[index::count]


def command_line(run: Run, out: str) -> str:
    return shlex.join(run.command(out))
