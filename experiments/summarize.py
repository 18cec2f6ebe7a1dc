"""The reproduction's tables: one row per method from its workdir's last metrics.jsonl record, and the
mask consensus at the first and last evaluation.

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


def consensus_row(name: str, records: list[dict]) -> list[str] | None:
    """First and last evaluation's consensus: do the masks come to agree over the run?"""
    tracked = [r for r in records if "mask_hamming_clients" in r]
    if not tracked:
        return None
    first, last = tracked[0], tracked[-1]
    return [name] + [f"{first[k]:.4f} (round {first['round']}) -> {last[k]:.4f} (round {last['round']})"
                     for k in ("mask_hamming_clients", "mask_hamming_to_server", "server_mask_change")]


def regrowth_row(name: str, records: list[dict]) -> list[str] | None:
    """Regrowth as SparsyFed's paper measures it (docs/methods.md): entries the participants' masks
    gained against the model they received, entries the server re-activated, the union's excess over d
    (first and last evaluation)."""
    tracked = [r for r in records if "mask_activated" in r]
    if not tracked:
        return None
    d = tracked[0]["density_pruned"] if "density_pruned" in tracked[0] else None
    excess = "-" if d is None else (f"{tracked[0]['density'] - d:.4f} (round {tracked[0]['round']}) -> "
                                    f"{tracked[-1]['density'] - d:.4f} (round {tracked[-1]['round']})")
    mean = lambda key: sum(r[key] for r in tracked) / len(tracked)  # noqa: E731
    return [name, f"{mean('mask_activated'):.1f}", f"{mean('server_reactivated'):.1f}", excess,
            f"{tracked[-1]['server_mask_density']:.4f}" if "server_mask_density" in tracked[-1] else "-"]


def main(outdir: str, methods: list[str]) -> None:
    runs = {}
    for name in methods:
        path = os.path.join(outdir, name, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                runs[name] = [json.loads(line) for line in f if line.strip()]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for name, records in runs.items():
        print("| " + " | ".join(row(name, records[-1])) + " |")
    print()
    print("| method | Hamming among clients | Hamming to server | server mask change |")
    print("|---|---|---|---|")
    for name, records in runs.items():
        cells = consensus_row(name, records)
        if cells:
            print("| " + " | ".join(cells) + " |")
    regrowth = [cells for name, records in runs.items() if (cells := regrowth_row(name, records))]
    if regrowth:
        print()
        print("| method | entries activated per participant (mean of evaluated rounds) | entries the server "
              "re-activated (mean) | union density - d | server mask density (last) |")
        print("|---|---|---|---|---|")
        for cells in regrowth:
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
