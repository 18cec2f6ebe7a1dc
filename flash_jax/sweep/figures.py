"""A sweep report's figures, one panel per setting: accuracy against communication with 95% error
bars, and accuracy against round with a 95% band over seeds. Intervals are drawn clipped to [0, 1], the
range of an accuracy (with two or three seeds a t interval can reach past it); one legend serves every
panel."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

from flash_jax.sweep.results import cell_runs, setting_title  # noqa: E402
from flash_jax.sweep.stats import mean_interval  # noqa: E402


def _panels(count: int, title: str):
    columns = min(count, 2)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns + 1.5, 4.5 * rows), squeeze=False,
                                layout="constrained")
    figure.suptitle(title)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return figure, list(axes.flat)


def _error(interval) -> float:
    return interval.half_width if math.isfinite(interval.half_width) else 0.0


def _accuracy_range(interval) -> tuple[float, float]:
    """The interval's ends, clipped to the range of an accuracy."""
    return max(interval.mean - _error(interval), 0.0), min(interval.mean + _error(interval), 1.0)


def _label(panel, xlabel: str, setting: dict) -> None:
    panel.set_xlabel(xlabel)
    panel.set_ylabel("test accuracy")
    panel.set_title(setting_title(setting))
    panel.grid(alpha=0.3)


def _save(figure, panels: list, path: str) -> None:
    """With one legend for all panels, right of them (a method missing from a panel still appears)."""
    handles = {}
    for panel in panels:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def accuracy_vs_communication(tables: list, path: str) -> None:
    figure, panels = _panels(len(tables), "final accuracy against communication (mean, 95% interval over seeds)")
    for panel, (setting, rows) in zip(panels, tables):
        for row in rows:
            accuracy, comm = row["cells"]["accuracy"], row["cells"].get("comm_ratio_vs_dense")
            if comm is None:
                continue
            low, high = _accuracy_range(accuracy)
            panel.errorbar(comm.mean, accuracy.mean, xerr=_error(comm), fmt="o", capsize=3, label=row["method"],
                           yerr=[[accuracy.mean - low], [high - accuracy.mean]])
        panel.set_xscale("log")
        _label(panel, "cumulative communication / dense FedAvg's", setting)
    _save(figure, panels, path)


def accuracy_vs_round(axes: dict, runs: list, tables: list, path: str) -> None:
    """Mean accuracy at each evaluated round that every seed reached, with its 95% band."""
    figure, panels = _panels(len(tables), "test accuracy by round (mean, 95% band over seeds)")
    for panel, (setting, rows) in zip(panels, tables):
        for row in rows:
            by_seed = cell_runs(runs, setting, row["method"])
            curves = [{r["round"]: r["accuracy"] for r in run["records"]} for run in by_seed.values()]
            rounds = sorted(set.intersection(*(set(curve) for curve in curves)))
            intervals = [mean_interval([curve[r] for curve in curves]) for r in rounds]
            means = [i.mean for i in intervals]
            line, = panel.plot(rounds, means, label=row["method"])
            low, high = zip(*map(_accuracy_range, intervals))
            panel.fill_between(rounds, low, high, color=line.get_color(), alpha=0.15)
        _label(panel, "round", setting)
    _save(figure, panels, path)
