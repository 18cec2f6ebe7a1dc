"""benchmarks.gpu_check: the small check end to end (as the suite can run it, on CPU), and its
robustness to a failing step and to the time budget."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check, round_time
from flash_jax.models import CONV_IMPLS, resolve_conv_impl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("environment", "tests", "resnet18_conv", "torch_reference", "mnistnet")


@pytest.mark.slow
def test_the_small_check_measures_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--small", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_measured(tmp_path)


def assert_measured(out):
    """Every section of a small check's record is present and real."""
    result = json.loads((out / "gpu_check.json").read_text())
    assert all(result[s]["status"] in ("ok", "skipped") for s in SECTIONS) and not result["failed"]
    env = result["environment"]
    assert env["versions"]["jax"] and env["versions"]["flax"] and env["device_count"] >= 1 and env["backend"]
    tests = result["tests"]
    assert tests["status"] == "ok" and tests["passed"] == len(gpu_check.SMALL.tests) and tests["failed"] == 0
    resnet = result["resnet18_conv"]
    assert [r["conv_impl"] for r in resnet["runs"]] == list(CONV_IMPLS)
    runs = resnet["runs"] + result["mnistnet"]["runs"]
    for run in runs:
        assert run["status"] == "ok" and run["round_s"] > 0 and run["train_gflop_per_round"] > 0
        assert run["achieved_tflops"] > 0 and len(run["round_s_all"]) == gpu_check.SMALL.rounds
    fastest = min(resnet["runs"], key=lambda r: r["round_s"])["conv_impl"]
    assert resnet["chosen"] == fastest and resnet["chosen"] in CONV_IMPLS
    assert resnet["auto"] == resolve_conv_impl("auto") and resnet["auto_agrees"] == (fastest == resnet["auto"])
    assert [r["clients_per_round"] for r in result["mnistnet"]["runs"]] == list(gpu_check.SMALL.mnist_cohorts)
    assert {r["conv_impl"] for r in result["mnistnet"]["runs"]} == {fastest}
    torch = result["torch_reference"]
    if torch["status"] == "skipped":
        assert torch["reason"] == "torch not installed"
    else:
        assert all(r["torch_round_s"] > 0 for r in torch["runs"])
    report = (out / "gpu_check.md").read_text()
    assert "tests: **ok**: 1 passed" in report and f"(fastest at the largest K) **{fastest}**" in report
    assert sum(line.startswith("| resnet18_cifar |") or line.startswith("| mnistnet_fmnist |")
               for line in report.splitlines()) == len(runs) + len(torch.get("runs", []))


def fake_measure(args, dataset):
    """round_time.measure without training: 'patches' breaks, 'slices' is fastest."""
    if args.conv_impl == "patches":
        raise RuntimeError("out of memory")
    return {"setup": args.setup, "clients_per_round": args.clients_per_round, "conv_impl": args.conv_impl,
            "compile_s": 1.0, "round_s": {"xla": 3.0, "slices": 1.0}[args.conv_impl], "achieved_gflops": 5.0}


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "run_tests", lambda node_ids, timeout_s: {"passed": 1})
    monkeypatch.setattr(gpu_check, "fashion_mnist", lambda: (None, "none"))
    monkeypatch.setattr(round_time, "measure", fake_measure)
    assert gpu_check.main(["--small", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["failed"] and result["resnet18_conv"]["status"] == "failed"
    statuses = {r["conv_impl"]: (r["status"], r.get("error")) for r in result["resnet18_conv"]["runs"]}
    assert statuses == {"xla": ("ok", None), "patches": ("failed", "RuntimeError: out of memory"),
                        "slices": ("ok", None)}
    assert result["resnet18_conv"]["chosen"] == "slices"
    assert [(r["status"], r["conv_impl"]) for r in result["mnistnet"]["runs"]] == [("ok", "slices")] * 2
    assert "failed: RuntimeError: out of memory" in (tmp_path / "gpu_check.md").read_text()


def test_steps_past_the_budget_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "fashion_mnist", lambda: (None, "none"))
    assert gpu_check.main(["--small", "--out", str(tmp_path), "--budget_s", "0"]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    runs = result["resnet18_conv"]["runs"] + result["mnistnet"]["runs"]
    assert result["tests"]["status"] == "skipped" and "--budget_s" in result["tests"]["reason"]
    assert len(runs) == 3 + 2 and {r["status"] for r in runs} == {"skipped"}
    assert result["resnet18_conv"]["chosen"] is None and not result["failed"]


@pytest.mark.parametrize("kind, fp32", [("NVIDIA H200", 66.9), ("NVIDIA H100 80GB HBM3", 66.9),
                                        ("NVIDIA A100-SXM4-80GB", 19.5), ("NVIDIA H100 PCIe", None), ("cpu", None)])
def test_peaks_by_device_kind(kind, fp32):
    peak = gpu_check.peak_tflops(kind)
    assert (peak and peak["fp32"]) == fp32
