"""The run: checks, the workdir (lock, resume, metrics), the method's stage 1, the rounds with a
progress bar, evaluation every --eval_every rounds and checkpoints every --checkpoint_every.

State that crosses rounds is one typed pytree (fl/state.py). All randomness comes from keys derived
from (seed, stream, round, client), so results do not depend on how the cohort is computed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, NamedTuple

import jax
from tqdm.auto import tqdm

from flash_jax import hosts, processes
from flash_jax.config import Config, ConfigError
from flash_jax.data.sources import Dataset, load_dataset
from flash_jax.fl.checkpoint import Checkpoints, saved_settings
from flash_jax.fl.evaluate import evaluate_state
from flash_jax.fl.round import run_round
from flash_jax.fl.setup import Setup, build_setup
from flash_jax.fl.state import RoundState, init_state
from flash_jax.fl.stops import Interrupted, StopSignals, check_finite, writing
from flash_jax.plugins import load_plugins
from flash_jax.settings import validate
from flash_jax.workdir import (WorkdirLock, append_jsonl, check_workdir, rewrite_metrics, set_old_metrics_aside,
                               write_json)


def prepare_workdir(workdir: str, config: Config, setup: Setup) -> str:
    """(Re)write config.json, with what the settings resolved to; returns the metrics.jsonl path."""
    resolved = {"clients_per_round": config.clients_per_round, "maskable_tensors": list(setup.tensors.paths),
                "num_maskable": setup.tensors.num_maskable, "num_classes": int(setup.model.module.num_classes),
                "mask_pattern": config.mask_pattern or setup.model.mask_pattern,
                "jax_backend": jax.default_backend(), "jax_version": jax.__version__}
    write_json(os.path.join(workdir, "config.json"), {**config.to_dict(), "resolved": resolved})
    return os.path.join(workdir, "metrics.jsonl")


def run(config: Config, dataset: Dataset | None = None) -> list[dict[str, Any]]:
    """Train a federation end to end; returns the metric records (also written to the workdir).

    Every check that needs the data or the model runs before the workdir is touched. With a workdir
    (locked for the run) the state is checkpointed every --checkpoint_every rounds (and after stage
    1 and the last round); running again on the same workdir continues from the newest checkpoint,
    and the metric lines after it are recomputed, so a killed run loses nothing and duplicates
    nothing. With several processes (--distributed) each calls this; process 0 alone takes the
    lock and writes files. Raises DivergenceError or Interrupted (fl.stops) when the run stops early.
    """
    if config.plugin:
        load_plugins(config.plugin)
    processes.start(validate(config), auto_devices=False)
    return train(config, dataset)


def train(config: Config, dataset: Dataset | None = None) -> list[dict[str, Any]]:
    """`run` for a Config that is valid (settings.validate), its devices and processes started."""
    # before the signal handlers: Ctrl-C stops a download at once (and leaves it to be continued)
    dataset = dataset or load_dataset(config.dataset, config.path, config.data_dir, config.download,
                                      quiet=config.quiet or not hosts.is_writer())
    with StopSignals() as stops:
        setup = build_setup(config, dataset)
        state = init_state(setup)
        if not config.workdir:
            return _train(setup, state, [], RunFiles(None, None), stops, resumed=False)
        with contextlib.ExitStack() as writer:
            metrics_path = _open_workdir(config, setup, writer)
            checkpoints = Checkpoints(config.workdir)
            restored = checkpoints.restore_latest(state)
            history = []
            if restored:
                state, history = restored
                if hosts.is_writer():
                    print(f"resuming {config.workdir} from its checkpoint of round {state.round}", file=sys.stderr)
            elif metrics_path:
                set_old_metrics_aside(metrics_path)
            if metrics_path:
                rewrite_metrics(metrics_path, history)
            return _train(setup, state, history, RunFiles(checkpoints, metrics_path), stops, resumed=bool(restored))


def _open_workdir(config: Config, setup: Setup, writer: contextlib.ExitStack) -> str | None:
    """Process 0 locks the workdir (for as long as `writer` is open), checks that this run may
    continue it and writes config.json; returns the metrics path there (None elsewhere). The other
    processes learn whether that worked, so a refusal stops all of them."""
    failure, saved = None, saved_settings(config.workdir)  # every process: orbax opens it collectively
    if hosts.is_writer():
        try:
            writer.enter_context(WorkdirLock(config.workdir))
            check_workdir(config.workdir, config, saved)
            metrics_path = prepare_workdir(config.workdir, config, setup)
        except ConfigError as err:
            failure = err
        except OSError as err:
            failure = ConfigError(f"--workdir {config.workdir} is not writable: {err.strerror or err}")
    if hosts.max_over_processes(failure is not None):
        raise failure or ConfigError(f"--workdir {config.workdir}: process 0 refused it (its message says why)")
    return metrics_path if hosts.is_writer() else None


class RunFiles(NamedTuple):
    """Where a run writes: its checkpoints (None without a workdir) and its metrics file (None
    without a workdir, and on every process but process 0)."""

    checkpoints: Checkpoints | None
    metrics_path: str | None


def _train(setup: Setup, state: RoundState, history: list[dict[str, Any]], files: RunFiles, stops: StopSignals,
           resumed: bool) -> list[dict[str, Any]]:
    """The method's stage 1 (unless resumed: the state is past it) and the rounds from state.round on."""
    checkpoints, metrics_path = files
    config, start, saved_round = setup.config, time.perf_counter(), state.round if resumed else None
    if not resumed:
        if setup.method.stage1:  # one jitted call: the bar shows that it runs and for how long
            with tqdm(total=1, desc=f"{config.experiment_type} stage 1", disable=setup.compiled.quiet,
                      dynamic_ncols=True) as stage_bar:
                state, record = setup.method.stage1(setup, state)
                stage_bar.update(1)
            if config.workdir and hosts.is_writer():
                with writing(setup.method.stage1_record, None):
                    write_json(os.path.join(config.workdir, setup.method.stage1_record), record)
        if checkpoints:
            checkpoints.save(state, history, config)
            saved_round = state.round
    bar = tqdm(range(state.round, config.fl_rounds), desc=f"{config.experiment_type} rounds",
               initial=state.round, total=config.fl_rounds, disable=setup.compiled.quiet, dynamic_ncols=True)
    train_s, rounds_since_eval = 0.0, 0
    for r in bar:
        signum = hosts.max_over_processes(stops.signum or 0)  # every process stops at the same round
        if signum:
            stops.signum = stops.signum or signum
            break
        tic = time.perf_counter()
        new_state, info = run_round(setup, state)  # returns after the device work (it reads the losses)
        check_finite(config.experiment_type, r + 1, info["train_loss"], new_state.model.params,
                     config.max_train_loss)
        state = new_state
        train_s += time.perf_counter() - tic
        rounds_since_eval += 1
        if (r + 1) % config.eval_every == 0 or r + 1 == config.fl_rounds:
            record = {"round": r + 1, **evaluate_state(setup, state), **info,
                      "round_s": round(train_s / rounds_since_eval, 4),
                      "wall_s": round(time.perf_counter() - start, 3)}
            train_s, rounds_since_eval = 0.0, 0
            history.append(record)
            if metrics_path:
                with writing(f"round {r + 1}'s line of {metrics_path}", checkpoints.last_saved):
                    append_jsonl(metrics_path, record)
            bar.set_postfix(acc=f"{record['accuracy']:.4f}", density=f"{record['density']:.4f}")
        if checkpoints and ((r + 1) % config.checkpoint_every == 0 or r + 1 == config.fl_rounds):
            checkpoints.save(state, history, config)
            saved_round = state.round
    bar.close()
    if stops.signum is not None:
        if checkpoints and saved_round != state.round:
            checkpoints.save(state, history, config)
        raise Interrupted(state.round, stops.signum, saved=checkpoints is not None)
    return history
