"""Runs that cannot corrupt each other or fail silently: the workdir lock, settings inside the
checkpoints, divergence, refusals before anything is written, interrupts, quiet failures, --help."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import run as cli_module
from flash_jax.config import GROUPS, Config
from flash_jax.data.sources import DATASETS
from flash_jax.fl import loop
from flash_jax.fl.stops import Interrupted
from tests.test_checkpoint import REPO, _cli_env, assert_same_state, digits, final_state, metric_lines  # noqa: F401

SMALL = ["--experiment_type", "pdst", "--num_users", "6", "--frac", "0.5", "--fl_rounds", "4", "--eval_every", "1",
         "--checkpoint_every", "1", "--quiet"]


def small(*extra):
    """SMALL with the flags in `extra` replaced (run.py refuses a repeated flag)."""
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    kept = [a for i, a in enumerate(SMALL) if a not in given and not (i and SMALL[i - 1] in given)]
    return kept + list(extra)


def cli(argv, capsys):
    """run.py's main in this process: (exit status, stderr lines)."""
    try:
        status = cli_module.main(argv)
    except SystemExit as stop:  # argparse's own refusals
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def refused(argv, capsys, match):
    status, err = cli(argv, capsys)
    assert status == 2 and len(err) == 1 and match in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-round PDST workdir (copy it before changing it) and its config."""
    workdir = str(tmp_path_factory.mktemp("finished") / "w")
    config = cli_module.parse_config(SMALL + ["--workdir", workdir])
    loop.run(config)
    return config


def copy_of(finished, tmp_path):
    shutil.copytree(finished.workdir, tmp_path / "w")
    return str(tmp_path / "w")


def snapshot(folder):
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


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    status, err = cli(small("--workdir", workdir, "--lr_start", "1000", "--lr_end", "1000", "--clip_grad_norm", "0"),
                      capsys)
    assert status == 3 and len(err) == 1 and "pdst diverged at round 1" in err[0], err
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]  # stage 0, never the diverged state
    for name in ("metrics.jsonl", "config.json"):
        with open(os.path.join(workdir, name)) as f:
            for line in f.read().splitlines() if name.endswith("l") else [f.read()]:
                json.loads(line, parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))


def test_a_finite_but_absurd_loss_stops_the_run_as_diverged(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    absurd = small("--workdir", workdir, "--lr_start", "1000", "--lr_end", "1000")  # clipped steps: a finite loss
    status, err = cli(absurd, capsys)
    assert status == 3 and len(err) == 1, err
    assert "pdst diverged at round 1: training loss" in err[0] and "above --max_train_loss 1000" in err[0], err
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]
    status, err = cli(small("--lr_start", "1000", "--lr_end", "1000", "--max_train_loss", "1e30"), capsys)
    assert status == 0, err  # the limit is the user's to move


@pytest.mark.parametrize("argv, match", [
    (["--model_type", "vgg16"], "needs images of at least 32x32"),
    (["--mask_pattern", "nomatch"], "matches no tensor"),
    (["--mask_pattern", "(["], "not a regular expression"),
    (["--seed=-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--experiment_type", "spdst", "--hetero_client", "--hetero_proportions", "0.5,nan,0.5"], "nan is not a number"),
    (["--experiment_type", "spdst", "--hetero_client", "--hetero_levels", "1,nan,0.5"], "nan is not a number in (0, 1]"),
    (["--alpha", "inf"], "--alpha=inf"),
    (["--lr_start", "inf"], "--lr_start=inf"),
    (["--experiment_type", "spdst", "--density", "1e-9"], "would keep no weight"),
    (["--dens", "0"], "unrecognized arguments: --dens"),
    (["--density", "0.1", "--density", "0.0"], "--density is given more than once"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, argv, match):
    workdir = tmp_path / "w"
    refused(small(*argv, "--workdir", str(workdir)), capsys, match)
    assert not workdir.exists()


def test_an_empty_workdir_is_refused(capsys):
    refused(SMALL + ["--workdir", ""], capsys, "--workdir")


def test_quiet_about_orbax_loop_callbacks(capsys):
    """What a failed orbax restore leaves behind (tensorstore callbacks reaching a closed asyncio loop)."""
    sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("Event loop is closed"),
                                             exc_traceback=None, err_msg=None, object=None))
    assert capsys.readouterr().err == ""


def test_help_is_grouped_and_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        cli_module.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"\n{group}:\n" in text for group in GROUPS)
    assert all(name in text for name in DATASETS)
    flat = " ".join(text.split())
    assert "--density FLOAT target density d of the maskable tensors, in (0, 1]; valid: in (0, 1] (default: 0.05)" in flat
    assert "--feddst_momentum FLOAT" in flat and "valid: in [0, 1) (default: 0.9)" in flat  # a knob's range


def test_sigint_stops_at_the_round_boundary_and_resumes(finished, digits, tmp_path, monkeypatch):
    config = Config(**{**finished.to_dict(), "workdir": str(tmp_path / "w")})
    real_round = loop.run_round

    def interrupted_round(setup, state):
        if state.round == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the round trains
        return real_round(setup, state)

    monkeypatch.setattr(loop, "run_round", interrupted_round)
    with pytest.raises(Interrupted, match="interrupted at round 2; run the same command to continue") as stop:
        loop.run(config)
    assert stop.value.exit_status == 130
    monkeypatch.setattr(loop, "run_round", real_round)
    loop.run(config)
    assert metric_lines(config.workdir) == metric_lines(finished.workdir)
    assert_same_state(final_state(config, digits), final_state(finished, digits))


def _start(workdir):
    return subprocess.Popen([sys.executable, "run.py", *SMALL, "--workdir", str(workdir)], cwd=REPO,
                            env=_cli_env(str(workdir)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the moment came"
        time.sleep(0.01)


def test_a_second_run_on_a_workdir_in_use_is_refused(finished, tmp_path, capsys):
    workdir = tmp_path / "w"
    first = _start(workdir)
    _wait_for(lambda: os.path.isdir(workdir / "checkpoints"), first)
    message = refused(SMALL + ["--workdir", str(workdir)], capsys, "is in use by pid")
    assert str(first.pid) in message
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert metric_lines(workdir) == metric_lines(finished.workdir)


def test_sigterm_mid_run_then_resume_equals_an_uninterrupted_run(finished, digits, tmp_path):
    workdir = tmp_path / "w"
    first = _start(workdir)
    _wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "1"), first)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("; run the same command to continue")
    second = _start(workdir)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0 and "resuming" in err, err
    assert metric_lines(workdir) == metric_lines(finished.workdir)
    resumed = Config(**{**finished.to_dict(), "workdir": str(workdir)})
    assert_same_state(final_state(resumed, digits), final_state(finished, digits))


class StopBeforeTraining(Exception):
    """Raised where the run would start creating state: every check has passed by then."""


VALUES = {
    "--experiment_type": st.sampled_from(["dense", "nst", "pdst", "spdst", "jmwst", "feddst", "fedavg"]),
    "--dataset": st.sampled_from(["digits", "digits", "cifar10", "mnist", "imagenet"]),
    "--model_type": st.sampled_from(["mnistnet", "leaf_cnn", "vgg16", "resnet"]),
    "--density": st.sampled_from(["0.05", "1", "0", "1e-9", "nan", "inf", "-0.1", "x"]),
    "--alpha": st.sampled_from(["1", "1000", "0", "inf", "nan"]),
    "--num_users": st.sampled_from(["6", "1", "0", "-3", "100000", "2.5"]),
    "--frac": st.sampled_from(["0.5", "1", "0", "1.5", "nan"]),
    "--lr_start": st.sampled_from(["0.1", "inf", "-1", "nan"]),
    "--seed": st.sampled_from(["0", "-1", str(2**32 - 1), str(2**32)]),
    "--mask_pattern": st.sampled_from(["kernel", "conv2/kernel", "nomatch", "([", ""]),
    "--hetero_levels": st.sampled_from(["1,0.5", "0.5,1,0.75", "1,nan", "2", "1,1", "a,b", ""]),
    "--hetero_proportions": st.sampled_from(["0.5,0.5", "0.3,0.3,0.4", "0.5,nan,0.5", "-1,2"]),
    "--conv_impl": st.text(max_size=4),
    "--eval_every": st.sampled_from(["1", "0"]),
    "--workdir": st.sampled_from(["w", ""]),
    "--hetero_client": st.just(None),
    "--iid": st.just(None),
    "--dens": st.just("0.1"),
}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(sorted(VALUES)), max_size=5).flatmap(
    lambda flags: st.tuples(*[st.tuples(st.just(f), VALUES[f]) for f in flags])))
def test_any_command_line_is_run_or_refused_in_one_line(tmp_path, monkeypatch, capsys, flags):
    def stop(setup):
        raise StopBeforeTraining

    monkeypatch.setattr(loop, "init_state", stop)
    workdir = tmp_path / f"w{time.monotonic_ns()}"
    argv = ["--quiet"]
    for flag, value in flags:
        argv += [flag] if value is None else [f"{flag}={workdir if flag == '--workdir' and value else value}"]
    try:
        status, err = cli(argv, capsys)
    except StopBeforeTraining:
        return
    assert status == 2 and len(err) == 1 and "Traceback" not in err[0], (argv, err)
    assert not workdir.exists()


@pytest.mark.parametrize("name", ["mnistnet", "leaf_cnn"])  # vgg16 (32: five 2x2 pools) takes 40 s to check on CPU
def test_min_input_size_is_the_smallest_image_a_model_takes(name):
    import math

    import jax
    import jax.numpy as jnp

    from flash_jax.models import get_model, init_variables

    def usable(side):
        """Every tensor non-empty and a finite output (VGG's mean over an empty map is NaN)."""
        model = get_model(name, 10)
        try:
            variables = init_variables(model, jax.random.PRNGKey(0), (side, side, 1))
        except Exception:  # a negative shape
            return False
        if any(math.prod(leaf.shape) == 0 for leaf in jax.tree.leaves(variables)):
            return False
        logits = model.module.apply(variables, jnp.ones((1, side, side, 1)), train=False)
        return bool(jnp.all(jnp.isfinite(logits)))

    side = get_model(name, 10).min_input_size
    assert usable(side) and not usable(side - 1)
