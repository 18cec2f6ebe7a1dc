"""The plain methods through the real round loop on digits: dense FedAvg learns, PDST keeps exactly d,
NST's union is denser than d while its pruned model is at d, also with gradient growth."""
import json

import numpy as np
import pytest

from flash_jax.config import Config
from flash_jax.fl.loop import run

SMALL = dict(dataset="digits", num_users=10, frac=0.5, local_bs=32, eval_every=5, quiet=True, seed=1)


@pytest.mark.slow
def test_dense_reaches_85_percent(digits, tmp_path):
    history = run(Config(experiment_type="dense", fl_rounds=20, workdir=str(tmp_path / "w"), **SMALL), digits)
    assert history[-1]["accuracy"] >= 0.85
    lines = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
    assert [m["round"] for m in lines] == [5, 10, 15, 20]
    for key in ("round", "accuracy", "loss", "density", "wall_s"):
        assert key in lines[-1]
    assert lines[-1]["density"] > 0.99
    assert json.load(open(tmp_path / "w" / "config.json"))["experiment_type"] == "dense"


def test_pdst_keeps_density_exactly_d(digits):
    history = run(Config(experiment_type="pdst", density=0.05, fl_rounds=6, **SMALL), digits)
    # MNISTNet's maskable tensors (5,5,10,20) and (5120,50): 0.05 of each is a whole number
    assert all(m["density"] == pytest.approx(0.05, abs=1e-9) for m in history)
    assert history[-1]["layer_density"] == pytest.approx({"conv2/kernel": 0.05, "fc1/kernel": 0.05}, abs=1e-9)


def test_nst_union_is_denser_than_d_and_pruned_model_is_d(digits):
    history = run(Config(experiment_type="nst", density=0.05, fl_rounds=4, **SMALL), digits)
    last = history[-1]
    assert last["union_density"] > 0.05
    assert last["density_pruned"] == pytest.approx(0.05, abs=1e-6)
    assert 0.0 <= last["accuracy_pruned"] <= 1.0


def test_nst_with_gradient_growth_runs(digits):
    history = run(Config(experiment_type="nst", growth="gradient", num_users=10, frac=0.5, fl_rounds=2,
                         eval_every=1, quiet=True), digits)
    assert history[-1]["union_density"] >= 0.05 and np.isfinite(history[-1]["loss"])
