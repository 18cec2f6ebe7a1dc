"""The reproduction's table: one row per method from its workdir's last metrics.jsonl record.

Usage: python experiments/summarize.py OUTDIR METHOD [METHOD ...]   (methods without a workdir are skipped)
"""
from __future__ import annotations

import json
import os
import sys

COLUMNS = ("method", "round", "accuracy", "density", "pruned-to-d accuracy", "union density",
           "Hamming among clients", "Hamming to server", "server mask change", "cumulative GB",
           "comm vs dense", "s/round")


def row(name: str, last: dict) -> list[str]:
    def number(key, digits=4):
        return f"{last[key]:.{digits}f}" if key in last else "-"

    return [name, str(last["round"]), number("accuracy"), number("density"), number("accuracy_pruned"),
            number("union_density"), number("mask_hamming_clients"), number("mask_hamming_to_server"),
            number("server_mask_change"), f"{last['cumulative_bits'] / 8e9:.3f}", number("comm_ratio_vs_dense"),
            number("round_s", 2)]


def main(outdir: str, methods: list[str]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for name in methods:
        path = os.path.join(outdir, name, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                last = [json.loads(line) for line in f if line.strip()][-1]
            print("| " + " | ".join(row(name, last)) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
