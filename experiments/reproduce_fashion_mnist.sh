#!/usr/bin/env bash
# The Fashion-MNIST reproduction (experiments/fashion_mnist_reproduction.md): MNISTNet on Fashion-MNIST
# (Debian's dataset-fashion-mnist), N=100, K=10, alpha 1, d=0.05, seed 1, 100 rounds, for every method;
# then the table (experiments/summarize.py) and the plots (python -m flash_jax.plot). A method whose
# workdir already holds all 100 rounds is not rerun.
# Usage: [DENSITY=d] bash experiments/reproduce_fashion_mnist.sh [OUTDIR [METHOD ...]]   (default d 0.05)
#   about 10-20 minutes per method on 2 CPU cores (about 3.5 hours for all twelve)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/reproduce_fashion_mnist}
shift || true
rounds=100
all=(dense pdst nst spdst jmwst hetero_spdst hetero_jmwst feddst topk sparsyfed prunefl prunefl_capped)
methods=("${@:-${all[@]}}")
common=(--dataset fashion_mnist --model_type mnistnet --num_users 100 --frac 0.1 --alpha 1 --density "${DENSITY:-0.05}"
        --seed 1 --fl_rounds $rounds --eval_every 5 --quiet)
for name in "${methods[@]}"; do
  case $name in
    hetero_spdst) flags=(--experiment_type spdst --hetero_client) ;;
    hetero_jmwst) flags=(--experiment_type jmwst --hetero_client) ;;
    # PruneFL adjusts every 10 rounds here, not 50: 100 rounds would see one adjustment (its own runs span
    # thousands); capped: at most d of the maskable weights, for a comparison at FLASH's density
    prunefl) flags=(--experiment_type prunefl --prunefl_adjust_every 10) ;;
    prunefl_capped) flags=(--experiment_type prunefl --prunefl_adjust_every 10 --prunefl_max_density 0.05) ;;
    dense|pdst|nst|spdst|jmwst|feddst|topk|sparsyfed) flags=(--experiment_type "$name") ;;
    *) echo "unknown method $name; choose from ${all[*]}" >&2; exit 2 ;;
  esac
  if python - "$out/$name/metrics.jsonl" $rounds <<'PY' 2>/dev/null; then echo "$name: done already"; continue; fi
import json, sys
lines = open(sys.argv[1]).read().splitlines()
sys.exit(0 if lines and json.loads(lines[-1])["round"] == int(sys.argv[2]) else 1)
PY
  rm -rf "${out:?}/$name"
  echo "$name: $(date +%T) python run.py ${common[*]} ${flags[*]} --workdir $out/$name"
  python run.py "${common[@]}" "${flags[@]}" --workdir "$out/$name"
done
python experiments/summarize.py "$out" "${all[@]}" | tee "$out/table.md"
python -m flash_jax.plot "$out"/*/ --out "$out"
