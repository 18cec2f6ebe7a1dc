"""A sweep report's figures, one panel per setting: accuracy against communication with 95% error
bars, and accuracy against round with a 95% band over seeds."""
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
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.5 * rows), squeeze=False)
    figure.suptitle(title)
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return figure, list(axes.flat)


def _error(interval) -> float:
    return interval.half_width if math.isfinite(interval.half_width) else 0.0


def _label(panel, xlabel: str, setting: dict) -> None:
    panel.set_xlabel(xlabel)
    panel.set_ylabel("test accuracy")
    panel.set_title(setting_title(setting))
    panel.grid(alpha=0.3)
    panel.legend(fontsize=7)


def _save(figure, path: str) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def accuracy_vs_communication(tables: list, path: str) -> None:
    figure, panels = _panels(len(tables), "final accuracy against communication (mean, 95% interval over seeds)")
    for panel, (setting, rows) in zip(panels, tables):
        for row in rows:
            accuracy, comm = row["cells"]["accuracy"], row["cells"].get("comm_ratio_vs_dense")
            if comm is None:
                continue
            panel.errorbar(comm.mean, accuracy.mean, xerr=_error(comm), yerr=_error(accuracy), fmt="o", capsize=3,
                           label=row["method"])
        panel.set_xscale("log")
        _label(panel, "cumulative communication / dense FedAvg's", setting)
    _save(figure, path)


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
            errors = [_error(i) for i in intervals]
            panel.fill_between(rounds, [m - e for m, e in zip(means, errors)], [m + e for m, e in zip(means, errors)],
                               color=line.get_color(), alpha=0.2)
        _label(panel, "round", setting)
    _save(figure, path)
