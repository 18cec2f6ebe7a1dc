"""run.py --distributed does its work in a child process and watches it.

When another process of the run dies, JAX's runtime ends the survivors with a C++ abort and a
page of runtime log and stack trace. The parent keeps the run's own output (progress, messages),
sets the runtime's log lines aside, and reports a lost peer as one line with exit status
PEER_LOST_EXIT. The child dies with its parent (a SIGKILL of the parent leaves no orphan) and gets
the SIGINT / SIGTERM the parent gets, so stopping at a round boundary works as without it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

PEER_LOST_EXIT = 4
WORKER_ENV = "FLASH_JAX_WORKER"
# the runtime's own lines: glog records, gloo's connection notes; after an error record (E, F) the
# runtime is failing and what follows is its crash report
_RUNTIME_LINE = re.compile(r"^(?:([EWIF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|\[Gloo\])")
_CAUSE = re.compile(r"absl::Status: (\w+: [^.:\n]*)")
JOINED = "flash_jax: this process joined the run"  # the worker's word that the runtime connected


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the parent dies, however it dies."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _filter(source, sink, report: dict) -> None:
    """Copy the worker's output to `sink` segment by segment (lines, and progress bars' \\r
    updates), without the runtime's lines; note the first abort cause in `report`. A Python traceback
    is held back in report["held"]: a collective that lost its peer raises one just before the
    runtime aborts, and then the one-line report replaces it."""
    pending = b""
    while chunk := source.read1(65536):
        segments = re.split(rb"(?<=[\r\n])", pending + chunk)
        pending = segments.pop()
        for segment in filter(None, segments):
            text = segment.decode(errors="replace")
            cause = _CAUSE.search(text)
            if cause and "cause" not in report:
                report["cause"] = cause.group(1)
            if text.strip() == JOINED:
                report["joined"] = True
                continue
            record = _RUNTIME_LINE.match(text)
            if record and record.group(1) in ("E", "F"):
                report["failing"] = True
            if record or report.get("failing"):
                continue
            if text.startswith("Traceback (most recent call last)"):
                report.setdefault("held", {}).setdefault(sink, [])
            _write(sink, text, report)
    _write(sink, pending.decode(errors="replace"), report)


def _write(sink, text: str, report: dict) -> None:
    if sink in report.get("held", {}):
        report["held"][sink].append(text)
    else:
        sink.write(text)
        sink.flush()


def supervise(argv: list[str], process_id: str, coordinator: str, timeout_s: int) -> int:
    """Run `python -m flash_jax argv` as the worker; its exit status, or after one line PEER_LOST_EXIT
    when JAX's runtime aborted it because another process is gone, or 2 when it never joined the run
    (`coordinator` unreachable, or the others did not come within `timeout_s`)."""
    child = subprocess.Popen([sys.executable, "-m", "flash_jax", *argv], env=dict(os.environ, **{WORKER_ENV: "1"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent,
                             process_group=0)  # a terminal's Ctrl-C reaches it once, through the parent
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    report = {}
    readers = [threading.Thread(target=_filter, args=(stream, sink, report), daemon=True)
               for stream, sink in ((child.stdout, sys.stdout), (child.stderr, sys.stderr))]
    for reader in readers:
        reader.start()
    status = child.wait()
    for reader in readers:
        reader.join()
    aborted = status in (-signal.SIGABRT, 128 + signal.SIGABRT)
    for sink, held in report.get("held", {}).items():
        if not aborted:  # the worker's own failure: its traceback is the report
            sink.write("".join(held))
            sink.flush()
    if aborted and not report.get("joined"):
        where = coordinator or "the detected coordinator"
        print(f"run.py: error: process {process_id} could not join the run at {where} within {timeout_s} s "
              f"({report.get('cause', 'the JAX runtime aborted it')}); start "
              "every process with the same --coordinator_address and --num_processes, or raise "
              "--coordinator_timeout", file=sys.stderr, flush=True)
        return 2
    if aborted:
        print(f"run.py: error: process {process_id} lost the other processes of the run "
              f"({report.get('cause', 'the JAX runtime aborted it')}); run the same commands to continue from "
              "the last checkpoint", file=sys.stderr, flush=True)
        return PEER_LOST_EXIT
    return status if status >= 0 else 128 - status
