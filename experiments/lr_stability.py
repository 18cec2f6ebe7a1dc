"""Does the paper's learning rate (0.1) stay finite? Dense, SPDST and NST on Fashion-MNIST (MNISTNet,
N=100, K=10, d=0.05), alpha in {0.1, 0.3, 1}, seeds 1-5, five rounds each, in three variants: the
defaults (logits, --clip_grad_norm 5), logits with plain SGD (--clip_grad_norm 0) and the authors'
softmax with plain SGD (--mnistnet_softmax --clip_grad_norm 0). One process, the data loaded once; a
cell already in OUT is not rerun.

    python experiments/lr_stability.py [--out experiments/results/lr_stability/grid.jsonl] [--rounds 5] [--table_only]

Records every round's mean training loss and the final test loss; prints the first-round ones
and the accuracy range as a markdown table (a uniform guess has loss ln 10 = 2.30).
"""
import argparse
import dataclasses
import itertools
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flash_jax.config import Config  # noqa: E402

METHODS, ALPHAS, SEEDS = ("dense", "spdst", "nst"), (0.1, 0.3, 1.0), (1, 2, 3, 4, 5)
# (name, --mnistnet_softmax, --clip_grad_norm), the defaults first
VARIANTS = (("logits, clip 5 (default)", False, 5.0), ("logits, plain SGD", False, 0.0),
            ("softmax, plain SGD", True, 0.0))


def cell_key(cell: dict) -> tuple:
    return (cell["experiment_type"], cell["alpha"], cell["seed"], cell["mnistnet_softmax"],
            cell.get("clip_grad_norm", 0.0))


def run_cell(base: Config, dataset, cell: dict) -> dict:
    """Every round's mean training loss; the test loss and accuracy after the last round (NaN or inf
    parameters never become finite again, so a finite last evaluation means finite evaluations before)."""
    from flash_jax.fl.evaluate import evaluate_state
    from flash_jax.fl.round import run_round
    from flash_jax.fl.state import init_state
    from flash_jax.fl.setup import build_setup
    setup = build_setup(dataclasses.replace(base, **cell), dataset)
    state = init_state(setup)
    if setup.method.stage1:
        state, _ = setup.method.stage1(setup, state)
    train_loss = []
    for _ in range(base.fl_rounds):
        state, info = run_round(setup, state)
        train_loss.append(info["train_loss"])
    final = evaluate_state(setup, state)
    return {**cell, "train_loss": train_loss, "test_loss": [final["loss"]], "accuracy": final["accuracy"]}


def table(records: list[dict]) -> str:
    by_key = {cell_key(r): r for r in records}
    lines = ["| variant | method | alpha | " + " | ".join(f"seed {s}" for s in SEEDS) +
             " | every loss finite | accuracy after 5 rounds (min-max) |", "|---|---|---|" + "---|" * (len(SEEDS) + 2)]
    for (name, softmax, clip), method, alpha in itertools.product(VARIANTS, METHODS, ALPHAS):
        cells = [by_key.get((method, alpha, seed, softmax, clip)) for seed in SEEDS]
        if not any(cells):
            continue
        first = [f"{c['train_loss'][0]:.3f}" if c else "-" for c in cells]
        run = [c for c in cells if c]
        diverged = sum(not all(map(math.isfinite, c["train_loss"] + c["test_loss"])) for c in run)
        finite = f"NO ({diverged} of {len(run)} diverged)" if diverged else "yes"
        if len(run) < len(cells):
            finite += f" ({len(run)} of {len(cells)} seeds run)"
        accuracies = [c["accuracy"] for c in run]
        lines.append(f"| {name} | {method} | {alpha} | " + " | ".join(first) +
                     f" | {finite} | {min(accuracies):.3f}-{max(accuracies):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/lr_stability/grid.jsonl")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--table_only", action="store_true", help="print the table of OUT's cells, run nothing")
    args = parser.parse_args()
    from flash_jax.data.sources import load_dataset
    done = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = [json.loads(line) for line in f]
    if args.table_only:
        print(table(done))
        return
    finished = {cell_key(r) for r in done}
    base = Config(dataset="fashion_mnist", model_type="mnistnet", num_users=100, frac=0.1, density=0.05,
                  fl_rounds=args.rounds, eval_every=1, quiet=True)
    dataset = load_dataset("fashion_mnist")
    import jax  # a persistent compilation cache: the cells share shapes, so only the first ones compile
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(os.path.abspath(args.out)), ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for (_, softmax, clip), method, alpha, seed in itertools.product(VARIANTS, METHODS, ALPHAS, SEEDS):
        cell = {"experiment_type": method, "alpha": alpha, "seed": seed, "mnistnet_softmax": softmax,
                "clip_grad_norm": clip}
        if cell_key(cell) in finished:
            continue
        record = run_cell(base, dataset, cell)
        print(json.dumps(record), flush=True)
        done.append(record)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
    print(table(done))


if __name__ == "__main__":
    main()
