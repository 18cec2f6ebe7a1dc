"""Seconds per federated round: flash_jax against the authors' PyTorch loop, side by side in one run.

    python -m benchmarks.round_time --setup mnistnet_fmnist --experiment_type pdst

flash_jax's first round is reported as compile time (first round minus the steady-state median);
then timed rounds of flash_jax and of the reference alternate, so both see the same machine load,
and each reports its median. The last line is `ratio_vs_torch <flash_jax s/round / reference s/round>`.
Training rounds only: evaluation is not timed (flash_jax's round includes its mask consensus and
communication bookkeeping, the reference has none).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flash_jax.config import Config, ConfigError
from flash_jax.data.sources import DataError, Dataset, load_dataset
from flash_jax.fl.round import run_round
from flash_jax.fl.state import init_state
from flash_jax.fl.setup import build_setup
from flash_jax.models import get_model, init_variables
from flash_jax.settings import validate

METHODS = ("dense", "pdst", "nst")


def random_images(name: str, shape: tuple[int, ...], num_examples: int, seed: int = 0) -> Dataset:
    """Random images of `shape` with random labels of 10 classes: timing needs the shapes, not the content."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_examples, *shape), dtype=np.float32)
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    return Dataset(name, images, labels, images[:1000], labels[:1000], 10)


def cifar_shaped(num_examples: int = 50_000, seed: int = 0) -> Dataset:
    return random_images("cifar10", (32, 32, 3), num_examples, seed)


@dataclasses.dataclass(frozen=True)
class BenchSetup:
    model_type: str
    dataset: str
    num_users: int
    load: callable
    clients_per_round: int = 10
    clients_per_chunk: int = 0


SETUPS = {
    "mnistnet_fmnist": BenchSetup("mnistnet", "fashion_mnist", 100, lambda: load_dataset("fashion_mnist")),
    # the cross-device regime: ~6 examples per client, so one step of batch 6 each, many clients per call
    "mnistnet_fmnist_xdev": BenchSetup("mnistnet", "fashion_mnist", 10_000, lambda: load_dataset("fashion_mnist"),
                                       clients_per_round=1000, clients_per_chunk=100),
    "resnet18_cifar": BenchSetup("resnet18", "cifar10", 100, cifar_shaped),
}


def make_config(args, bench: BenchSetup) -> Config:
    chunk = bench.clients_per_chunk if args.clients_per_chunk is None else args.clients_per_chunk
    extra = {"clients_per_chunk": chunk} if chunk else {}
    num_users = args.num_users or bench.num_users
    per_round = args.clients_per_round or bench.clients_per_round
    return validate(Config(experiment_type=args.experiment_type, dataset=bench.dataset, model_type=bench.model_type,
                           num_users=num_users, frac=per_round / num_users, local_epoch=1,
                           local_bs=32, density=args.density, conv_impl=args.conv_impl, fl_rounds=1000, quiet=True,
                           seed=args.seed, **extra))


def train_flops_per_example(setup, batch_size: int) -> float:
    """XLA's FLOP count of one SGD step's forward and backward pass with the native convolution,
    per example: the nominal work, whatever formulation the cohort uses."""
    return _train_flops(setup.config.model_type, setup.model.module.num_classes, tuple(setup.data.input_shape),
                        batch_size)


@functools.cache  # one compile per model and batch size, however many measurements share them
def _train_flops(model_type: str, num_classes: int, input_shape: tuple, batch_size: int) -> float:
    model = get_model(model_type, num_classes, "xla")
    variables = init_variables(model, jax.random.PRNGKey(0), input_shape)

    def loss(params, x, y):
        extra = {"batch_stats": variables["batch_stats"]} if model.has_batch_stats else {}
        out = model.module.apply({"params": params, **extra}, x, train=True,
                                 mutable=["batch_stats"] if model.has_batch_stats else False)
        logits = out[0] if model.has_batch_stats else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    x = jnp.zeros((batch_size, *input_shape), jnp.float32)
    y = jnp.zeros((batch_size,), jnp.int32)
    cost = jax.jit(jax.grad(loss)).lower(variables["params"], x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / batch_size


def timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=sorted(SETUPS), default="mnistnet_fmnist")
    parser.add_argument("--experiment_type", choices=METHODS, default="pdst")
    parser.add_argument("--clients_per_round", type=int, default=0, help="0: the setup's (10 unless it says)")
    parser.add_argument("--num_users", type=int, default=0, help="clients in the federation (0: the setup's)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each (after one warm-up round)")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--conv_impl", default="auto")
    parser.add_argument("--clients_per_chunk", type=int, default=None,
                        help="clients per jitted call (0: the whole cohort; default: the setup's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip_torch", action="store_true", help="time flash_jax only (no ratio line)")
    parser.add_argument("--torch_device", default="cpu", help="where the PyTorch reference trains (cpu, cuda)")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    return parser


def measure(args, dataset: Dataset | None = None) -> dict:
    """One measurement (make_parser's arguments) as round_time's JSON record; `dataset` replaces the
    setup's own data. Raises ConfigError or DataError for settings it cannot run, ImportError when the
    reference is asked for without torch."""
    bench = SETUPS[args.setup]
    config = make_config(args, bench)
    dataset = bench.load() if dataset is None else dataset
    reference = None
    if not args.skip_torch:
        from benchmarks.torch_reference import Reference

    setup = build_setup(config, dataset)
    state = init_state(setup)
    k = config.clients_per_round
    flops = train_flops_per_example(setup, config.local_bs)
    examples_per_round = float(np.mean(setup.data.store.counts)) * k * config.local_epoch

    def jax_round():
        nonlocal state
        state, _ = run_round(setup, state)
        jax.block_until_ready(state.model.params)

    if not args.skip_torch:
        store = setup.data.store
        client_data = [(np.asarray(store.x[o:o + c]), np.asarray(store.y[o:o + c]))
                       for o, c in zip(store.offsets, store.counts)]
        reference = Reference(config.model_type, config.experiment_type, client_data,
                              num_classes=dataset.num_classes, density=config.density, batch_size=config.local_bs,
                              epochs=config.local_epoch, prune_rate=config.prune_rate,
                              augment=setup.spec.augment, seed=config.seed, device=args.torch_device)
        rng = np.random.default_rng(config.seed)

    def torch_round():
        reference.run_round(rng.choice(config.num_users, k, replace=False), config.lr_start)

    first = timed(jax_round)
    if reference:
        timed(torch_round)  # warm-up: allocator and thread pools
    jax_s, torch_s = [], []
    for _ in range(args.rounds):
        jax_s.append(timed(jax_round))
        if reference:
            torch_s.append(timed(torch_round))
    jax_median = statistics.median(jax_s)
    result = {"setup": args.setup, "experiment_type": args.experiment_type, "clients_per_round": k,
              "num_users": config.num_users, "clients_per_chunk": config.clients_per_chunk,
              "conv_impl": setup.model.module.conv_impl,
              "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
              "devices": jax.device_count(), "machine": platform.processor() or platform.machine(),
              "compile_s": round(first - jax_median, 3), "round_s": round(jax_median, 4),
              "round_s_all": [round(t, 4) for t in jax_s],
              "train_gflop_per_round": round(flops * examples_per_round / 1e9, 2),
              "achieved_gflops": round(flops * examples_per_round / jax_median / 1e9, 2)}
    if reference:
        torch_median = statistics.median(torch_s)
        result.update(torch_round_s=round(torch_median, 4), torch_round_s_all=[round(t, 4) for t in torch_s],
                      torch_version=sys.modules["torch"].__version__, torch_device=str(reference.device),
                      ratio_vs_torch=round(jax_median / torch_median, 4))
    return result


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        result = measure(args)
    except (ConfigError, DataError) as err:
        parser.exit(2, f"error: {err}\n")
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        parser.exit(2, "error: the PyTorch reference needs torch (pip install torch==2.13.0), or pass --skip_torch\n")
    jax_s = result["round_s_all"]
    print(f"{args.setup} {args.experiment_type}: {result['clients_per_round']} clients per round, {args.rounds} timed "
          f"rounds, {result['backend']} ({result['device']}, {result['devices']} device(s)), conv {result['conv_impl']}")
    print(f"flash_jax  compile_s {result['compile_s']:.2f}  round_s median {result['round_s']:.4f}  "
          f"(min {min(jax_s):.4f}, max {max(jax_s):.4f})  {result['achieved_gflops']} GFLOP/s")
    if "torch_round_s" in result:
        torch_s = result["torch_round_s_all"]
        print(f"torch      round_s median {result['torch_round_s']:.4f}  (min {min(torch_s):.4f}, "
              f"max {max(torch_s):.4f})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    if "ratio_vs_torch" in result:
        print(f"ratio_vs_torch {result['ratio_vs_torch']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
