"""python -m flash_jax.sweep.report DIR: a sweep's tables and figures, with 95% intervals over seeds.

One table per setting (the values of the axes other than the method and the seed), one row per
method: final accuracy, accuracy pruned to d (methods that report it), density, communication against
dense, mask consensus (Hamming distance among the clients' masks, change of the server mask), each as
mean ± half-width of the t interval over the seeds that finished. A method whose accuracy is below the
best method's with a paired difference (by seed) whose interval excludes zero is marked; the methods the
sweep file marks `reference` (e.g. dense, an upper bound) are shown but not ranked. Written to
DIR/report/: summary.md, summary.csv, accuracy_vs_communication.png, accuracy_vs_round.png. The claims
the sweep file names ([[claim]], see claims.py) follow in summary.md, one table each, and in claims.csv;
the runs' wall time per method (median and total) closes summary.md.
"""
from __future__ import annotations

import csv
import math
import os
import sys

from flash_jax.output import print_result
from flash_jax.sweep.figures import accuracy_vs_communication, accuracy_vs_round
from flash_jax.sweep.claims import VERDICTS, Claim
from flash_jax.sweep.results import (COLUMNS, claim_rows, load_runs, report_options, run_times, setting_title,
                                        settings_of, summarize_setting)
from flash_jax.sweep.stats import Interval

WORSE_MARK = "▼"


def format_interval(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    if not math.isfinite(interval.half_width):
        return f"{interval.mean:.4f}"
    return f"{interval.mean:.4f} ± {interval.half_width:.4f}"


def below_best(row: dict) -> str:
    if row["best"]:
        return "(best)"
    if row["reference"]:
        return "(reference)"
    return format_interval(row["gap"]) + (f" {WORSE_MARK}" if row["worse"] else "")


def markdown(tables: list[tuple[dict, list[dict]]]) -> list[str]:
    lines = [f"Mean ± half-width of the 95% t interval over seeds (n = seeds that finished). Below best: the "
             "best method's accuracy minus this one's, paired by seed (a reference method is shown, not "
             f"ranked); {WORSE_MARK}: its interval excludes zero.", ""]
    for setting, rows in tables:
        lines += [f"### {setting_title(setting)}", "",
                  "| method | n | accuracy | below best | " + " | ".join(title for _, title in COLUMNS[1:]) + " |",
                  "|---|---|---|---|" + "---|" * (len(COLUMNS) - 1)]
        for row in rows:
            cells = [format_interval(row["cells"].get(key)) for key, _ in COLUMNS]
            cells.insert(1, below_best(row))
            lines.append(f"| {row['method']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def claims_overview(claims: list[Claim], results: list[list[dict]]) -> list[str]:
    """One line per claim: the settings where it holds, is reversed, is open (the answer at a glance)."""
    lines = ["| claim | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    for claim, rows in zip(claims, results):
        cells = ["; ".join(setting_title(row["setting"]) for row in rows if row["verdict"] == verdict) or "-"
                 for verdict in VERDICTS]
        lines.append(f"| {claim.text} | " + " | ".join(cells) + " |")
    return lines + [""]


def claims_markdown(claims: list[Claim], results: list[list[dict]]) -> list[str]:
    """The overview, then one table per claim: a row per setting with both sides, the difference and the
    verdict."""
    lines = ["## Claims", "", "Each claim is first − second, paired by seed: mean ± half-width of the 95% t "
             "interval. holds: the interval lies above zero; reversed: below zero; open: it contains zero, or "
             "fewer than two seeds.", "", *claims_overview(claims, results)]
    for claim, rows in zip(claims, results):
        lines += [f"### {claim.text}", "", f"first: {claim.first.label()}; second: {claim.second.label()}", "",
                  "| setting | n | first | second | first − second | verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {setting_title(row['setting'])} | {row['difference'].n} | {format_interval(row['sides'][0])} | "
                  f"{format_interval(row['sides'][1])} | {format_interval(row['difference'])} | {row['verdict']} |"
                  for row in rows]
        lines.append("" if rows else "(no setting has finished runs on both sides yet)\n")
    return lines


def run_time_markdown(times: list[dict]) -> list[str]:
    """How long the runs took, per method and in all (empty where no run records its time)."""
    if not times:
        return []
    lines = ["## Run time", "", "Each finished run's wall time, summed over the processes that ran it (a resumed "
             "run counts each one's part): stage 1, compilation, training and evaluation, and any pause of the "
             "process; not data loading.", "", "| method | runs | median per run (min) | total (h) |",
             "|---|---|---|---|"]
    lines += [f"| {row['method']} | {row['runs']} | {row['median_s'] / 60:.1f} | {row['total_s'] / 3600:.2f} |"
              for row in times]
    return lines + [""]


def write_csv(path: str, tables: list[tuple[dict, list[dict]]]) -> None:
    """Long format: one line per setting, method and metric."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        names = list(tables[0][0]) if tables else []
        writer.writerow([*names, "method", "metric", "n", "mean", "ci95_half_width", "below_best"])
        for setting, rows in tables:
            for row in rows:
                for key, interval in row["cells"].items():
                    below = row["worse"] if key == "accuracy" else ""
                    writer.writerow([*setting.values(), row["method"], key, interval.n, interval.mean,
                                     interval.half_width, below])


def write_claims_csv(path: str, claims: list[Claim], results: list[list[dict]]) -> None:
    """One line per claim and setting."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["claim", "first", "second", "setting", "n", "first_mean", "second_mean", "difference_mean",
                         "difference_ci95_half_width", "verdict"])
        for claim, rows in zip(claims, results):
            writer.writerows([claim.text, claim.first.label(), claim.second.label(), setting_title(row["setting"]),
                              row["difference"].n, row["sides"][0].mean, row["sides"][1].mean,
                              row["difference"].mean, row["difference"].half_width, row["verdict"]] for row in rows)


def write_report(out: str) -> str:
    """Tables (Markdown, CSV) and figures under OUT/report; returns the Markdown."""
    axes, runs = load_runs(out)
    claims, references = report_options(out)
    tables = [(setting, rows) for setting in settings_of(axes)
              if (rows := summarize_setting(axes, runs, setting, references))]
    results = [claim_rows(claim, axes, runs) for claim in claims]
    folder = os.path.join(out, "report")
    os.makedirs(folder, exist_ok=True)
    text = "\n".join(markdown(tables) + (claims_markdown(claims, results) if claims else [])
                     + run_time_markdown(run_times(axes, runs)))
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(folder, "summary.csv"), tables)
    if claims:
        write_claims_csv(os.path.join(folder, "claims.csv"), claims, results)
    if tables:
        accuracy_vs_communication(tables, os.path.join(folder, "accuracy_vs_communication.png"))
        accuracy_vs_round(axes, runs, tables, os.path.join(folder, "accuracy_vs_round.png"))
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m flash_jax.sweep.report DIR   (DIR: a sweep folder, holding sweep.json)",
              file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(argv[0], "sweep.json")):
        print(f"sweep.report: error: {argv[0]} holds no sweep.json; is it the --out of a sweep?", file=sys.stderr)
        return 2
    try:
        text = write_report(argv[0])
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"sweep.report: error: {argv[0]}: its sweep.json or report folder is unusable "
              f"({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    print_result(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
