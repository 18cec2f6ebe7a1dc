"""The command line: every input is run or refused in one line (exit 2) before anything is written,
--help lists every group and choice, and a finished run's output may go into a closed pipe."""
import os
import subprocess
import sys
import time
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import run
from flash_jax.config import GROUPS
from flash_jax.data.sources import DATASETS
from flash_jax.fl import checkpoint, loop
from tests.runs import REPO, SMALL, cli, refused, small


def test_a_finished_run_into_a_closed_pipe_exits_0_without_a_traceback(tmp_path):
    command = f"{sys.executable} run.py --experiment_type dense --num_users 4 --frac 0.5 --fl_rounds 1 --quiet | true"
    result = subprocess.run(["bash", "-c", command + "; exit ${PIPESTATUS[0]}"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def run_py(*args, cwd=REPO):
    """run.py as a process of its own."""
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *args], capture_output=True, text=True,
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
    result = run_py(*args, "--workdir", str(workdir), "--fl_rounds", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_missing_data_is_one_line_exit_2(tmp_path):
    result = run_py("--dataset", "cifar10", "--path", str(tmp_path), "--data_dir", str(tmp_path),
                    "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cifar10" in result.stderr
    assert not (tmp_path / "w").exists()


def test_unwritable_workdir_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_py("--fl_rounds", "1", "--num_users", "10", "--workdir", str(blocker / "sub"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--workdir" in result.stderr


def test_scale_flags_reach_the_config():
    config = run.parse_config(["--clients_per_chunk", "100", "--distributed"])
    assert (config.clients_per_chunk, config.distributed) == (100, True)
    assert (run.parse_config([]).clients_per_chunk, run.parse_config([]).distributed) == (0, False)


def test_authors_command_line_is_accepted_by_the_parser():
    args = run.build_parser().parse_args(["--alpha=1", "--init_frac=0.05", "--init_epoch=10", "--experiment_type=spdst"])
    assert (args.alpha, args.init_frac, args.init_epoch, args.experiment_type) == (1.0, 0.05, 10, "spdst")


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


def test_quiet_about_orbax_loop_callbacks():
    """What a failed orbax restore leaves behind (tensorstore callbacks reaching a closed asyncio loop)
    is dropped; every other unraisable exception reaches the hook that was there before."""
    def unraisable(error):
        return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None, err_msg=None,
                                     object=None)
    closed_loop, other = unraisable(RuntimeError("Event loop is closed")), unraisable(RuntimeError("else"))
    seen = []
    for case in (closed_loop, other):
        checkpoint._drop_closed_loop_callbacks(case, previous=seen.append)
    assert seen == [other]


def test_help_is_grouped_and_lists_every_choice(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"\n{group}:\n" in text for group in GROUPS)
    assert all(name in text for name in DATASETS)
    flat = " ".join(text.split())
    assert "--density FLOAT target density d of the maskable tensors, in (0, 1]; valid: in (0, 1] (default: 0.05)" in flat
    assert "--feddst_momentum FLOAT" in flat and "valid: in [0, 1) (default: 0.9)" in flat  # a knob's range


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
