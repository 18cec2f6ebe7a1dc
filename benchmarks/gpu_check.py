"""What a lent GPU is worth to flash_jax, in one command of under 8 minutes:

    python -m benchmarks.gpu_check --out DIR          # on the GPU machine
    python -m benchmarks.gpu_check --small --out DIR  # the same steps at toy sizes (CPU, ~2 minutes)

It runs the tests whose properties a new backend could break (vmapped cohort = clients one by one,
chunked = whole cohort, bit-exact resume), times ResNet-18 on CIFAR-shaped data at K=10 and 100 with
each convolution formulation and names the fastest, times the PyTorch reference on the same device,
and MNISTNet up to 1,000 clients a round; FLOP/s are set against the device's peak. Results go to
DIR/gpu_check.json and DIR/gpu_check.md. A failing step records its error and the rest still run; a
step that would overrun --budget_s is recorded as skipped. Exit status 1 when any step failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback

import jax

from benchmarks import round_time
from benchmarks.gpu_report import markdown
from flash_jax.data.sources import DataError, load_dataset
from flash_jax.models import CONV_IMPLS, resolve_conv_impl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dense peak TFLOP/s of the SXM parts: NVIDIA's datasheets as tabulated at
# https://glennklockwood.com/garden/processors/h100 and .../A100; the H200 is the H100's GH100 die with
# more memory. PCIe and NVL parts run lower clocks and are not listed: their peak is null.
PEAK_TFLOPS = {"H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
               "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
               "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}}
PEAK_SOURCE = "NVIDIA datasheets via glennklockwood.com/garden/processors/{h100,A100}; dense, SXM"
VMAPPED = "tests/test_client_training.py::test_vmapped_cohort_equals_sequential_clients"
# The fastest tests of each property (about 50 s on a 2-core CPU): the vmapped cohort equals its clients
# trained one by one; one call equals chunks; a resumed run is bit-exact (dense)
TESTS = (VMAPPED, "tests/test_client_training.py::test_cohort_averages_batch_norm_statistics_and_augments",
         "tests/test_checkpoint.py::test_resume_after_a_damaged_checkpoint_is_bit_exact[settings0]")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of a check. Cohorts map K to (clients in the federation, clients per chunk; 0: all)."""

    tests: tuple[str, ...]
    rounds: int
    resnet_image: tuple[int, int, int]
    resnet_examples: int
    resnet_cohorts: dict[int, tuple[int, int]]
    mnist_cohorts: dict[int, tuple[int, int]]


FULL = Plan(TESTS, 3, (32, 32, 3), 50_000, {10: (100, 0), 100: (100, 25)},
            {10: (100, 0), 100: (100, 0), 1000: (1000, 500)})
SMALL = Plan((f"{VMAPPED}[True]",), 1, (8, 8, 3), 64, {2: (4, 0)}, {2: (2000, 0), 4: (2000, 2)})


def peak_tflops(device_kind: str) -> dict | None:
    if "PCIe" in device_kind or "NVL" in device_kind:
        return None
    return next((peak for name, peak in PEAK_TFLOPS.items() if name in device_kind), None)


class Check:
    """Runs steps against the time budget and keeps the record."""

    def __init__(self, out: str, budget_s: float, small: bool):
        self.out, self.budget_s, self.start, self.failed = out, budget_s, time.perf_counter(), False
        self.result = {"small": small, "budget_s": budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(self, fn, estimate_s: float = 0.0, **label) -> dict:
        """`fn()`'s record, or its error, or 'skipped' when it would end past the budget."""
        if self.elapsed() + estimate_s > self.budget_s:
            record = {**label, "status": "skipped",
                      "reason": f"at {self.elapsed():.0f} s, ~{estimate_s:.0f} s more would pass --budget_s"}
        else:
            tic = time.perf_counter()
            try:
                record = {**label, "status": "ok", **fn()}
            except Exception as err:  # noqa: BLE001 -- a step's failure is its result; the check goes on
                traceback.print_exc()
                record = {**label, "status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}
            record["wall_s"] = round(time.perf_counter() - tic, 2)
        self.failed |= record["status"] == "failed"
        print(f"[{self.elapsed():6.0f} s] {label} {record['status']} {record.get('round_s', '')} "
              f"{record.get('error', record.get('reason', ''))}".rstrip(), flush=True)
        return record

    def save(self, section: str, record: dict) -> None:
        """Keep `section` and rewrite both files, so a check cut short still leaves what it measured."""
        self.result[section] = record
        self.result.update(total_s=round(self.elapsed(), 1), failed=self.failed)
        with open(os.path.join(self.out, "gpu_check.json"), "w") as f:
            json.dump(self.result, f, indent=2)
        with open(os.path.join(self.out, "gpu_check.md"), "w") as f:
            f.write(markdown(self.result))


def run_tests(node_ids: tuple[str, ...], timeout_s: float) -> dict:
    """pytest on the node ids in a child process (before this one takes the GPU's memory); slow ones too,
    which the suite's default marker expression would deselect."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "slow or not slow",
               *node_ids]
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"node_ids": list(node_ids), "status": "failed", "error": f"pytest timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error)", summary)}
    return {"node_ids": list(node_ids), "status": "ok" if proc.returncode == 0 else "failed",
            "returncode": proc.returncode, "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0), "summary": summary,
            **({"output_tail": (proc.stdout + proc.stderr)[-4000:]} if proc.returncode else {})}


def environment() -> dict:
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {"versions": versions, "python": platform.python_version(), "backend": jax.default_backend(),
            "device_kind": devices[0].device_kind, "device_count": len(devices),
            "peak_tflops": peak_tflops(devices[0].device_kind), "peak_source": PEAK_SOURCE}


def measure(setup: str, k: int, users: int, chunk: int, conv: str, plan: Plan, dataset, peak,
            torch_device: str | None = None) -> dict:
    """round_time's record of one cohort size, with TFLOP/s and their fraction of the device's peaks."""
    flags = ["--setup", setup, "--clients_per_round", str(k), "--num_users", str(users), "--clients_per_chunk",
             str(chunk), "--rounds", str(plan.rounds), "--conv_impl", conv]
    flags += ["--torch_device", torch_device] if torch_device else ["--skip_torch"]
    record = round_time.measure(round_time.make_parser().parse_args(flags), dataset)
    tflops = record["achieved_gflops"] / 1000
    return {**record, "achieved_tflops": round(tflops, 4),
            "of_peak": peak and {p: round(tflops / v, 4) for p, v in peak.items() if p != "bf16"}}


def estimate(done: list[dict], k: int, rounds: int) -> float:
    """Seconds a run at K should take from the last finished run like it: its compile and its rounds
    scaled by K (0 without one: the first run of a kind always starts)."""
    last = next((r for r in reversed(done) if r["status"] == "ok"), None)
    return 0.0 if last is None else last["compile_s"] + (rounds + 1) * last["round_s"] * k / last["clients_per_round"]


def sweep(check: Check, plan: Plan, setup: str, cohorts: dict, convs, data, peak, runs: list[dict]) -> list[dict]:
    """Time `setup` at each cohort size with each convolution, appended to `runs` (whose like runs
    give the estimates)."""
    for k, (users, chunk) in cohorts.items():
        for conv in convs:
            prior = [r for r in runs if r["conv_impl"] == conv]
            runs.append(check.step(lambda: measure(setup, k, users, chunk, conv, plan, data, peak),
                                   estimate(prior, k, plan.rounds), setup=setup, clients_per_round=k, conv_impl=conv))
    return runs


def conv_choice(runs: list[dict]) -> dict:
    """The fastest formulation at each K, the one at the largest K as the default, and what 'auto' says."""
    done = [r for r in runs if r["status"] == "ok"]
    fastest = {k: min((r for r in done if r["clients_per_round"] == k), key=lambda r: r["round_s"])["conv_impl"]
               for k in sorted({r["clients_per_round"] for r in done})}
    chosen = fastest[max(fastest)] if fastest else None
    auto = resolve_conv_impl("auto")
    return {"status": _status(runs), "runs": runs, "fastest_by_k": fastest, "chosen": chosen, "auto": auto,
            "auto_agrees": chosen == auto if chosen else None}


def torch_reference(check: Check, plan: Plan, conv: str, timed: dict, peak) -> dict:
    """The PyTorch reference beside flash_jax at the smallest K of each setup (`timed`: setup -> (cohorts,
    data, flash_jax's runs)), on CUDA when torch has it; on a GPU backend a CPU-only torch is skipped."""
    try:
        import torch
    except ImportError:
        return {"status": "skipped", "reason": "torch not installed"}
    info = {"torch_version": torch.__version__, "cuda": torch.cuda.is_available(),
            "allow_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}
    if jax.default_backend() != "cpu" and not info["cuda"]:
        return {**info, "status": "skipped", "reason": f"torch {torch.__version__} has no CUDA: not the same device"}
    device, runs = "cuda" if info["cuda"] else "cpu", []
    for setup, (cohorts, data, jax_runs) in timed.items():
        k, (users, chunk) = next(iter(cohorts.items()))
        like = [r for r in jax_runs if r["clients_per_round"] == k and r["conv_impl"] == conv]
        runs.append(check.step(lambda: measure(setup, k, users, chunk, conv, plan, data, peak, device),
                               2 * estimate(like, k, plan.rounds), setup=setup, clients_per_round=k, conv_impl=conv))
    return {**info, "status": _status(runs), "device": device, "runs": runs}


def fashion_mnist():
    """Fashion-MNIST, or random images of its shape where its files are absent."""
    try:
        return load_dataset("fashion_mnist"), "fashion_mnist"
    except DataError:
        return round_time.random_images("fashion_mnist", (28, 28, 1), 60_000), "random 28x28x1 (Fashion-MNIST absent)"


def _status(runs: list[dict]) -> str:
    statuses = {r["status"] for r in runs}
    return "failed" if "failed" in statuses else "ok" if "ok" in statuses else "skipped"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--small", action="store_true", help="toy sizes: the plumbing, on CPU, in ~2 minutes")
    parser.add_argument("--budget_s", type=float, default=450.0, help="skip steps that would end past this")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    plan = SMALL if args.small else FULL
    check = Check(args.out, args.budget_s, args.small)
    # the tests' process first: this one's first device call reserves most of a GPU's memory
    tests = check.step(lambda: run_tests(plan.tests, max(60.0, min(300.0, args.budget_s / 2))), step="tests")
    env = check.step(environment, step="environment")
    check.save("environment", env)
    check.save("tests", tests)
    peak = env.get("peak_tflops")
    cifar = round_time.random_images("cifar10", plan.resnet_image, plan.resnet_examples)
    (k0, first), *larger = plan.resnet_cohorts.items()
    resnet = sweep(check, plan, "resnet18_cifar", {k0: first}, CONV_IMPLS, cifar, peak, [])
    # MNISTNet and the reference take the fastest at the smallest K: the larger K run last, as the
    # runs a budget overrun should cost first
    conv = conv_choice(resnet)["chosen"] or "auto"
    check.save("resnet18_conv", {**conv_choice(resnet), "used_by_the_others": conv})
    fmnist, source = fashion_mnist()
    mnist = sweep(check, plan, "mnistnet_fmnist", plan.mnist_cohorts, (conv,), fmnist, peak, [])
    check.save("mnistnet", {"status": _status(mnist), "data": source, "runs": mnist})
    timed = {"resnet18_cifar": (plan.resnet_cohorts, cifar, resnet),
             "mnistnet_fmnist": (plan.mnist_cohorts, fmnist, mnist)}
    check.save("torch_reference", torch_reference(check, plan, conv, timed, peak))
    sweep(check, plan, "resnet18_cifar", dict(larger), CONV_IMPLS, cifar, peak, resnet)
    check.save("resnet18_conv", {**conv_choice(resnet), "used_by_the_others": conv})
    print(f"wrote {os.path.join(args.out, 'gpu_check.json')} and gpu_check.md in {check.elapsed():.0f} s"
          f"{'; some steps failed' if check.failed else ''}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
