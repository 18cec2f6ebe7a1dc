"""A sweep's finished runs, grouped into settings (the values of the axes other than the method and the
seed) and summarised per method over seeds."""
from __future__ import annotations

import itertools
import json
import os

from flash_jax.sweep.grid import METHOD_AXIS, finished_records
from flash_jax.sweep.stats import mean_interval, paired_difference

SEED_AXIS = "seed"
COLUMNS = (("accuracy", "accuracy"), ("accuracy_pruned", "pruned-to-d accuracy"), ("density", "density"),
           ("comm_ratio_vs_dense", "comm vs dense"), ("mask_hamming_clients", "Hamming among clients"),
           ("server_mask_change", "server mask change"))


def load_runs(out: str) -> tuple[dict, list[dict]]:
    """The manifest's axes, and each finished run (metrics reach the last round) with its records."""
    with open(os.path.join(out, "sweep.json")) as f:
        manifest = json.load(f)
    runs = []
    for run in manifest["runs"]:
        records = finished_records(os.path.join(out, run["name"]))
        if records:
            runs.append({**run, "records": records})
    return manifest["axes"], runs


def settings_of(axes: dict) -> list[dict]:
    """Every combination of the axes that are neither the method nor the seed."""
    names = [axis for axis in axes if axis not in (METHOD_AXIS, SEED_AXIS)]
    return [dict(zip(names, values)) for values in itertools.product(*(axes[name] for name in names))]


def cell_runs(runs: list[dict], setting: dict, method: str) -> dict:
    """seed -> run of `method` at `setting` (a run without an axis, e.g. dense without density,
    belongs to every value of it)."""
    return {run["axes"].get(SEED_AXIS): run for run in runs if run["axes"].get(METHOD_AXIS) == method
            and all(run["axes"].get(axis, value) == value for axis, value in setting.items())}


def summarize_setting(axes: dict, runs: list[dict], setting: dict) -> list[dict]:
    """Rows of one table: per method, an Interval per column, and whether it is significantly below
    the best method's accuracy."""
    rows = []
    for method in axes.get(METHOD_AXIS, [None]):
        by_seed = cell_runs(runs, setting, method)
        if not by_seed:
            continue
        finals = {seed: run["records"][-1] for seed, run in by_seed.items()}
        cells = {key: mean_interval([final[key] for final in finals.values()])
                 for key, _ in COLUMNS if all(key in final for final in finals.values())}
        rows.append({"method": method, "seeds": sorted(by_seed, key=str), "cells": cells,
                     "accuracy": {seed: final["accuracy"] for seed, final in finals.items()}})
    if rows:
        best = max(rows, key=lambda row: row["cells"]["accuracy"].mean)
        for row in rows:
            gap = paired_difference(best["accuracy"], row["accuracy"])
            row["best"], row["gap"] = row is best, gap
            row["worse"] = row is not best and gap.excludes_zero()
    return rows


def setting_title(setting: dict) -> str:
    return ", ".join(f"{axis} {value}" for axis, value in setting.items()) or "all runs"
