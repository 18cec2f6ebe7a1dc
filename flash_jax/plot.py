"""Compare runs as pictures: `python -m flash_jax.plot WORKDIR [WORKDIR ...] [--out DIR]`.

Reads each workdir's metrics.jsonl (and config.json for its label) and writes four PNGs: accuracy
against round, accuracy against cumulative communication, mask consensus against round, and the
final model's density per maskable tensor.
"""
from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flash_jax.output import print_result  # noqa: E402
from flash_jax.workdir import read_metrics  # noqa: E402

FIGURES = ("accuracy_vs_round.png", "accuracy_vs_communication.png", "mask_consensus.png", "layer_density.png")


class PlotError(ValueError):
    """A workdir without metrics; the message names it."""


def load_run(workdir: str) -> tuple[str, list[dict]]:
    """A run's label (its folder name) and its metric records; lines that are not records (one cut
    short by a kill) are passed over with a warning."""
    path = os.path.join(workdir, "metrics.jsonl")
    try:
        records, skipped = read_metrics(path)
    except (OSError, UnicodeDecodeError) as err:
        raise PlotError(f"{workdir}: no readable metrics.jsonl ({getattr(err, 'strerror', None) or err})") from None
    if skipped:
        print(f"warning: {path}: passed over {skipped} line(s) that are not metric records", file=sys.stderr)
    if not records:
        raise PlotError(f"{workdir}: metrics.jsonl holds no metric records")
    return os.path.basename(os.path.normpath(workdir)), records


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["round"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(runs: list[tuple[str, list[dict]]], out: str) -> list[str]:
    """Write the four figures into `out`; returns their paths."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, name) for name in FIGURES]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, records in runs:
        ax.plot(*_series(records, "accuracy"), label=label)
        if any("accuracy_pruned" in r for r in records):
            ax.plot(*_series(records, "accuracy_pruned"), linestyle="--", label=f"{label} (pruned to d)")
    ax.set(xlabel="round", ylabel="test accuracy", title="Accuracy")
    _finish(fig, ax, paths[0])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, records in runs:
        bits = [r["cumulative_bits"] / 8e9 for r in records if "cumulative_bits" in r]
        ax.plot(bits, [r["accuracy"] for r in records if "cumulative_bits" in r], marker=".", label=label)
    ax.set(xlabel="cumulative communication (GB, up + down)", ylabel="test accuracy", xscale="log",
           title="Accuracy against communication")
    _finish(fig, ax, paths[1])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for label, records in runs:
        if any("mask_hamming_clients" in r for r in records):
            axes[0].plot(*_series(records, "mask_hamming_clients"), label=label)
            axes[1].plot(*_series(records, "server_mask_change"), label=label)
    axes[0].set(xlabel="round", ylabel="normalised Hamming distance", title="Among the round's participants")
    axes[1].set(xlabel="round", title="Server mask against the previous round's")
    _finish(fig, axes[0], paths[2], legend_ax=axes[1])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    tensors = sorted({p for _, records in runs for p in records[-1].get("layer_density", {})})
    width = 0.8 / max(len(runs), 1)
    for i, (label, records) in enumerate(runs):
        density = records[-1].get("layer_density", {})
        ax.bar([t + i * width for t in range(len(tensors))], [density.get(p, 0.0) for p in tensors], width,
               label=label)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tensors))], tensors, rotation=30, ha="right")
    ax.set(ylabel="density of the final model", yscale="log", title="Density per maskable tensor")
    _finish(fig, ax, paths[3])
    return paths


def _finish(fig, ax, path: str, legend_ax=None) -> None:
    legend_ax = legend_ax or ax
    if legend_ax.get_legend_handles_labels()[0]:  # a figure none of the runs has data for stays empty
        legend_ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flash_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="run folders holding metrics.jsonl")
    parser.add_argument("--out", default=".", help="folder for the PNGs (default: the current folder)")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(w) for w in args.workdirs]
        paths = plot_runs(runs, args.out)
    except (PlotError, OSError) as err:
        print(f"python -m flash_jax.plot: error: {err}", file=sys.stderr)
        return 2
    print_result("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
