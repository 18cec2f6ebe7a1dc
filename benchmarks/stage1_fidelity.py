"""Stage-1 layer densities and SPDST accuracy from the PyTorch reference of the authors' code, on
flash_jax's data: the same standardised Fashion-MNIST, the same Dirichlet partition and the same
stage-1 and round clients as flash_jax for a seed, so that only the implementation differs.

    python -m benchmarks.stage1_fidelity stage1 --seeds 1 2 3 4 5 --json OUT.jsonl
    python -m benchmarks.stage1_fidelity spdst --seeds 1 --rounds 100 --eval_every 10 --json OUT.jsonl
    python -m benchmarks.stage1_fidelity table --json OUT.jsonl --workdirs W1 W2 ...   # flash_jax's workdirs
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import torch

from benchmarks.torch_flash import bernoulli_masks, sensitivity_densities, train_sparse_client
from benchmarks.torch_reference import MODELS, MNISTNet, fedavg, train_client
from flash_jax.data.partition import partition
from flash_jax.data.sources import load_dataset
from flash_jax.streams import ROUND, SENSITIVITY, sample_clients

PATTERN = MODELS["mnistnet"][1]


def client_tensors(dataset, num_users: int, alpha: float, seed: int):
    """Every client's (NCHW images, labels) under flash_jax's partition for `seed`."""
    parts = partition(dataset.train_y, num_users, alpha, seed)
    return [(torch.tensor(dataset.train_x[ix].transpose(0, 3, 1, 2)), torch.tensor(dataset.train_y[ix]).long())
            for ix in parts]


def stage1(args, clients, seed: int):
    """The sensitivity stage; returns (stage-1 clients, each client's layer densities, their mean,
    the stage-2 densities)."""
    model = MNISTNet(softmax=True)
    masks = bernoulli_masks(model, PATTERN, args.density)
    stage1_clients = max(math.floor(args.init_frac * args.num_users), 1)
    ids = sample_clients(seed, SENSITIVITY, 0, args.num_users, stage1_clients)
    client_masks = [train_sparse_client(model, *clients[k], masks, lr=args.lr_start, batch_size=args.local_bs,
                                        epochs=args.init_epoch, prune_rate=args.prune_rate, density=args.density)
                    for k in ids]
    uploads = {n: [(m[n] != 0).float().mean().item() for m in client_masks] for n in client_masks[0]}
    reported, densities = sensitivity_densities(client_masks, args.density)
    return ids, uploads, reported, densities


def authors_lr(args, r: int) -> float:
    """Round r's learning rate in the authors' code: lr_start in rounds 0 and 1, then their
    exponential decay with its 1000-round horizon."""
    return args.lr_start * math.exp(max(r - 1, 0) / 1000 * math.log(args.lr_end / args.lr_start))


def accuracy(model, dataset) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.tensor(dataset.test_x.transpose(0, 3, 1, 2))
        predicted = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((predicted.numpy() == dataset.test_y).mean())


def spdst(args, clients, dataset, densities: dict[str, float], seed: int) -> dict[int, float]:
    """Stage 2: a fresh model, a Bernoulli mask at the stage-1 densities, PDST with FedAvg."""
    model = MNISTNet(softmax=True)
    masks = bernoulli_masks(model, PATTERN, densities)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name in masks:
                w.mul_(masks[name])
    per_round = max(math.floor(args.frac * args.num_users), 1)
    history = {}
    for r in range(args.rounds):
        states = [train_client(model, *clients[k], masks, lr=authors_lr(args, r), batch_size=args.local_bs,
                               epochs=1, sparse_learning=False, prune_rate=0.0, augment=False)[0]
                  for k in sample_clients(seed, ROUND, r, args.num_users, per_round)]
        model.load_state_dict(fedavg(states))
        if (r + 1) % args.eval_every == 0:
            history[r + 1] = accuracy(model, dataset)
            print(f"seed {seed} round {r + 1} accuracy {history[r + 1]:.4f}", file=sys.stderr, flush=True)
    return history


def density_table(torch_jsonl: str, workdirs: list[str]) -> str:
    """Markdown: the stage-2 layer densities (rescaled) per seed of both implementations, with the
    mean and the sample standard deviation over seeds."""
    runs = {"flash_jax": {}, "PyTorch reference": {}}
    with open(torch_jsonl) as f:
        for record in map(json.loads, f):
            runs["PyTorch reference"][record["seed"]] = list(record["layer_density"].values())
    for workdir in workdirs:
        with open(f"{workdir}/config.json") as f, open(f"{workdir}/sensitivity.json") as g:
            runs["flash_jax"][json.load(f)["seed"]] = list(json.load(g)["layer_density"].values())
    lines = ["| implementation | seed | conv2 density | fc1 density |", "|---|---|---|---|"]
    for name, by_seed in runs.items():
        lines += [f"| {name} | {seed} | {conv2:.4f} | {fc1:.4f} |" for seed, (conv2, fc1) in sorted(by_seed.items())]
        if len(by_seed) > 1:
            mean, sd = np.mean(list(by_seed.values()), axis=0), np.std(list(by_seed.values()), axis=0, ddof=1)
            lines.append(f"| {name} | mean ± sd | {mean[0]:.4f} ± {sd[0]:.4f} | {mean[1]:.4f} ± {sd[1]:.4f} |")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("stage1", "spdst", "table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--json", help="append one record per seed to this JSON-lines file (table: read it)")
    parser.add_argument("--workdirs", nargs="*", default=[], help="table: flash_jax runs' workdirs")
    for flag, value in (("num_users", 100), ("init_epoch", 10), ("local_bs", 32), ("rounds", 100),
                        ("eval_every", 10)):
        parser.add_argument(f"--{flag}", type=int, default=value)
    for flag, value in (("alpha", 1.0), ("density", 0.05), ("frac", 0.1), ("init_frac", 0.1), ("lr_start", 0.1),
                        ("lr_end", 0.001), ("prune_rate", 0.25)):
        parser.add_argument(f"--{flag}", type=float, default=value)
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.what == "table":
        print(density_table(args.json, args.workdirs))
        return 0
    torch.set_num_threads(1)  # on a small shared CPU, intra-op threads slow MNISTNet's steps several-fold
    dataset = load_dataset("fashion_mnist")
    for seed in args.seeds:
        torch.manual_seed(seed)
        clients = client_tensors(dataset, args.num_users, args.alpha, seed)
        ids, uploads, reported, densities = stage1(args, clients, seed)
        record = {"implementation": "torch", "seed": seed, "clients": ids.tolist(), "client_layer_density": uploads,
                  "reported_layer_density": reported, "layer_density": densities}
        if args.what == "spdst":
            record["accuracy"] = spdst(args, clients, dataset, densities, seed)
        print(json.dumps(record), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
