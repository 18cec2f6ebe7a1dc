"""A sweep's finished runs, grouped into settings (the values of the axes other than the method and the
seed) and summarised per method over seeds."""
from __future__ import annotations

import itertools
import json
import math
import os
import statistics

from flash_jax.sweep.claims import Claim, Side, parse_claims, verdict
from flash_jax.sweep.grid import METHOD_AXIS, SEED_AXIS, finished_records
from flash_jax.sweep.stats import Interval, mean_interval, paired_difference

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


def report_options(out: str) -> tuple[list[Claim], frozenset[str]]:
    """The claims the sweep file asks the report to test, and the methods it shows unranked as references
    (neither in a manifest written without them)."""
    with open(os.path.join(out, "sweep.json")) as f:
        manifest = json.load(f)
    axes = {axis: values for axis, values in manifest["axes"].items() if axis != SEED_AXIS}
    return parse_claims(manifest.get("claims", []), axes), frozenset(manifest.get("references", []))


def settings_of(axes: dict, varying=(METHOD_AXIS, SEED_AXIS)) -> list[dict]:
    """Every combination of the axes other than `varying` (by default: the method and the seed)."""
    names = [axis for axis in axes if axis not in varying]
    return [dict(zip(names, values)) for values in itertools.product(*(axes[name] for name in names))]


def cell_runs(runs: list[dict], setting: dict, method: str) -> dict:
    """seed -> run of `method` at `setting` (a run without an axis, e.g. dense without density,
    belongs to every value of it)."""
    return {run["axes"].get(SEED_AXIS): run for run in runs if run["axes"].get(METHOD_AXIS) == method
            and all(run["axes"].get(axis, value) == value for axis, value in setting.items())}


def summarize_setting(axes: dict, runs: list[dict], setting: dict, references=frozenset()) -> list[dict]:
    """Rows of one table: per method, an Interval per column, and whether it is significantly below
    the best method's accuracy (the best among the methods that are not `references`)."""
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
    ranked = [row for row in rows if row["method"] not in references]
    best = max(ranked, key=lambda row: row["cells"]["accuracy"].mean, default=None)
    for row in rows:
        row["reference"], row["best"] = row["method"] in references, row is best
        row["gap"] = paired_difference(best["accuracy"], row["accuracy"]) if best else None
        row["worse"] = not row["reference"] and not row["best"] and row["gap"].excludes_zero()
    return rows


def setting_title(setting: dict) -> str:
    return ", ".join(f"{axis} {value}" for axis, value in setting.items()) or "all runs"


def side_values(side: Side, runs: list[dict], setting: dict) -> dict | float:
    """seed -> the side's final metric at `setting` (runs without that metric left out), or its constant."""
    if side.constant is not None:
        return side.constant
    where = {**setting, **dict(side.selector)}
    finals = {seed: run["records"][-1] for seed, run in cell_runs(runs, where, where.pop(METHOD_AXIS, None)).items()}
    return {seed: final[side.metric] for seed, final in finals.items() if side.metric in final}


def claim_rows(claim: Claim, axes: dict, runs: list[dict]) -> list[dict]:
    """One row per setting of the axes the claim does not fix (the method's included) where both sides
    have runs on a common seed: each side's interval over those seeds, the difference's, the verdict."""
    rows = []
    for setting in settings_of(axes, varying=(SEED_AXIS, *claim.fixed_axes())):
        sides = [side_values(side, runs, setting) for side in (claim.first, claim.second)]
        seeds = set.intersection(*(set(values) for values in sides if isinstance(values, dict)))
        if not seeds:
            continue
        paired = [{seed: values[seed] for seed in seeds} if isinstance(values, dict) else dict.fromkeys(seeds, values)
                  for values in sides]  # a constant side pairs with every seed
        difference = paired_difference(*paired)
        rows.append({"setting": setting, "difference": difference,
                     "verdict": verdict(difference.mean, difference.excludes_zero()),
                     "sides": [mean_interval(list(by_seed.values())) if isinstance(values, dict)
                               else Interval(values, math.nan, 0) for values, by_seed in zip(sides, paired)]})
    return rows


def run_seconds(records: list[dict]) -> float | None:
    """A run's wall time from its records' wall_s (None without it). wall_s restarts with each process that
    resumes the run, so each stretch's last value counts: stage 1, compilation, training and evaluation, and
    any pause of the process; not data loading, nor the rounds a kill cut off after the last record."""
    walls = [record["wall_s"] for record in records if "wall_s" in record]
    return sum(wall for wall, after in zip(walls, walls[1:] + [0.0]) if after < wall) if walls else None


def run_times(axes: dict, runs: list[dict]) -> list[dict]:
    """Per method, then for all runs together: how many finished runs record their time, the median and the
    total of those times in seconds."""
    seconds = [(run["axes"].get(METHOD_AXIS), run_seconds(run["records"])) for run in runs]
    groups = [(method, [s for m, s in seconds if m == method and s is not None])
              for method in axes.get(METHOD_AXIS, [])]
    groups.append(("all runs", [s for _, s in seconds if s is not None]))
    return [{"method": method, "runs": len(times), "median_s": statistics.median(times), "total_s": sum(times)}
            for method, times in groups if times]
