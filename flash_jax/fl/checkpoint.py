"""Checkpoints of the round state with orbax, and the workdir rules for resuming a run.

The state pytree of `fl.loop` is everything that crosses rounds: RNG keys are pure functions of
(seed, stream, round, client) and every client update starts a fresh optimizer, so neither needs
saving. Arrays go through orbax's StandardSave; the integer counters (whose bit totals outgrow
int32), the metric history so far and the config go through JsonSave, all in one atomic
CheckpointManager step named by the round.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from flash_jax.config import Config, ConfigError

COUNTERS = ("round", "cumulative_bits", "dense_cumulative_bits")
# settings that may differ when a workdir is reopened: they change neither the state nor the metrics
# (the chunk size only to float rounding: how the sums are split)
RESUMABLE_CHANGES = ("fl_rounds", "quiet", "workdir", "checkpoint_every", "clients_per_chunk", "distributed")


class Checkpoints:
    """The workdir's checkpoints/ folder: save after a round, restore the newest readable one."""

    def __init__(self, workdir: str, keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                              options=options)

    def save(self, state: dict[str, Any], history: list[dict[str, Any]], config: Config) -> None:
        arrays = {k: v for k, v in state.items() if k not in COUNTERS and jax.tree.leaves(v)}
        record = {"counters": {k: int(state[k]) for k in COUNTERS}, "history": history, "config": config.to_dict()}
        self._manager.save(record["counters"]["round"], args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, template: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """(state, metric history) of the newest checkpoint that restores, the state shaped like
        `template` (a fresh state of the same run); an unreadable one is skipped with a warning.
        None when there is none."""
        arrays = {k: v for k, v in template.items() if k not in COUNTERS and jax.tree.leaves(v)}
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), arrays)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
            except Exception as err:  # a damaged step of any kind: fall back to the one before
                print(f"warning: checkpoint of round {step} is unreadable ({type(err).__name__}); "
                      "trying the previous one", file=sys.stderr)
                continue
            for newer in self._manager.all_steps():
                if newer > step:  # unreadable ones: the rounds are recomputed and saved again
                    shutil.rmtree(os.path.join(self._manager.directory, str(newer)))
            self._manager.reload()
            record = restored["record"]
            return {**template, **restored["state"], **record["counters"]}, record["history"]
        return None


def check_resumable(workdir: str, config: Config) -> None:
    """Refuse a workdir whose config.json differs from `config` in anything that changes results."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    current = config.to_dict()
    differing = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
    if differing:
        details = ", ".join(f"--{k} {saved.get(k)!r} there, {current[k]!r} now" for k in differing)
        raise ConfigError(f"--workdir {workdir} holds a run with other settings ({details}); "
                          "use another workdir or the same settings (only --fl_rounds may change)")


def rewrite_metrics(metrics_path: str, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl as of a checkpoint: lines written after it (and any cut short by a kill) go, and
    are written again as the rounds are recomputed."""
    with open(metrics_path + ".tmp", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in history)
    os.replace(metrics_path + ".tmp", metrics_path)
