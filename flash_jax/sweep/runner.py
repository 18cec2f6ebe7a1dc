"""Running a sweep's runs as separate processes, a few at a time, with one progress line for the whole.

Each run is `python -m flash_jax ... --workdir SWEEP/NAME`, so it checkpoints and resumes like any run:
a sweep that is killed (its runs die with it) and started again skips the finished runs and continues
the others from their checkpoints. A run's output goes to SWEEP/logs/NAME.log; a run that fails leaves
SWEEP/logs/NAME.failed (its exit status and last error line) and the sweep goes on with the rest.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from flash_jax.launch import die_with_parent
from flash_jax.sweep.grid import Run, Sweep

POLL_S = 0.5


class Stopped(Exception):
    """SIGINT or SIGTERM stopped the sweep; its runs stopped at a round boundary with a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(f"sweep stopped by signal {signum}; run the same command to continue")
        self.exit_status = 128 + signum


def log_path(out: str, run: Run, suffix: str) -> str:
    return os.path.join(out, "logs", run.name.replace("/", "__") + suffix)


def last_error_line(path: str) -> str:
    """The last non-empty line a failed run wrote (its one-line error, or a traceback's last line)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    except OSError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


class Progress:
    """Counts and a time estimate from the runs this sweep finished (skipped ones took no time)."""

    def __init__(self, total: int, done: int, jobs: int):
        self.total, self.done, self.failed, self.jobs, self.durations = total, done, 0, jobs, []

    def line(self, running: int) -> str:
        left = self.total - self.done - self.failed
        estimate = ""
        if self.durations and left:
            seconds = sum(self.durations) / len(self.durations) * left / min(self.jobs, left)
            estimate = f", about {seconds / 3600:.0f} h {seconds % 3600 / 60:.0f} min left"
        return f"sweep: {self.done}/{self.total} done, {running} running, {self.failed} failed{estimate}"


class Pool:
    """Up to `jobs` runs at once; SIGINT/SIGTERM reach every running run (they checkpoint and stop)."""

    def __init__(self, out: str, jobs: int):
        self.out, self.jobs, self.running, self.signum = out, jobs, {}, None

    def start(self, run: Run) -> None:
        os.makedirs(os.path.dirname(log_path(self.out, run, "")), exist_ok=True)
        failed = log_path(self.out, run, ".failed")
        if os.path.exists(failed):
            os.remove(failed)
        with open(log_path(self.out, run, ".log"), "ab") as log:
            child = subprocess.Popen(run.command(self.out), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent, process_group=0)
        self.running[child] = (run, time.monotonic())

    def finished(self) -> list[tuple[Run, int, float]]:
        """The runs that ended since the last call: (run, exit status, seconds)."""
        ended = [(child, status) for child in list(self.running) if (status := child.poll()) is not None]
        result = []
        for child, status in ended:
            run, started = self.running.pop(child)
            result.append((run, status, time.monotonic() - started))
        return result

    def forward(self, signum: int, frame=None) -> None:
        self.signum = signum
        for child in self.running:
            child.send_signal(signum)


def run_all(runs: list[Run], out: str, jobs: int, echo=print) -> list[tuple[Run, int, str]]:
    """Run every unfinished run; returns the failed ones (run, exit status, last error line)."""
    pending = [run for run in runs if not run.is_done(out)]
    progress, pool, failures = Progress(len(runs), len(runs) - len(pending), jobs), Pool(out, jobs), []
    echo(progress.line(0) + (f" ({progress.done} finished before)" if progress.done else ""))
    previous = [signal.signal(sig, pool.forward) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        while pending or pool.running:
            while pending and len(pool.running) < jobs and pool.signum is None:
                pool.start(pending.pop(0))
            time.sleep(POLL_S)
            for run, status, seconds in pool.finished():
                if status == 0 and run.is_done(out):
                    progress.done += 1
                    progress.durations.append(seconds)
                    echo(f"{progress.line(len(pool.running))} | {run.name} finished in {seconds / 60:.1f} min")
                    continue
                if pool.signum is not None:
                    continue  # stopped at our request: it resumes next time
                error = last_error_line(log_path(out, run, ".log"))
                _record_failure(out, run, status, error)
                failures.append((run, status, error))
                progress.failed += 1
                echo(f"{progress.line(len(pool.running))} | {run.name} FAILED (exit {status}): {error}")
            if pool.signum is not None and not pool.running:
                raise Stopped(pool.signum)
    finally:
        for sig, handler in zip((signal.SIGINT, signal.SIGTERM), previous):
            signal.signal(sig, handler)
    return failures


def _record_failure(out: str, run: Run, status: int, error: str) -> None:
    with open(log_path(out, run, ".failed"), "w") as f:
        json.dump({"run": run.name, "exit_status": status, "error": error,
                   "log": log_path(out, run, ".log")}, f, indent=2)


def write_manifest(out: str, sweep_file: str, sweep: Sweep) -> None:
    """SWEEP/sweep.json: the grid as expanded and the claims to test (what the report reads), written
    atomically."""
    os.makedirs(out, exist_ok=True)
    manifest = {"sweep_file": os.path.abspath(sweep_file), "axes": sweep.axes, "claims": sweep.claims,
                "references": sweep.references,
                "runs": [{"name": run.name, "axes": dict(run.axes), "settings": dict(run.settings)}
                         for run in sweep.runs]}
    with open(os.path.join(out, "sweep.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(os.path.join(out, "sweep.json.tmp"), os.path.join(out, "sweep.json"))
