"""Claims a sweep file asks its report to test: `first - second` of a final metric, paired by seed, at
every setting of the axes neither side fixes.

    [[claim]]
    text = "SPDST beats NST at equal density"
    first = { experiment_type = "spdst" }                        # the metric is accuracy unless named
    second = { experiment_type = "nst", metric = "accuracy_pruned" }
    [[claim]]
    text = "Top-k loses accuracy as d falls"
    first = { experiment_type = "topk", density = 0.05 }         # both sides fix the same axes
    second = { experiment_type = "topk", density = 0.01 }
    [[claim]]
    text = "SPDST sends at most a tenth of dense's bits"
    first = 0.1                                                  # a side may be a number
    second = { experiment_type = "spdst", metric = "comm_ratio_vs_dense" }

A claim holds at a setting where the 95% interval of the difference lies above zero, is reversed where
it lies below, and is open where it contains zero or fewer than two seeds finished on both sides.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

DEFAULT_METRIC = "accuracy"
_KEYS = {"text", "first", "second"}


@dataclasses.dataclass(frozen=True)
class Side:
    """Runs chosen by axis values and one of their final metrics, or a constant."""

    selector: tuple[tuple[str, Any], ...] = ()
    metric: str = DEFAULT_METRIC
    constant: float | None = None

    def label(self) -> str:
        if self.constant is not None:
            return f"{self.constant:g}"
        return " ".join([*(str(value) for _, value in self.selector), self.metric])


@dataclasses.dataclass(frozen=True)
class Claim:
    text: str
    first: Side
    second: Side

    def fixed_axes(self) -> set[str]:
        return {axis for side in (self.first, self.second) for axis, _ in side.selector}


def parse_side(entry: Any, axes: dict, where: str) -> Side:
    """One side of a [[claim]]; ValueError says what is wrong with it. `axes`: those a side may fix."""
    if isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry):
        return Side(constant=float(entry))
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table of axis values (and a metric) or a number")
    selector = {key: value for key, value in entry.items() if key != "metric"}
    metric = entry.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"{where}: metric must name a field of metrics.jsonl")
    for axis, value in selector.items():
        if axis not in axes:
            raise ValueError(f"{where} fixes {axis!r}, which is not one of the axes {sorted(axes)}")
        if value not in axes[axis]:
            raise ValueError(f"{where}: {axis} = {value!r} is not among the axis's values {axes[axis]}")
    return Side(tuple(selector.items()), metric)


def parse_claims(entries: Any, axes: dict) -> list[Claim]:
    """A sweep file's [[claim]] tables, checked against the axes a side may fix."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError("claim must be an array of tables ([[claim]])")
    claims = []
    for index, entry in enumerate(entries, start=1):
        where = f"[[claim]] number {index}"
        if set(entry) != _KEYS:
            raise ValueError(f"{where} must have exactly the keys text, first and second")
        if not isinstance(entry["text"], str) or not entry["text"].strip():
            raise ValueError(f"{where}: text must say the claim")
        first, second = (parse_side(entry[key], axes, f"{where}.{key}") for key in ("first", "second"))
        fixed = [{axis for axis, _ in side.selector} for side in (first, second) if side.constant is None]
        if not fixed or (len(fixed) == 2 and fixed[0] != fixed[1]):
            raise ValueError(f"{where}: a side must choose runs, and two sides that do must fix the same axes")
        claims.append(Claim(entry["text"], first, second))
    return claims


HOLDS, REVERSED, OPEN = VERDICTS = ("holds", "reversed", "open")


def verdict(mean: float, excludes_zero: bool) -> str:
    if not excludes_zero:
        return OPEN
    return HOLDS if mean > 0 else REVERSED
