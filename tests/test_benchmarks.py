"""The round-time benchmark's plumbing (its numbers live in benchmarks/RESULTS.md, not in tests)."""
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import round_time
from flash_jax.data.sources import DEBIAN_DIRS

fashion_mnist = pytest.mark.skipif(not __import__("os").path.isdir(DEBIAN_DIRS["fashion_mnist"]),
                                   reason="needs Debian's dataset-fashion-mnist package")


@fashion_mnist
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
