"""`python -m flash_jax.plot` on real short runs."""
import subprocess
import sys

import numpy as np
from PIL import Image

from flash_jax.config import Config
from flash_jax.data.sources import load_dataset
from flash_jax.fl.loop import run
from flash_jax.plot import FIGURES


def test_plot_writes_four_nonempty_pngs_from_real_runs(tmp_path):
    digits = load_dataset("digits")
    for method in ("dense", "nst"):
        run(Config(experiment_type=method, num_users=6, frac=0.5, fl_rounds=2, eval_every=1, quiet=True,
                   workdir=str(tmp_path / method)), digits)
    out = tmp_path / "plots"
    result = subprocess.run([sys.executable, "-m", "flash_jax.plot", str(tmp_path / "dense"), str(tmp_path / "nst"),
                             "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in FIGURES:
        pixels = np.asarray(Image.open(out / name).convert("L"))
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert pixels.min() < 128 < pixels.max()  # something is drawn on the white canvas


def test_plot_of_a_missing_run_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flash_jax.plot", str(tmp_path / "nothing")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "metrics.jsonl" in result.stderr
