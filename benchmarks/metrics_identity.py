"""A refactor's check: every built-in method (and the variants that reach each client-side and
server-side feature) for a few rounds on digits, every metric but timings stored as JSON; two such
files compared as a table.

    python -m benchmarks.metrics_identity run BEFORE.json      # on the old code
    python -m benchmarks.metrics_identity run AFTER.json       # on the new code
    python -m benchmarks.metrics_identity compare BEFORE.json AFTER.json
"""
import argparse
import json
import sys

METHODS = "dense pdst nst spdst jmwst feddst topk sparsyfed prunefl prunefl_feddst".split()
VARIANTS = [  # each reaches a feature the defaults do not in four rounds
    ("spdst", {"hetero_client": True}), ("jmwst", {"hetero_client": True}), ("pdst", {"update_mode": 1}),
    ("nst", {"local_epoch": 2}), ("spdst", {"growth": "gradient"}),
    ("feddst", {"local_epoch": 2, "feddst_readjust_every": 1}), ("topk", {"local_epoch": 2}),
    ("sparsyfed", {"sparsyfed_act_threshold": "every_step"}), ("prunefl", {"prunefl_adjust_every": 2}),
    ("prunefl_feddst", {"prunefl_adjust_every": 2, "prunefl_initial_rounds": 2}),
]
TIMINGS = ("round_s", "wall_s")


def run(path: str) -> None:
    import flash_jax
    out = {}
    for name, extra in [(m, {}) for m in METHODS] + VARIANTS:
        config = flash_jax.Config(experiment_type=name, num_users=10, frac=0.5, fl_rounds=4, eval_every=2, quiet=True,
                                  **extra)
        case = name + "".join(f" {k}={v}" for k, v in extra.items())
        out[case] = [{k: v for k, v in record.items() if k not in TIMINGS} for record in flash_jax.run(config)]
        print(case, "done", file=sys.stderr, flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)


def compare(before_path: str, after_path: str) -> bool:
    with open(before_path) as f:
        before = json.load(f)
    with open(after_path) as f:
        after = json.load(f)
    print("| case | records | metrics per record | identical |\n|---|---|---|---|")
    for case in before:
        same = before[case] == after.get(case)
        differing = "" if same or case not in after else " (" + ", ".join(sorted(
            {k for a, b in zip(before[case], after[case]) for k in a if a.get(k) != b.get(k)})) + ")"
        print(f"| {case} | {len(before[case])} | {len(before[case][0])} | {'yes' if same else 'NO' + differing} |")
    return before == after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "compare"))
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    if args.action == "run":
        run(args.paths[0])
        return 0
    return 0 if compare(*args.paths[:2]) else 1


if __name__ == "__main__":
    sys.exit(main())
