"""The PyTorch reference a flash_jax round is timed against: the authors' training loop.

Clients train one after another; each gets a fresh copy of the global model and a fresh SGD optimizer,
iterates a shuffling DataLoader over its own examples, re-applies its mask after every step and (NST)
runs the authors' MASK_UPDATE mid-epoch; the server averages the clients' state dicts. Masked
tensors and data are the ones flash_jax uses (same partition, same standardised arrays).
"""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MNISTNet(nn.Module):
    """The authors' MNIST net, returning logits like flash_jax's unless `softmax` (theirs ends in a
    softmax that the cross-entropy is applied to: flash_jax's --mnistnet_softmax)."""

    def __init__(self, num_classes: int = 10, softmax: bool = False):
        super().__init__()
        self.softmax = softmax
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(5120, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 3, 1))
        x = F.relu(F.max_pool2d(self.conv2(x), 3, 1))
        x = self.fc2(F.relu(self.fc1(x.flatten(1))))
        return F.softmax(x, dim=1) if self.softmax else x


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 of the authors' code (3x3 stem, no stem max-pool)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for stage, planes in enumerate((64, 128, 256, 512)):
            for block in range(2):
                layers.append(BasicBlock(in_planes, planes, 2 if stage > 0 and block == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


MODELS = {"mnistnet": (MNISTNet, r"^(conv2|fc1)\.weight$"), "resnet18": (ResNet18, r"conv\d*\.weight$|shortcut\.0\.weight$")}


def random_masks(model: nn.Module, pattern: str, density: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A uniform random mask at `density` for every tensor whose name matches `pattern`."""
    masks = {}
    for name, w in model.named_parameters():
        if re.search(pattern, name):
            keep = max(1, round(density * w.numel()))
            flat = torch.zeros(w.numel())
            flat[torch.randperm(w.numel(), generator=generator)[:keep]] = 1.0
            masks[name] = flat.view_as(w)
    return masks


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name in masks:
                w.mul_(masks[name])


def mask_update(model: nn.Module, masks: dict[str, torch.Tensor], prune_rate: float) -> dict[str, torch.Tensor]:
    """The authors' MASK_UPDATE (docs/methods.md) as they run it: magnitude prune, redistribute by mean
    magnitude of the active weights, regrow with a Bernoulli draw over the inactive entries."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        means = {n: params[n].abs()[m.bool()].mean().item() if m.sum() > 0 else 0.0 for n, m in masks.items()}
        total_mean = sum(means.values()) or 1.0
        new_masks, removed = {}, 0
        for name, mask in masks.items():
            active = int(mask.sum().item())
            k = math.ceil(prune_rate * active)
            scores = torch.where(mask.bool(), params[name].abs(), torch.full_like(mask, float("inf")))
            pruned = mask.clone().view(-1)
            pruned[torch.argsort(scores.view(-1))[:k]] = 0.0
            new_masks[name], removed = pruned.view_as(mask), removed + k
        for name, mask in new_masks.items():
            inactive = mask.numel() - mask.sum()
            grow = min(math.ceil(means[name] / total_mean * removed), 0.99 * inactive.item())
            draw = (torch.rand_like(mask) < grow / max(inactive.item(), 1.0)) & ~mask.bool()
            new_masks[name] = mask + draw.float()
    _apply_masks(model, new_masks)
    return new_masks


def train_client(global_model: nn.Module, images: torch.Tensor, labels: torch.Tensor, masks, *, lr: float,
                 batch_size: int, epochs: int, sparse_learning: bool, prune_rate: float, augment: bool):
    """One client update: fresh model and optimizer, DataLoader, mask after every step."""
    model = copy.deepcopy(global_model)
    model.train()
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=batch_size,
                                         shuffle=True)
    masks = dict(masks) if masks is not None else None
    if masks:
        _apply_masks(model, masks)
    steps_per_epoch = len(loader)
    for epoch in range(epochs):
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)  # the authors' loop: host batches, moved one at a time
            if augment:
                x = _crop_flip(x)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if masks:
                _apply_masks(model, masks)
            mid_epoch = epochs == 1 and step == steps_per_epoch // 2
            if sparse_learning and (mid_epoch or (epochs > 1 and step == steps_per_epoch - 1 and epoch < epochs - 1)):
                done = epoch * steps_per_epoch + step + 1
                masks = mask_update(model, masks, prune_rate * (1 - done / (epochs * steps_per_epoch)))
    return model.state_dict(), masks


def _crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip (torchvision's CIFAR recipe)."""
    padded = F.pad(x, (4, 4, 4, 4))
    i, j = np.random.randint(0, 9, size=2)
    x = padded[..., i:i + x.shape[-2], j:j + x.shape[-1]]
    return torch.flip(x, dims=(-1,)) if np.random.rand() < 0.5 else x


def fedavg(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The authors' FedAvg: the plain mean of the clients' state dicts (integer buffers kept from the first)."""
    average = copy.deepcopy(states[0])
    for key, value in average.items():
        if value.is_floating_point():
            value.copy_(torch.stack([s[key] for s in states]).mean(dim=0))
    return average


class Reference:
    """The authors' federation on given data: `run_round(client_ids, lr)` trains and aggregates on
    `device` (the data stays on the host, as a DataLoader's does)."""

    def __init__(self, model_type: str, method: str, client_data: list[tuple[np.ndarray, np.ndarray]], *,
                 num_classes: int, density: float, batch_size: int, epochs: int, prune_rate: float,
                 augment: bool, seed: int = 0, device: str = "cpu"):
        torch.manual_seed(seed)
        build, pattern = MODELS[model_type]
        self.device = torch.device(device)
        self.model = build(num_classes)
        self.method = method
        # NHWC float32 arrays -> NCHW tensors, once (the authors' datasets are tensors by then too)
        self.client_data = [(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(y).long())
                            for x, y in client_data]
        self.options = dict(batch_size=batch_size, epochs=epochs, sparse_learning=method == "nst",
                            prune_rate=prune_rate, augment=augment)
        generator = torch.Generator().manual_seed(seed)
        masks = random_masks(self.model, pattern, density, generator) if method != "dense" else None
        self.model.to(self.device)
        if masks:
            masks = {name: m.to(self.device) for name, m in masks.items()}
        self.client_masks = [masks] * len(client_data)  # NST: every client's own mask, from the shared init

    def run_round(self, client_ids, lr: float) -> None:
        states = []
        for k in client_ids:
            state, mask = train_client(self.model, *self.client_data[k], self.client_masks[k], lr=lr, **self.options)
            self.client_masks[k] = mask
            states.append(state)
        self.model.load_state_dict(fedavg(states))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the round is over when its kernels are
