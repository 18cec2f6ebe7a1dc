"""What the tests of runs and their workdirs share: run.py's small PDST command, run in this process or
as a process of its own, and what a workdir holds afterwards."""
import json
import os
import subprocess
import sys
import time

import run
from flash_jax.fl.checkpoint import Checkpoints
from flash_jax.fl.setup import build_setup
from flash_jax.fl.state import init_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Facts of the process rather than of the federation: a resumed process compiles only what it runs.
TIMING = ("round_s", "wall_s", "compiled_cohort_shapes")

SMALL = ["--experiment_type", "pdst", "--num_users", "6", "--frac", "0.5", "--fl_rounds", "4", "--eval_every", "1",
         "--checkpoint_every", "1", "--quiet"]


def small(*extra):
    """SMALL with the flags in `extra` replaced (run.py refuses a repeated flag)."""
    given = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    kept = [a for i, a in enumerate(SMALL) if a not in given and not (i and SMALL[i - 1] in given)]
    return kept + list(extra)


def cli(argv, capsys):
    """run.py's main in this process: (exit status, stderr lines)."""
    try:
        status = run.main(argv)
    except SystemExit as stop:  # argparse's own refusals
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def refused(argv, capsys, match):
    """The one stderr line of a run.py refusal (exit 2) that says `match`."""
    status, err = cli(argv, capsys)
    assert status == 2 and len(err) == 1 and match in err[0], err
    return err[0]


def start(workdir, argv=SMALL):
    """run.py as a process of its own on `workdir`."""
    return subprocess.Popen([sys.executable, "run.py", *argv, "--workdir", str(workdir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=300.0):
    """Until `condition()` holds, while `proc` still runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the moment came"
        time.sleep(0.01)


def metric_lines(workdir):
    """metrics.jsonl's records without the process's timings."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def final_state(config, digits):
    """The newest checkpoint's state of the run `config` names."""
    setup = build_setup(config, digits)
    return Checkpoints(config.workdir).restore_latest(init_state(setup))[0]
