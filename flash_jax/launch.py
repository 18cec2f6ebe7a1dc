"""run.py --distributed does its work in a child process and watches it.

When another process of the run dies, JAX's runtime ends the survivors with a C++ abort and a
page of runtime log and stack trace. The worker's Python output (progress, messages, tracebacks)
reaches the parent through pipes of its own, while its file descriptors 1 and 2, where the
runtime's C++ code (glog, gloo, gRPC) writes, go to a pipe the parent only reads for the abort's
cause: the run's output stays clean whatever the runtime prints, and a lost peer is one line with
exit status PEER_LOST_EXIT. The child dies with its parent (a SIGKILL of the parent leaves no
orphan) and gets the SIGINT / SIGTERM the parent gets, so stopping at a round boundary works as
without it.
"""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading

PEER_LOST_EXIT = 4
WORKER_ENV = "FLASH_JAX_WORKER"  # in the worker: the descriptors of its stdout and stderr pipes
RUNTIME_TAIL = 40  # runtime lines kept to show when the worker dies of something other than an abort
_CAUSE = re.compile(r"absl::Status: (\w+: [^.:\n]*)")
JOINED = "flash_jax: this process joined the run"  # the worker's word that the runtime connected


def is_worker() -> bool:
    return bool(os.environ.get(WORKER_ENV))


def attach_worker_output() -> None:
    """In the worker the parent started: Python's stdout and stderr write to the pipes the parent
    copies, leaving descriptors 1 and 2 to the runtime's C++ code. A user's FLASH_JAX_WORKER=1 (run
    in this process, with the runtime's own log) names no pipes, and the output stays where it is."""
    descriptors = os.environ.get(WORKER_ENV, "").split(",")
    if len(descriptors) == 2 and all(fd.isdigit() for fd in descriptors):
        out, err = (int(fd) for fd in descriptors)
        sys.stdout = open(out, "w", buffering=1, closefd=True)
        sys.stderr = open(err, "w", buffering=1, closefd=True)


def die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the parent dies, however it dies."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _copy(source, sink, report: dict) -> None:
    """Copy the worker's Python output to `sink` segment by segment (lines, and progress bars' \\r
    updates). A Python traceback is held back in report["held"]: a collective that lost its peer
    raises one just before the runtime aborts, and then the one-line report replaces it."""
    pending = b""
    while chunk := source.read1(65536):
        segments = re.split(rb"(?<=[\r\n])", pending + chunk)
        pending = segments.pop()
        for segment in filter(None, segments):
            text = segment.decode(errors="replace")
            if text.strip() == JOINED:
                report["joined"] = True
                continue
            if text.startswith("Traceback (most recent call last)"):
                report.setdefault("held", {}).setdefault(sink, [])
            _write(sink, text, report)
    _write(sink, pending.decode(errors="replace"), report)


def _watch_runtime(source, report: dict) -> None:
    """Read what the runtime's C++ code wrote: the first abort cause, and the last lines."""
    tail = report["runtime_tail"] = collections.deque(maxlen=RUNTIME_TAIL)
    for line in source:
        text = line.decode(errors="replace")
        cause = _CAUSE.search(text)
        if cause and "cause" not in report:
            report["cause"] = cause.group(1)
        tail.append(text)


def _write(sink, text: str, report: dict) -> None:
    if sink in report.get("held", {}):
        report["held"][sink].append(text)
    else:
        sink.write(text)
        sink.flush()


def supervise(command: list[str], process_id: str, coordinator: str, timeout_s: int) -> int:
    """Run `command` (`python -m flash_jax` and the run's flags) as the worker; its exit status, or
    after one line PEER_LOST_EXIT
    when JAX's runtime aborted it because another process is gone, or 2 when it never joined the run
    (`coordinator` unreachable, or the others did not come within `timeout_s`)."""
    (out_read, out_write), (err_read, err_write) = os.pipe(), os.pipe()
    child = subprocess.Popen(command,
                             env=dict(os.environ, **{WORKER_ENV: f"{out_write},{err_write}"}),
                             pass_fds=(out_write, err_write), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=die_with_parent,
                             process_group=0)  # a terminal's Ctrl-C reaches it once, through the parent
    os.close(out_write)
    os.close(err_write)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    report = {}
    readers = [threading.Thread(target=_copy, args=(open(fd, "rb"), sink, report), daemon=True)
               for fd, sink in ((out_read, sys.stdout), (err_read, sys.stderr))]
    readers.append(threading.Thread(target=_watch_runtime, args=(child.stdout, report), daemon=True))
    for reader in readers:
        reader.start()
    status = child.wait()
    for reader in readers:
        reader.join()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    aborted = status in (-signal.SIGABRT, 128 + signal.SIGABRT)
    if -status in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL):  # the runtime's last words explain it
        sys.stderr.write("".join(report["runtime_tail"]))
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
