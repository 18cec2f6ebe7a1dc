"""What the commands print on standard output, where a reader may have gone away."""
from __future__ import annotations

import os
import sys


def print_result(text: str) -> None:
    """Print a command's result; into a closed pipe (`... | head`, `... | true`) the work is already done
    and saved, so the text is dropped instead of ending in a BrokenPipeError traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit fails too
