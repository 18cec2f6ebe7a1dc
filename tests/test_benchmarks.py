"""The benchmarks' plumbing (their numbers live in benchmarks/RESULTS.md, not in tests): the round-time
benchmark, the PyTorch references, every benchmark script's imports, and benchmarks.gpu_check: its
small check end to end (as the suite can run it, on CPU; it runs pytest itself, hence slow), and its
robustness to a failing step and to the time budget."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_check, round_time
from flash_jax.data.sources import DEBIAN_DIRS
from flash_jax.models import CONV_IMPLS, resolve_conv_impl

fashion_mnist = pytest.mark.skipif(not os.path.isdir(DEBIAN_DIRS["fashion_mnist"]),
                                   reason="needs Debian's dataset-fashion-mnist package")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("environment", "tests", "resnet18_conv", "torch_reference", "mnistnet")


@fashion_mnist
@pytest.mark.slow
def test_round_time_reports_compile_and_steady_state(tmp_path, capsys):
    out = tmp_path / "result.jsonl"
    assert round_time.main(["--setup", "mnistnet_fmnist", "--experiment_type", "pdst", "--clients_per_round", "1",
                            "--rounds", "2", "--skip_torch", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["clients_per_round"] == 1 and len(record["round_s_all"]) == 2
    assert record["round_s"] == pytest.approx(float(np.median(record["round_s_all"])), abs=1e-4)
    assert record["round_s"] > 0 and record["compile_s"] > 0
    # MNISTNet's forward+backward is ~12 MFLOP per example and a client holds 600 examples
    assert 3 < record["train_gflop_per_round"] < 15
    assert "ratio_vs_torch" not in capsys.readouterr().out


def test_reference_keeps_masks_applied_and_averages_clients():
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import Reference

    rng = np.random.default_rng(0)
    clients = [(rng.standard_normal((40, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 40).astype(np.int32))
               for _ in range(3)]
    for method in ("pdst", "nst"):
        reference = Reference("mnistnet", method, clients, num_classes=10, density=0.05, batch_size=16, epochs=1,
                              prune_rate=0.25, augment=False)
        reference.run_round([0, 2], lr=0.05)
        params = dict(reference.model.named_parameters())
        if method == "pdst":  # one shared mask: the average stays inside it
            for name, mask in reference.client_masks[0].items():
                assert torch.all(params[name][mask == 0] == 0)
        else:  # each participant's own mask changed, the union holds the average
            assert not torch.equal(reference.client_masks[0]["fc1.weight"], reference.client_masks[1]["fc1.weight"])
            union = torch.maximum(reference.client_masks[0]["fc1.weight"], reference.client_masks[2]["fc1.weight"])
            assert torch.all(params["fc1.weight"][union == 0] == 0)


def test_cross_device_setup_defaults_and_overrides():
    """mnistnet_fmnist_xdev is 10,000 clients, 1,000 per round, 100 per call unless flags say otherwise."""
    def config(*flags):
        args = round_time.make_parser().parse_args(["--setup", "mnistnet_fmnist_xdev", *flags])
        return round_time.make_config(args, round_time.SETUPS[args.setup])

    xdev = config()
    assert (xdev.num_users, xdev.clients_per_round, xdev.clients_per_chunk) == (10_000, 1000, 100)
    assert xdev.dataset == "fashion_mnist" and xdev.model_type == "mnistnet"
    whole = config("--clients_per_chunk", "0", "--clients_per_round", "500")
    assert (whole.clients_per_round, whole.clients_per_chunk) == (500, 0)
    small = round_time.make_config(round_time.make_parser().parse_args([]), round_time.SETUPS["mnistnet_fmnist"])
    assert (small.num_users, small.clients_per_round, small.clients_per_chunk) == (100, 10, 0)


def test_authors_regrowth_hands_a_capped_layers_excess_to_the_others():
    pytest.importorskip("torch")
    from benchmarks.torch_flash import authors_regrowth

    grown = authors_regrowth({"a": 0.9, "b": 0.1}, {"a": 50.0, "b": 1000.0}, 200.0)
    assert grown["a"] == 50.0 and grown["b"] == pytest.approx(150.0, abs=1e-6)


def test_authors_sparse_learning_keeps_density_and_masked_weights_zero():
    torch = pytest.importorskip("torch")
    from benchmarks.torch_flash import AuthorsSparseLearning, bernoulli_masks
    from benchmarks.torch_reference import MODELS, MNISTNet

    torch.manual_seed(0)
    model = MNISTNet(softmax=True)
    masks = bernoulli_masks(model, MODELS["mnistnet"][1], 0.05)
    learner = AuthorsSparseLearning(model, masks, prune_rate=0.25, total_steps=10, density=0.05)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # stands in for a training step
    learner.after_step()
    learner.update()
    params = dict(model.named_parameters())
    total = sum(m.sum().item() for m in learner.masks.values())
    assert abs(total - learner.target) < 0.05 * learner.target
    assert learner.masks["conv2.weight"].mean() > 0.05  # conv2's larger weights draw growth
    for name, mask in learner.masks.items():
        assert torch.all(params[name][mask == 0] == 0)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
                                        if p.stem != "__init__"))
def test_every_benchmark_script_imports(name):
    """A benchmark is run rarely: its imports are checked with the suite (torch's only where installed)."""
    try:
        importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        pytest.skip("torch is not installed")


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
