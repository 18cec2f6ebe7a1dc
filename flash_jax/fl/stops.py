"""Ways a run stops early on purpose: a diverged model, and SIGINT / SIGTERM at a round boundary."""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import signal
import sys
import threading

import jax
import jax.numpy as jnp

# exit statuses of run.py beyond 0 (done) and 2 (refused): the shell's 128 + signal number for a stop on
# a signal, 3 for a diverged run, 5 for a disk that filled up (4: launch.PEER_LOST_EXIT)
DIVERGED_EXIT = 3
DISK_FULL_EXIT = 5


class DiskFull(Exception):
    """Writing to the workdir failed for want of space; the message (one line) says what, and which
    checkpoint the same command will continue from."""


def _is_disk_full(err: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain (orbax and tensorstore wrap it in their own errors)."""
    while err is not None:
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _quiet_about_disk_full(previous):
    """A thread hook that drops what orbax's writer threads raise for a full disk (DiskFull says it)."""
    def hook(args):
        if not _is_disk_full(args.exc_value):
            previous(args)
    return hook


@contextlib.contextmanager
def writing(what: str, last_good: int | None):
    """Turn a full disk while writing `what` into DiskFull; orbax's own log of it, and what its
    writer threads raise for it (then or later), are held back."""
    absl, hook = logging.getLogger("absl"), threading.excepthook
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    threading.excepthook = _quiet_about_disk_full(hook)
    try:
        yield
    except Exception as err:
        if not _is_disk_full(err):
            raise
        last = ("no checkpoint was saved yet" if last_good is None
                else f"the last good checkpoint is of round {last_good}")
        # kept quiet: a writer thread may still raise, and orbax log, after this
        hook, level = threading.excepthook, absl.level
        raise DiskFull(f"the disk is full: writing {what} failed; {last}; free space and run the same command to "
                       "continue") from None
    finally:
        absl.setLevel(level)
        threading.excepthook = hook


class DivergenceError(RuntimeError):
    """A round produced a non-finite training loss or parameter; the message is one line."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped at the boundary after round `round`."""

    def __init__(self, round_index: int, signum: int, saved: bool):
        self.round, self.signum, self.saved = round_index, signum, saved
        how = "run the same command to continue" if saved else "nothing was saved (no --workdir)"
        super().__init__(f"interrupted at round {round_index}; {how}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(method: str, round_index: int, train_loss: float, params, max_loss: float) -> None:
    """Raise DivergenceError when round `round_index` left a non-finite loss or parameter, or a loss
    above `max_loss` (finite but far beyond any working run: the model is lost all the same)."""
    if not math.isfinite(train_loss) or train_loss > max_loss:
        beyond = "" if not math.isfinite(train_loss) else f", above --max_train_loss {max_loss:g}"
        raise DivergenceError(f"{method} diverged at round {round_index}: training loss {train_loss:.4g}{beyond}; "
                              "the last good checkpoint is kept (try a lower --lr_start or --clip_grad_norm)")
    if not bool(_all_finite(params)):
        raise DivergenceError(f"{method} diverged at round {round_index}: non-finite parameters; the last good "
                              "checkpoint is kept (try a lower --lr_start or --clip_grad_norm)")


class StopSignals:
    """While the `with` block runs, SIGINT and SIGTERM only set `signum` (the loop stops at the next
    round boundary); a SIGINT after the first signal ends the process at once. Outside the main thread (where Python
    cannot install handlers) signals keep their defaults."""

    def __init__(self):
        self.signum, self._previous = None, {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            print("interrupted again: stopping now; run the same command to continue from the last checkpoint",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
