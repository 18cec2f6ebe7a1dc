"""`python -m flash_jax.plot` on real short runs."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flash_jax.config import Config
from flash_jax.fl.loop import run
from flash_jax.plot import FIGURES


@pytest.mark.slow
def test_plot_writes_four_nonempty_pngs_from_real_runs(digits, tmp_path):
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


def test_plot_passes_over_a_line_cut_short_and_records_it_does_not_know(tmp_path):
    records = [{"round": r, "accuracy": 0.1 * r, "cumulative_bits": 8e9 * r, "layer_density": {"fc/kernel": 0.5}}
               for r in (1, 2)]
    workdir = tmp_path / "run"
    workdir.mkdir()
    lines = [json.dumps(r) for r in records] + ['{"note": "by hand"}', "[1, 2]", '{"round": 3, "accur']
    (workdir / "metrics.jsonl").write_text("\n".join(lines))  # the last line as a killed run leaves it
    result = subprocess.run([sys.executable, "-m", "flash_jax.plot", str(workdir), "--out", str(tmp_path / "p")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warning: {workdir / 'metrics.jsonl'}: passed over 3 line(s) that are not metric records"]
    assert all((tmp_path / "p" / name).stat().st_size > 0 for name in FIGURES)
    (workdir / "metrics.jsonl").write_text('{"round": 1, "accur')
    result = subprocess.run([sys.executable, "-m", "flash_jax.plot", str(workdir)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().endswith("metrics.jsonl holds no metric records")
