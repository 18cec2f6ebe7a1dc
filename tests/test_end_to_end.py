"""End to end on scikit-learn's digits through the real round loop, and the command line's errors."""
import json
import os
import subprocess
import sys

import pytest

from flash_jax.config import Config
from flash_jax.data.sources import load_dataset
from flash_jax.fl.loop import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(dataset="digits", num_users=10, frac=0.5, local_bs=32, eval_every=5, quiet=True, seed=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


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


def test_a_finished_run_into_a_closed_pipe_exits_0_without_a_traceback(tmp_path):
    command = f"{sys.executable} run.py --experiment_type dense --num_users 4 --frac 0.5 --fl_rounds 1 --quiet | true"
    result = subprocess.run(["bash", "-c", command + "; exit ${PIPESTATUS[0]}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, flag", [
    (["--density", "0"], "--density"),
    (["--density=1.5"], "--density"),
    (["--alpha", "0"], "--alpha"),
    (["--alpha=-1"], "--alpha"),
    (["--frac", "0"], "--frac"),
    (["--frac", "1.5"], "--frac"),
    (["--num_users", "0"], "--num_users"),
    (["--num_users", "5000"], "--num_users"),
    (["--dataset", "nope"], "--dataset"),
    (["--model_type", "nope"], "--model_type"),
    (["--local_bs", "abc"], "--local_bs"),
    (["--experiment_type", "fedx"], "--experiment_type"),
    (["--subsample_method", "median"], "--subsample_method"),
    (["--clients_per_chunk", "-1"], "--clients_per_chunk"),
    (["--distributed"], "--distributed"),  # jax.distributed.initialize finds no cluster here
])
def test_bad_input_is_one_line_exit_2(args, flag, tmp_path):
    workdir = tmp_path / "w"
    result = cli(*args, "--workdir", str(workdir), "--fl_rounds", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_missing_data_is_one_line_exit_2(tmp_path):
    result = cli("--dataset", "cifar10", "--path", str(tmp_path), "--data_dir", str(tmp_path),
                 "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cifar10" in result.stderr
    assert not (tmp_path / "w").exists()


def test_unwritable_workdir_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("--fl_rounds", "1", "--num_users", "10", "--workdir", str(blocker / "sub"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--workdir" in result.stderr


def test_scale_flags_reach_the_config():
    from run import parse_config
    config = parse_config(["--clients_per_chunk", "100", "--distributed"])
    assert (config.clients_per_chunk, config.distributed) == (100, True)
    assert (parse_config([]).clients_per_chunk, parse_config([]).distributed) == (0, False)


def test_authors_command_line_is_accepted_by_the_parser():
    from run import build_parser
    args = build_parser().parse_args(["--alpha=1", "--init_frac=0.05", "--init_epoch=10", "--experiment_type=spdst"])
    assert (args.alpha, args.init_frac, args.init_epoch, args.experiment_type) == (1.0, 0.05, 10, "spdst")
