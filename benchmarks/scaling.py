"""Round time against clients per round, and its plot.

    python -m benchmarks.scaling --setup mnistnet_fmnist --experiment_type pdst --clients 1,2,5,10,20 \
        --out benchmarks/results/scaling_cpu.jsonl
    python -m benchmarks.scaling --plot benchmarks/results/scaling_cpu.jsonl --png benchmarks/round_time_vs_clients.png

Each cohort size runs `benchmarks.round_time` in its own process (fresh compile caches and memory),
which appends one JSON line to --out; --plot draws every (setup, method) series found in the files.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys


def measure(args) -> None:
    for k in (int(c) for c in args.clients.split(",")):
        command = [sys.executable, "-m", "benchmarks.round_time", "--setup", args.setup, "--experiment_type",
                   args.experiment_type, "--clients_per_round", str(k), "--rounds", str(args.rounds),
                   "--json", args.out, *(["--skip_torch"] if args.skip_torch else [])]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)


def plot(files: list[str], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = collections.defaultdict(list)
    for file in files:
        with open(file) as f:
            for line in f:
                record = json.loads(line)
                series[(record["setup"], record["experiment_type"], record["device"])].append(record)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (setup, method, device), records in sorted(series.items()):
        records.sort(key=lambda r: r["clients_per_round"])
        k = [r["clients_per_round"] for r in records]
        ax.plot(k, [r["round_s"] for r in records], "o-", label=f"flash_jax {method} ({device})")
        with_torch = [r for r in records if "torch_round_s" in r]
        if with_torch:
            ax.plot([r["clients_per_round"] for r in with_torch], [r["torch_round_s"] for r in with_torch], "s--",
                    label=f"PyTorch reference {method}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients per round")
    ax.set_ylabel("seconds per round (median, steady state)")
    ax.set_title(", ".join(sorted({s for s, _, _ in series})))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", default="mnistnet_fmnist")
    parser.add_argument("--experiment_type", default="pdst")
    parser.add_argument("--clients", default="1,2,5,10,20", help="comma-separated clients per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument("--out", help="JSON lines file the measurements are appended to")
    parser.add_argument("--plot", nargs="+", metavar="JSONL", help="plot these files instead of measuring")
    parser.add_argument("--png", default="benchmarks/round_time_vs_clients.png")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.png)
    elif args.out:
        measure(args)
    else:
        parser.error("pass --out FILE to measure or --plot FILE... to draw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
