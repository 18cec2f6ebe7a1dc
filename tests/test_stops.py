"""A run that stops on its own or is stopped: divergence (a NaN or an absurd loss) and SIGINT or SIGTERM
end in one line, keep the last good checkpoint, and the same command then continues to the
uninterrupted run's end."""
import json
import os
import signal

import chex
import pytest

from flash_jax.config import Config
from flash_jax.fl import loop
from flash_jax.fl.stops import Interrupted
from tests.runs import cli, final_state, metric_lines, small, start, wait_for


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
    chex.assert_trees_all_equal(final_state(config, digits), final_state(finished, digits))


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_equals_an_uninterrupted_run(finished, digits, tmp_path):
    workdir = tmp_path / "w"
    first = start(workdir)
    wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "1"), first)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("; run the same command to continue")
    second = start(workdir)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0 and "resuming" in err, err
    assert metric_lines(workdir) == metric_lines(finished.workdir)
    resumed = Config(**{**finished.to_dict(), "workdir": str(workdir)})
    chex.assert_trees_all_equal(final_state(resumed, digits), final_state(finished, digits))
