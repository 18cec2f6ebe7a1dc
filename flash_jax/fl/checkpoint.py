"""Checkpoints of the round state with orbax; each holds the settings it was made with.

The state pytree of `fl.loop` is everything that crosses rounds: RNG keys are pure functions of
(seed, stream, round, client) and every client update starts a fresh optimizer, so neither needs
saving. Arrays go through orbax's StandardSave; the integer counters (whose bit totals outgrow
int32), the metric history so far and the config go through JsonSave, all in one atomic
CheckpointManager step named by the round.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from flash_jax.config import Config
from flash_jax.workdir import strict

COUNTERS = ("round", "cumulative_bits", "dense_cumulative_bits")


def _drop_closed_loop_callbacks(unraisable, previous=sys.unraisablehook) -> None:
    """A restore that fails on a damaged file leaves tensorstore callbacks that later reach orbax's
    closed asyncio loop and print one traceback each; the warning of restore_latest says it all."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        previous(unraisable)


sys.unraisablehook = _drop_closed_loop_callbacks


class Checkpoints:
    """The workdir's checkpoints/ folder: save after a round, restore the newest readable one."""

    def __init__(self, workdir: str, keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                              options=options)

    def save(self, state: dict[str, Any], history: list[dict[str, Any]], config: Config) -> None:
        arrays = {k: v for k, v in state.items() if k not in COUNTERS and jax.tree.leaves(v)}
        record = strict({"counters": {k: int(state[k]) for k in COUNTERS}, "history": history,
                         "config": config.to_dict()})
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


def saved_settings(workdir: str) -> tuple[int, dict[str, Any]] | None:
    """(round, settings) of the workdir's newest checkpoint whose record reads, without its arrays;
    None if there is none (and then nothing is created)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    manager = Checkpoints(workdir)._manager
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            record = manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
        except Exception:  # a damaged step of any kind: restore_latest warns about it
            continue
        return record["counters"]["round"], record["config"]
    return None
