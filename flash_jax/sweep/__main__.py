"""python -m flash_jax.sweep FILE.toml --out DIR: run every point of a sweep file (see grid.py for the
format); finished runs are skipped and unfinished ones resume, so the same command continues a killed
sweep. Exit status: 0 all runs finished, 1 some failed (named at the end), 2 a bad sweep file or flag,
130/143 stopped by SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import os
import sys

from flash_jax.output import print_result
from flash_jax.sweep.grid import SweepError, command_line, load_sweep, shard
from flash_jax.sweep.runner import Stopped, run_all, write_manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flash_jax.sweep", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("sweep_file", help="the sweep's TOML file ([base], [axes], [methods.NAME], [[claim]])")
    parser.add_argument("--out", help="the sweep folder: one workdir per run, logs, sweep.json "
                                      "(default: runs/ and the file's name)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each its own process (default: 1)")
    parser.add_argument("--shard", metavar="I/N", help="only every N-th run from the I-th (I from 0), for job "
                                                       "arrays: the N slices cover the grid once")
    parser.add_argument("--list", action="store_true", help="print each run's command line and run nothing")
    parser.add_argument("--summarize", action="store_true", help="afterwards, write the report "
                                                                 "(python -m flash_jax.sweep.report)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.sweep_file))[0])
    try:
        if args.jobs < 1:
            raise SweepError(f"--jobs {args.jobs}: must be at least 1")
        sweep = load_sweep(args.sweep_file)
        runs = shard(sweep.runs, args.shard) if args.shard else sweep.runs
    except SweepError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    if args.list:
        print_result("\n".join(command_line(run, out) for run in runs))
        return 0
    try:
        write_manifest(out, args.sweep_file, sweep)
    except OSError as err:
        print(f"sweep: error: --out {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    try:
        failures = run_all(runs, out, args.jobs, echo=lambda line: print(line, file=sys.stderr, flush=True))
    except Stopped as stop:
        print(f"sweep: {stop}", file=sys.stderr)
        return stop.exit_status
    if args.summarize:
        from flash_jax.sweep.report import write_report
        write_report(out)
    for run, status, error in failures:
        print(f"sweep: error: {run.name} failed (exit {status}): {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
