"""Checkpoints of the round state with orbax; each holds the settings it was made with.

The state (fl/state.py) is saved as one pytree: its arrays through orbax's StandardSave, its Python
int counters (bit totals outgrow int32), the metric history so far, the config and the state's
format version through JsonSave, all in one atomic CheckpointManager step named by the round. A
checkpoint of another format version is refused rather than read into the wrong fields.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization, traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from flash_jax import hosts
from flash_jax.config import Config, ConfigError
from flash_jax.fl.mesh import client_mesh
from flash_jax.fl.state import FORMAT_VERSION, RoundState
from flash_jax.fl.stops import writing
from flash_jax.workdir import aside_path, non_finite_as_null


class CheckpointFormatError(ConfigError):
    """The workdir's checkpoint has another state layout than this version of flash_jax writes."""


def _host_local(a) -> bool:
    """A device array of this process alone in a multi-process run (the state before its first
    round): orbax writes only global arrays and numpy, so it goes as numpy."""
    return isinstance(a, jax.Array) and jax.process_count() > 1 and a.is_fully_addressable


def _abstract(a):
    """What orbax restores a leaf as: numpy stays numpy; a device array keeps its sharding if it
    spans processes, else comes back replicated over the devices (so it mixes with the mesh's
    arrays), on the default device when there is one."""
    if not isinstance(a, jax.Array):
        return jax.ShapeDtypeStruct(a.shape, a.dtype)
    mesh = client_mesh()
    sharding = a.sharding if not a.is_fully_addressable else NamedSharding(mesh, PartitionSpec()) if mesh else None
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)


def _parts(state: RoundState) -> tuple[dict, dict[str, int], dict]:
    """(arrays as a nested dict, int counters by dotted path, every node incl. empty ones)."""
    flat = traverse_util.flatten_dict(serialization.to_state_dict(state), keep_empty_nodes=True)
    arrays = {k: v for k, v in flat.items() if v is not traverse_util.empty_node and not isinstance(v, int)}
    counters = {".".join(k): int(v) for k, v in flat.items() if isinstance(v, int)}
    return traverse_util.unflatten_dict(arrays), counters, flat


def _drop_closed_loop_callbacks(unraisable, previous=sys.unraisablehook) -> None:
    """A restore that fails on a damaged file leaves tensorstore callbacks that later reach orbax's
    closed asyncio loop and print one traceback each; the warning of restore_latest says it all."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        previous(unraisable)


sys.unraisablehook = _drop_closed_loop_callbacks


class Checkpoints:
    """The workdir's checkpoints/ folder: save after a round, restore the newest readable one."""

    def __init__(self, workdir: str, keep: int = 3):
        self._directory = checkpoints_folder(workdir)
        self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self._directory, options=self._options)
        self.last_saved: int | None = None  # the round of the newest checkpoint known to be good

    def save(self, state: RoundState, history: list[dict[str, Any]], config: Config) -> None:
        arrays, counters, _ = _parts(state)
        arrays = jax.tree.map(lambda a: np.asarray(a) if _host_local(a) else a, arrays)
        record = non_finite_as_null({"format": FORMAT_VERSION, "counters": counters, "history": history,
                                     "config": config.to_dict()})
        with writing(f"the checkpoint of round {state.round} to {self._directory}", self.last_saved):
            self._manager.save(state.round, args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)), force=True)
            self._manager.wait_until_finished()
        self.last_saved = state.round

    def restore_latest(self, template: RoundState) -> tuple[RoundState, list[dict[str, Any]]] | None:
        """(state, metric history) of the newest checkpoint that restores, the state shaped like
        `template` (a fresh state of the same run); an unreadable one is skipped with a warning.
        None when there is none; CheckpointFormatError for one of another format."""
        arrays, _, flat = _parts(template)
        abstract = jax.tree.map(_abstract, arrays)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                record = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
            except Exception as err:  # a damaged step of any kind: fall back to the one before
                self._warn(step, err)
                continue
            _check_format(self._manager.directory, step, record)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
            except Exception as err:
                self._warn(step, err)
                continue
            if hosts.is_writer():
                for newer in self._manager.all_steps():
                    if newer > step:  # unreadable ones: the rounds are recomputed and saved again
                        shutil.rmtree(os.path.join(self._manager.directory, str(newer)))
            hosts.wait_for_writer("checkpoint_cleanup")
            self._manager.reload()
            flat.update(traverse_util.flatten_dict(restored))
            flat.update({tuple(k.split(".")): v for k, v in record["counters"].items()})
            state = serialization.from_state_dict(template, traverse_util.unflatten_dict(flat))
            self.last_saved = step
            return state, record["history"]
        if self._manager.all_steps():
            self._set_aside_unreadable()
        return None

    def _set_aside_unreadable(self) -> None:
        """No step restores: keep them under another name and start with an empty folder, so the
        run can start over (saving its round 0 where an unreadable round 0 is would fail)."""
        if hosts.is_writer():
            aside = aside_path(self._directory, "unreadable")
            os.replace(self._directory, aside)
            print(f"warning: no checkpoint in {self._directory} is readable: moved them to {aside}",
                  file=sys.stderr)
        hosts.wait_for_writer("checkpoints_set_aside")
        self._manager = ocp.CheckpointManager(self._directory, options=self._options)

    @staticmethod
    def _warn(step: int, err: Exception) -> None:
        if hosts.is_writer():
            print(f"warning: checkpoint of round {step} is unreadable ({type(err).__name__}); "
              "trying the previous one", file=sys.stderr)


def _check_format(directory, step: int, record: dict) -> None:
    found = record.get("format", 1)
    if found != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"the checkpoint of round {step} in {directory} has state format {found}, this flash_jax reads "
            f"format {FORMAT_VERSION}; continue it with the flash_jax that wrote it, or use another --workdir")


def checkpoints_folder(workdir: str) -> str:
    """WORKDIR/checkpoints, refused in one line when something else than a folder has that name."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"--workdir {workdir}: {directory} is a file, not the checkpoints folder; move it away "
                          "and run the same command")
    return directory


def saved_settings(workdir: str) -> tuple[int, dict[str, Any]] | None:
    """(round, settings) of the workdir's newest checkpoint whose record reads, without its arrays;
    None if there is none (and then nothing is created)."""
    if not os.path.isdir(checkpoints_folder(workdir)):
        return None
    manager = Checkpoints(workdir)._manager
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            record = manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
        except Exception:  # a damaged step of any kind: restore_latest warns about it
            continue
        return record["counters"]["round"], record["config"]
    return None
