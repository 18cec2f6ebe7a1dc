#!/usr/bin/env bash
# The Fashion-MNIST check (experiments/fashion_mnist_check.md): MNISTNet on Fashion-MNIST (Debian's
# dataset-fashion-mnist), 100 clients, 10 per round, 30 rounds, alpha 1, seed 1, for dense, PDST and NST
# at d=0.05.
# Usage: bash experiments/fashion_mnist_check.sh [OUTDIR]   (about 3-6 minutes per method on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/fashion_mnist_check}
for method in dense pdst nst; do
  rm -rf "$out/$method"
  python run.py --dataset fashion_mnist --model_type mnistnet --experiment_type "$method" --density 0.05 \
    --num_users 100 --frac 0.1 --fl_rounds 30 --workdir "$out/$method" --quiet
done
python - "$out" <<'PY'
import json, sys
print("| method | round | accuracy | density | pruned-to-d accuracy | union density | s/round (last 10) |")
print("|---|---|---|---|---|---|---|")
for method in ("dense", "pdst", "nst"):
    last = [json.loads(line) for line in open(f"{sys.argv[1]}/{method}/metrics.jsonl")][-1]
    pruned = f"{last['accuracy_pruned']:.4f}" if "accuracy_pruned" in last else "-"
    union = f"{last['union_density']:.4f}" if "union_density" in last else "-"
    print(f"| {method} | {last['round']} | {last['accuracy']:.4f} | {last['density']:.4f} | {pruned} | {union} "
          f"| {last['round_s']:.2f} |")
PY
