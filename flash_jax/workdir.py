"""A run's workdir: one run at a time (a lock), which runs it may continue, and strict-JSON files.

The lock is `fcntl.flock` on WORKDIR/.lock: the kernel releases it when its process ends in any
way (SIGKILL included), so a killed run's lock is taken over by the next run without anyone
deleting it, and the file itself names its holder (pid, host, start time) for the run it refuses.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import sys
import time
from typing import Any

from flash_jax.config import Config, ConfigError

# settings that may differ when a workdir is reopened: they change neither the state nor the metrics
# (the chunk size and the devices and processes only to float rounding: how the sums are split)
RESUMABLE_CHANGES = ("fl_rounds", "quiet", "workdir", "checkpoint_every", "clients_per_chunk", "distributed",
                     "coordinator_address", "num_processes", "process_id", "host_devices", "coordinator_timeout",
                     "download", "plugin")
LOCK_FILE = ".lock"


class WorkdirLocked(ConfigError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """Exclusive use of a workdir while the `with` block runs; creates the folder if needed."""

    def __init__(self, workdir: str):
        self.workdir, self.path, self._file = workdir, os.path.join(workdir, LOCK_FILE), None

    def __enter__(self) -> "WorkdirLock":
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ConfigError(f"--workdir {self.workdir} is a file, not a folder; name another workdir")
        try:
            os.makedirs(self.workdir, exist_ok=True)
            while self._file is None:
                f = open(self.path, "a+")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    holder = f.read().strip() or "a process that has not written its name yet"
                    f.close()
                    raise WorkdirLocked(f"--workdir {self.workdir} is in use by {holder}; wait for that run to "
                                        "end or use another workdir") from None
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                    self._file = f
                else:  # the holder we waited on removed the file on release: lock the new one
                    f.close()
            self._take_over()
        except OSError as err:
            raise ConfigError(f"--workdir {self.workdir} is not writable: {err.strerror or err}") from err
        return self

    def _take_over(self) -> None:
        self._file.seek(0)
        left = self._file.read().strip()
        if left:  # its holder was killed: the kernel released the lock, the file still names it
            print(f"taking over the lock of {self.workdir} left by {left} (no longer running)", file=sys.stderr)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
        self._file.flush()

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)  # before unlocking: a waiter that opened it re-checks the inode
        self._file.close()


def check_workdir(workdir: str, config: Config, saved: tuple[int, dict] | None) -> None:
    """Refuse to continue a workdir whose run is another (config.json or the newest checkpoint's own
    settings differ in anything that changes results), or that is past --fl_rounds. `saved` is the
    (round, settings) of the newest checkpoint; ConfigError on the first problem."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                on_disk = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(f"--workdir {workdir}: config.json is unreadable ({type(err).__name__}); "
                              "repair or delete it (the checkpoints hold the settings too)") from None
        if not isinstance(on_disk, dict):
            raise ConfigError(f"--workdir {workdir}: config.json holds a {type(on_disk).__name__}, not the "
                              "settings object; repair or delete it (the checkpoints hold the settings too)")
        _compare(workdir, "config.json", on_disk, config)
    if saved is not None:
        done, settings = saved
        _compare(workdir, f"its checkpoint of round {done}", settings, config)
        if done > config.fl_rounds:
            raise ConfigError(f"--fl_rounds={config.fl_rounds} is invalid for --workdir {workdir}: its run has "
                              f"done {done} rounds; pass --fl_rounds {done} or more, or use another workdir")


def _compare(workdir: str, source: str, saved: dict, config: Config) -> None:
    """A setting the saved run does not name (one added since, or a knob of a plugin loaded now) counts
    as its default there: at its default it changes nothing."""
    current, defaults = config.to_dict(), Config().to_dict()
    saved = {**defaults, **saved}
    differing = [k for k in current if k not in RESUMABLE_CHANGES and saved[k] != current[k]]
    if differing:
        details = ", ".join(f"--{k} {saved[k]!r} there, {current[k]!r} now" for k in differing)
        raise ConfigError(f"--workdir {workdir} holds a run with other settings ({source}: {details}); "
                          "use another workdir or the same settings (only --fl_rounds may change)")


def aside_path(path: str, why: str) -> str:
    """Where a file or folder that cannot be used goes, so that nothing is deleted: PATH.WHY-TIME."""
    return f"{path}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"


def set_old_metrics_aside(metrics_path: str) -> None:
    """Metrics without a checkpoint to continue from: keep them under another name, say so."""
    if os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0:
        aside = aside_path(metrics_path, "old")
        os.replace(metrics_path, aside)
        print(f"{metrics_path} has no checkpoint to continue from: moved it to {aside} and starting over",
              file=sys.stderr)


def non_finite_as_null(value: Any) -> Any:
    """`value` with every non-finite float as None, so that json.dumps(allow_nan=False) accepts it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: non_finite_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [non_finite_as_null(v) for v in value]
    return value


def write_json(path: str, record: dict[str, Any]) -> None:
    """Write through a temporary file so a killed run never leaves half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(non_finite_as_null(record), f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(non_finite_as_null(record), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str) -> tuple[list[dict[str, Any]], int]:
    """A metrics.jsonl's records, and how many lines were passed over: a last line that a killed run
    cut short, or lines that are not metric records (a round and an accuracy)."""
    records, skipped = [], 0
    with open(path) as f:
        for line in filter(str.strip, f):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("round"), int) and "accuracy" in record:
                records.append(record)
            else:
                skipped += 1
    return records, skipped


def rewrite_metrics(metrics_path: str, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl as of a checkpoint: lines written after it (and any cut short by a kill) go, and
    are written again as the rounds are recomputed."""
    with open(metrics_path + ".tmp", "w") as f:
        f.writelines(json.dumps(non_finite_as_null(record), allow_nan=False) + "\n" for record in history)
    os.replace(metrics_path + ".tmp", metrics_path)
