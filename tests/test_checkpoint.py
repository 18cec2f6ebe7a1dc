"""Checkpoints and resume: full-state round trip, bit-exact resume, damaged checkpoints, SIGKILL, the
settings a workdir keeps (config.json and the checkpoints themselves), and a checkpoint of another
state format."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from flash_jax.config import Config, ConfigError
from flash_jax.fl import checkpoint
from flash_jax.fl.checkpoint import Checkpoints
from flash_jax.fl.loop import run
from flash_jax.fl.round import run_round
from flash_jax.fl.state import init_state
from flash_jax.fl.setup import build_setup
from tests.runs import REPO, SMALL, cli, final_state, metric_lines, refused, small


def test_round_trip_of_the_full_state(digits, tmp_path):
    config = Config(experiment_type="jmwst", hetero_client=True, num_users=6, frac=0.5, init_frac=0.2, init_epoch=1,
                    quiet=True)
    setup = build_setup(config, digits)
    state, _ = run_round(setup, init_state(setup))
    state = state.replace(comm=state.comm.replace(cumulative_bits=2**40))  # counters beyond int32 survive
    checkpoints = Checkpoints(str(tmp_path))
    history = [{"round": 1, "accuracy": 0.5, "layer_density": {"a": 0.1}}]
    checkpoints.save(state, history, config)
    restored, restored_history = checkpoints.restore_latest(init_state(setup))
    chex.assert_trees_all_equal(restored, state)
    assert restored_history == history
    assert isinstance(restored.clients.level, np.ndarray) and restored.round == 1


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    dict(experiment_type="dense"),
    dict(experiment_type="nst"),  # every client's own mask
    dict(experiment_type="jmwst", hetero_client=True, init_frac=0.2, init_epoch=1),  # level masks, budgets
    dict(experiment_type="sparsyfed"),  # Powerprop's stored weights, the union model
    dict(experiment_type="prunefl", prunefl_adjust_every=1, prunefl_ip_max_rounds=20, prunefl_ip_adjust_every=5),
])
def test_resume_after_a_damaged_checkpoint_is_bit_exact(digits, tmp_path, settings, capsys):
    reference = Config(num_users=6, frac=0.5, fl_rounds=3, eval_every=1, checkpoint_every=1, quiet=True,
                       workdir=str(tmp_path / "a"), **settings)
    run(reference, digits)
    resumed = Config(**{**reference.to_dict(), "workdir": str(tmp_path / "b")})
    shutil.copytree(reference.workdir, resumed.workdir)
    for root, _, files in os.walk(os.path.join(resumed.workdir, "checkpoints", "3")):
        for name in files:  # the newest checkpoint is garbage: the run falls back to round 2
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    run(resumed, digits)
    err = capsys.readouterr().err
    assert "checkpoint of round 3 is unreadable" in err and "from its checkpoint of round 2" in err
    assert metric_lines(resumed.workdir) == metric_lines(reference.workdir)
    assert [m["round"] for m in metric_lines(resumed.workdir)] == [1, 2, 3]
    chex.assert_trees_all_equal(final_state(resumed, digits), final_state(reference, digits))


def test_other_settings_are_refused_and_more_rounds_extend(digits, tmp_path):
    config = Config(experiment_type="pdst", num_users=6, frac=0.5, fl_rounds=2, eval_every=1, quiet=True,
                    workdir=str(tmp_path / "w"))
    run(config, digits)
    with pytest.raises(ConfigError, match=r"--density 0.05 there, 0.1 now.*--seed 1 there, 2 now"):
        run(Config(**{**config.to_dict(), "density": 0.1, "seed": 2}), digits)
    run(Config(**{**config.to_dict(), "fl_rounds": 3}), digits)
    assert [m["round"] for m in metric_lines(config.workdir)] == [1, 2, 3]
    assert json.load(open(os.path.join(config.workdir, "config.json")))["fl_rounds"] == 3


def _cli(workdir):
    return [sys.executable, "run.py", "--experiment_type", "nst", "--num_users", "6", "--frac", "0.5",
            "--fl_rounds", "6", "--eval_every", "1", "--checkpoint_every", "1", "--quiet", "--workdir", str(workdir)]


def _kill_when(workdir, condition, timeout=300.0) -> bool:
    """Start the run, SIGKILL it as soon as `condition(checkpoint dir entries)` holds; False if it
    finished first."""
    proc = subprocess.Popen(_cli(workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder, deadline = os.path.join(workdir, "checkpoints"), time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            entries = os.listdir(folder) if os.path.isdir(folder) else []
            if condition(entries):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.001)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigkill_during_training_and_during_a_save_loses_nothing(digits, tmp_path):
    workdir = tmp_path / "killed"
    # killed while round 3 trains (the checkpoint of round 2 is complete) ...
    assert _kill_when(workdir, lambda entries: "2" in entries)
    # ... and, after resuming, in the middle of writing a checkpoint (orbax's temporary folder exists)
    caught = any(_kill_when(workdir, lambda entries: any(not e.isdigit() for e in entries)) for _ in range(3))
    assert caught, "never caught a checkpoint save in progress"
    finished = subprocess.run(_cli(workdir), cwd=REPO, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    reference = Config(experiment_type="nst", num_users=6, frac=0.5, fl_rounds=6, eval_every=1, checkpoint_every=1,
                       quiet=True, workdir=str(tmp_path / "reference"))
    run(reference, digits)
    assert metric_lines(workdir) == metric_lines(reference.workdir)
    chex.assert_trees_all_equal(final_state(Config(**{**reference.to_dict(), "workdir": str(workdir)}), digits),
                                final_state(reference, digits))


def copy_of(finished, tmp_path):
    """A copy of the finished workdir to change."""
    shutil.copytree(finished.workdir, tmp_path / "w")
    return str(tmp_path / "w")


def snapshot(folder):
    """Every file under `folder` and when it was last written."""
    return {os.path.join(root, f): os.path.getmtime(os.path.join(root, f))
            for root, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("change, match", [
    (["--density", "0.2"], "--density 0.05 there, 0.2 now"),  # config.json deleted, another density
    (["--model_type", "leaf_cnn"], "--model_type 'mnistnet' there, 'leaf_cnn' now"),  # ... another model
    (["--experiment_type", "spdst"], "--experiment_type 'pdst' there, 'spdst' now"),
])
def test_without_config_json_the_checkpoints_settings_refuse_another_run(finished, tmp_path, capsys, change, match):
    workdir = copy_of(finished, tmp_path)
    os.remove(os.path.join(workdir, "config.json"))
    before = snapshot(workdir)
    refused(small("--workdir", workdir, *change), capsys, match)
    assert snapshot(workdir) == before  # nothing overwritten, no lock left behind


def test_a_missing_config_json_is_rewritten_from_the_checkpoint(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    os.remove(os.path.join(workdir, "config.json"))
    assert cli(SMALL + ["--workdir", workdir], capsys)[0] == 0
    assert json.load(open(os.path.join(workdir, "config.json")))["density"] == 0.05


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_corrupt_config_json_is_one_line(finished, tmp_path, capsys, content):
    workdir = copy_of(finished, tmp_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(content)
    refused(SMALL + ["--workdir", workdir], capsys, "config.json")


def test_fewer_rounds_than_done_is_refused(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    before = snapshot(workdir)
    refused(small("--workdir", workdir, "--fl_rounds", "2"), capsys, "has done 4 rounds")
    assert snapshot(workdir) == before


def test_metrics_without_a_checkpoint_are_set_aside(finished, tmp_path, capsys):
    workdir = copy_of(finished, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    old = open(os.path.join(workdir, "metrics.jsonl")).read()
    argv = small("--workdir", workdir, "--fl_rounds", "1")
    status, err = cli(argv, capsys)
    assert status == 0 and any("no checkpoint to continue from" in line for line in err)
    aside = [f for f in os.listdir(workdir) if f.startswith("metrics.jsonl.old-")]
    assert len(aside) == 1 and open(os.path.join(workdir, aside[0])).read() == old
    assert [m["round"] for m in metric_lines(workdir)] == [1]


def test_a_checkpoint_of_another_state_format_is_refused(digits, tmp_path, monkeypatch):
    config = Config(experiment_type="pdst", num_users=4, frac=0.5, fl_rounds=1, quiet=True, workdir=str(tmp_path))
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", checkpoint.FORMAT_VERSION - 1)
    run(config, digits)
    monkeypatch.undo()
    with pytest.raises(checkpoint.CheckpointFormatError, match=r"has state format 1, this flash_jax reads format 2"):
        run(dataclasses.replace(config, fl_rounds=2), digits)
