"""The sweep command: the grid a file names, its slices, its statistics, and sweeps of real runs on
digits that fail in part or are killed and restarted."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flash_jax.sweep.grid import SweepError, load_sweep, shard
from flash_jax.sweep.report import write_report
from flash_jax.sweep.results import claim_rows, load_runs, report_options, settings_of, summarize_setting
from flash_jax.sweep.stats import mean_interval, paired_difference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = """
[base]
dataset = "digits"
num_users = 6
frac = 0.5
fl_rounds = 4
eval_every = 1
checkpoint_every = 1
host_devices = 1
[axes]
experiment_type = ["dense", "pdst"]
density = [0.05, 0.2]
seed = [1, 2]
[methods.dense]
independent_of = ["density"]
"""
TIMINGS = ("round_s", "wall_s")


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def sweep(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "flash_jax.sweep", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_grid_names_each_point_once_and_resolves_references(tmp_path):
    text = SMALL + '[methods.pdst]\nlr_start = 0.2\nprunefl_max_density = "{density}"\n'
    runs = load_sweep(write(tmp_path, text)).runs
    names = [run.name for run in runs]
    assert names == ["dense/seed=1", "dense/seed=2", "pdst/density=0.05_seed=1", "pdst/density=0.05_seed=2",
                     "pdst/density=0.2_seed=1", "pdst/density=0.2_seed=2"]
    settings = dict(runs[4].settings)
    assert settings["density"] == 0.2 and settings["prunefl_max_density"] == 0.2 and settings["lr_start"] == 0.2
    assert "density" not in dict(runs[0].settings)
    command = runs[4].command("OUT")
    assert command[1:3] == ["-m", "flash_jax"] and command[-2:] == ["--workdir", os.path.join("OUT", runs[4].name)]
    assert "--iid" not in command and command[command.index("--density") + 1] == "0.2"


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_shards_cover_the_grid_exactly_once(tmp_path, count):
    runs = load_sweep(write(tmp_path, SMALL)).runs
    slices = [shard(runs, f"{index}/{count}") for index in range(count)]
    names = [run.name for part in slices for run in part]
    assert sorted(names) == sorted(run.name for run in runs) and len(names) == len(set(names))
    listed = subprocess.run([sys.executable, "-m", "flash_jax.sweep", write(tmp_path, SMALL), "--list", "--shard",
                             f"0/{count}", "--out", "OUT"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert listed.stdout.splitlines() == [" ".join(run.command("OUT")) for run in slices[0]]


@pytest.mark.parametrize("text, message", [
    (SMALL + "[methods.pdst]\nno_such_flag = 1\n", "'no_such_flag' is not a run.py setting"),
    (SMALL.replace("seed = [1, 2]", "seed = []"), "axis seed must be a non-empty list"),
    (SMALL + '[methods.dense]\n', "not valid TOML"),
    (SMALL + '[methods.pdst]\nprunefl_max_density = "{nothing}"\n', "refers to a setting"),
    (SMALL + "[plot]\nx = 1\n", "unknown table 'plot'"),
    ("axes = 3\n", "axes must be a table ([axes]), not int"),
    (SMALL + "[methods]\npdst = 3\n", "methods.pdst must be a table"),
    (SMALL + '[[claim]]\ntext = "x"\nfirst = { experiment_type = "spdst" }\nsecond = 0.1\n',
     "[[claim]] number 1.first: experiment_type = 'spdst' is not among the axis's values ['dense', 'pdst']"),
    (SMALL + '[[claim]]\ntext = "x"\nfirst = { seed = 1 }\nsecond = 0.1\n', "fixes 'seed', which is not one"),
    (SMALL + '[[claim]]\ntext = "x"\nfirst = { density = 0.05 }\nsecond = { experiment_type = "pdst" }\n',
     "two sides that do must fix the same axes"),
    (SMALL + '[[claim]]\ntext = "x"\nfirst = 0.5\nsecond = 0.1\n', "a side must choose runs"),
    (SMALL + '[[claim]]\nfirst = 0.5\nsecond = { density = 0.05 }\n', "exactly the keys text, first and second"),
    (SMALL + '[[claim]]\ntext = "x"\nfirst = "pdst"\nsecond = 0.1\n', "must be a table of axis values"),
    ('claim = 3\n' + SMALL, "claim must be an array of tables"),
    (SMALL + 'reference = "yes"\n', "[methods.dense] reference must be true or false"),
])
def test_bad_sweep_files_are_refused_in_one_line(tmp_path, text, message):
    result = subprocess.run([sys.executable, "-m", "flash_jax.sweep", write(tmp_path, text), "--list"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_bad_shard_is_refused(tmp_path):
    with pytest.raises(SweepError, match="0 <= I < N"):
        shard(load_sweep(write(tmp_path, SMALL)).runs, "3/3")


def test_interval_and_paired_difference_match_hand_computed_values():
    # mean 0.82, s = 0.02, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.02 / sqrt(3) = 0.0496828
    interval = mean_interval([0.80, 0.82, 0.84])
    assert interval.mean == pytest.approx(0.82) and interval.half_width == pytest.approx(0.0496828, abs=1e-7)
    # differences 0.10, 0.07, 0.09: mean 0.0866667, s = 0.0152753, half-width 4.302653 * s / sqrt(3) = 0.0379458
    gap = paired_difference({1: 0.80, 2: 0.82, 3: 0.85, 4: 0.9}, {1: 0.70, 2: 0.75, 3: 0.76})
    assert gap.n == 3 and gap.mean == pytest.approx(0.0866667, abs=1e-7)
    assert gap.half_width == pytest.approx(0.0379458, abs=1e-7) and gap.excludes_zero()
    assert not paired_difference({1: 0.8, 2: 0.7}, {1: 0.75, 2: 0.72}).excludes_zero()
    assert mean_interval([0.5]).n == 1 and not mean_interval([0.5]).excludes_zero()


def fake_sweep(out, accuracies, names=("experiment_type", "seed"), claims=(), references=()):
    """A sweep folder whose runs finished with the given final accuracy per point (values of `names`)."""
    runs = []
    for key, accuracy in accuracies.items():
        point = dict(zip(names, key))
        name = "_".join(f"{axis}={value}" for axis, value in point.items())
        os.makedirs(out / name)
        (out / name / "config.json").write_text(json.dumps({"fl_rounds": 2}))
        records = [{"round": r, "accuracy": accuracy * r / 2, "density": 0.05, "comm_ratio_vs_dense": 0.1}
                   for r in (1, 2)]
        (out / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append({"name": name, "axes": point, "settings": {}})
    axes = {axis: sorted({key[index] for key in accuracies}) for index, axis in enumerate(names)}
    (out / "sweep.json").write_text(json.dumps({"axes": axes, "runs": runs, "claims": list(claims),
                                                "references": list(references)}))


THREE_METHODS = {("a", 1): 0.80, ("a", 2): 0.82, ("a", 3): 0.85, ("b", 1): 0.70, ("b", 2): 0.75, ("b", 3): 0.76,
                 ("c", 1): 0.81, ("c", 2): 0.78, ("c", 3): 0.86}


def test_report_marks_methods_significantly_below_the_best(tmp_path):
    fake_sweep(tmp_path, THREE_METHODS)
    axes, runs = load_runs(str(tmp_path))
    rows = {row["method"]: row for row in summarize_setting(axes, runs, settings_of(axes)[0])}
    assert rows["a"]["best"] and rows["b"]["worse"] and not rows["c"]["worse"]
    assert rows["b"]["gap"].half_width == pytest.approx(0.0379458, abs=1e-7)
    text = write_report(str(tmp_path))
    # a: mean 0.823333, s 0.025166, half-width 0.062517; b: mean 0.736667, s 0.032146, half-width 0.079855
    assert "| a | 3 | 0.8233 ± 0.0625 | (best) |" in text
    assert "| b | 3 | 0.7367 ± 0.0799 | 0.0867 ± 0.0379 ▼ |" in text
    for name in ("summary.md", "summary.csv", "accuracy_vs_communication.png", "accuracy_vs_round.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "## Claims" not in text and not (tmp_path / "report" / "claims.csv").exists()


def test_a_reference_method_is_shown_but_not_ranked(tmp_path):
    fake_sweep(tmp_path, THREE_METHODS, references=["a"])
    text = write_report(str(tmp_path))
    # c: mean 0.816667, s 0.040415, half-width 4.302653 * s / sqrt(3) = 0.100396;
    # c - b: 0.11, 0.03, 0.10: mean 0.08, s 0.043589, half-width 0.108280
    assert "| a | 3 | 0.8233 ± 0.0625 | (reference) |" in text and "| c | 3 | 0.8167 ± 0.1004 | (best) |" in text
    assert "| b | 3 | 0.7367 ± 0.0799 | 0.0800 ± 0.1083 |" in text
    sweep_file = load_sweep(write(tmp_path, SMALL.replace('independent_of = ["density"]',
                                                          'independent_of = ["density"]\nreference = true')))
    assert sweep_file.references == ["dense"] and "reference" not in dict(sweep_file.runs[0].settings)


def test_run_time_sums_the_stretches_of_resumed_runs(tmp_path):
    fake_sweep(tmp_path, THREE_METHODS)
    walls = {"experiment_type=a_seed=1": [60.0, 120.0],  # one process: 120 s
             "experiment_type=a_seed=2": [60.0, 30.0],  # resumed after round 1: 60 + 30 = 90 s
             "experiment_type=a_seed=3": [60.0, 180.0], "experiment_type=b_seed=1": [600.0, 1200.0]}
    for name, times in walls.items():
        path = tmp_path / name / "metrics.jsonl"
        records = [{**json.loads(line), "wall_s": wall} for line, wall in zip(path.read_text().splitlines(), times)]
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    text = write_report(str(tmp_path))
    # a: 120, 90, 180 s: median 2 min, total 390 s; b: one run of 1200 s (its others record no time); c: none
    assert "| a | 3 | 2.0 | 0.11 |" in text and "| b | 1 | 20.0 | 0.33 |" in text and "| c |" not in text.split(
        "## Run time")[1]
    assert "| all runs | 4 | 2.5 | 0.44 |" in text  # 90, 120, 180, 1200 s: median 150 s, total 1590 s


def claim(text, first, second):
    return {"text": text, "first": first, "second": second}


def test_claims_are_paired_by_seed_and_judged_by_their_interval(tmp_path):
    fake_sweep(tmp_path, THREE_METHODS, claims=[
        claim("a beats b", {"experiment_type": "a"}, {"experiment_type": "b"}),
        claim("b beats a", {"experiment_type": "b"}, {"experiment_type": "a"}),
        claim("c beats a", {"experiment_type": "c"}, {"experiment_type": "a"}),
        claim("a stays under 0.9", 0.9, {"experiment_type": "a"}),
        claim("a's communication is a tenth", {"experiment_type": "a", "metric": "comm_ratio_vs_dense"}, 0.1)])
    text = write_report(str(tmp_path))
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in text.splitlines() if line.startswith("| all runs |")]
    assert verdicts == ["holds", "reversed", "open", "holds", "open"]
    # a - b: 0.10, 0.07, 0.09 (half-width 0.0379458); c - a: 0.01, -0.04, 0.01; 0.9 - a: 0.10, 0.08, 0.05
    # (mean 0.076667, s 0.025166, half-width 0.062517); a's ratio - 0.1: 0, 0, 0 (no spread: no interval)
    assert "| all runs | 3 | 0.8233 ± 0.0625 | 0.7367 ± 0.0799 | 0.0867 ± 0.0379 | holds |" in text
    assert "| all runs | 3 | 0.9000 | 0.8233 ± 0.0625 | 0.0767 ± 0.0625 | holds |" in text
    assert "| c beats a | - | - | all runs |" in text and "| b beats a | - | all runs | - |" in text
    with open(tmp_path / "report" / "claims.csv") as f:
        lines = list(csv.DictReader(f))
    assert [line["verdict"] for line in lines] == verdicts
    assert float(lines[2]["difference_mean"]) == pytest.approx(-0.0066667, abs=1e-7)


def test_a_claim_that_fixes_an_axis_is_tested_at_every_value_of_the_others(tmp_path):
    accuracies = {(method, density, seed): base + density + 0.01 * seed
                  for method, base in (("topk", 0.5), ("dense", 0.8)) for density in (0.01, 0.05) for seed in (1, 2)}
    accuracies[("topk", 0.05, 2)] += 0.02  # differences 0.04, 0.06: mean 0.05, half-width 12.7062 * 0.0141421 / 1.41421
    fake_sweep(tmp_path, accuracies, names=("experiment_type", "density", "seed"), claims=[
        claim("loses as d falls", {"density": 0.05}, {"density": 0.01})])
    axes, runs = load_runs(str(tmp_path))
    rows = claim_rows(report_options(str(tmp_path))[0][0], axes, runs)
    assert [row["setting"] for row in rows] == [{"experiment_type": "dense"}, {"experiment_type": "topk"}]
    assert rows[0]["difference"].mean == pytest.approx(0.04) and rows[0]["difference"].half_width == pytest.approx(0)
    assert rows[1]["difference"].mean == pytest.approx(0.05)
    assert rows[1]["difference"].half_width == pytest.approx(0.127062, abs=1e-6) and rows[1]["verdict"] == "open"
    assert "| loses as d falls | experiment_type dense | - | experiment_type topk |" in write_report(str(tmp_path))


def final_metrics(out):
    axes, runs = load_runs(str(out))
    return {run["name"]: [{k: v for k, v in r.items() if k not in TIMINGS} for r in run["records"]] for run in runs}


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_rest_finish(tmp_path):
    text = SMALL.replace("fl_rounds = 4", "fl_rounds = 1").replace("[0.05, 0.2]", "[0.05, 2.0]")
    process = sweep(write(tmp_path, text), "--out", str(tmp_path / "out"), "--jobs", "2")
    _, err = process.communicate(timeout=900)
    assert process.returncode == 1, err
    failed = sorted(p.name for p in (tmp_path / "out" / "logs").glob("*.failed"))
    assert failed == ["pdst__density=2.0_seed=1.failed", "pdst__density=2.0_seed=2.failed"]
    record = json.loads((tmp_path / "out" / "logs" / failed[0]).read_text())
    assert record["exit_status"] == 2 and "--density=2.0 is invalid" in record["error"]
    assert "sweep: error: pdst/density=2.0_seed=1 failed (exit 2): run.py: error: --density=2.0" in err
    assert sorted(final_metrics(tmp_path / "out")) == ["dense/seed=1", "dense/seed=2", "pdst/density=0.05_seed=1",
                                                       "pdst/density=0.05_seed=2"]


@pytest.mark.slow
def test_killed_sweep_restarts_to_the_results_of_an_uninterrupted_one(tmp_path):
    path = write(tmp_path, SMALL)
    whole = sweep(path, "--out", str(tmp_path / "whole"), "--jobs", "2")
    assert whole.wait(timeout=900) == 0, whole.stderr.read()
    killed = sweep(path, "--out", str(tmp_path / "killed"), "--jobs", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # mid-way: one run done, another part-way through its rounds
        done = [p for p in (tmp_path / "killed").glob("*/*/metrics.jsonl") if len(p.read_text().splitlines()) == 4]
        partial = [p for p in (tmp_path / "killed").glob("*/*/metrics.jsonl")
                   if 1 <= len(p.read_text().splitlines()) < 4]
        if done and partial:
            break
        time.sleep(0.2)
    assert done and partial, "the sweep never reached the middle"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    time.sleep(1)  # the runs die with the sweep (PR_SET_PDEATHSIG)
    survivors = subprocess.run(["pgrep", "-f", str(tmp_path / "killed")], capture_output=True, text=True).stdout
    assert survivors == "", survivors
    restarted = sweep(path, "--out", str(tmp_path / "killed"), "--jobs", "2", "--summarize")
    _, err = restarted.communicate(timeout=900)
    assert restarted.returncode == 0, err
    assert "finished before" in err.splitlines()[0]
    assert final_metrics(tmp_path / "killed") == final_metrics(tmp_path / "whole")
    assert len(final_metrics(tmp_path / "whole")) == 6
    assert (tmp_path / "killed" / "report" / "summary.md").exists()


def test_an_unusable_sweep_folder_or_manifest_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = subprocess.run([sys.executable, "-m", "flash_jax.sweep", write(tmp_path, SMALL), "--out",
                             str(tmp_path / "taken")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"sweep: error: --out {tmp_path / 'taken'}: File exists"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "sweep.json").write_text("{")
    result = subprocess.run([sys.executable, "-m", "flash_jax.sweep.report", str(tmp_path / "broken")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "its sweep.json or report folder is unusable (JSONDecodeError" in result.stderr
