"""FLASH's stage 1 and SPDST as the authors' PyTorch code runs them, on flash_jax's data.

Stage 1: every selected client gets a copy of the seeded initial model and the shared Bernoulli
mask at d, trains `init_epoch` epochs with plain SGD at lr_start (a shuffling DataLoader, the mask
re-applied after every step, the prune rate decayed every step) and runs the authors' MASK_UPDATE
after every epoch but the last (or once mid-epoch when there is one epoch). The server averages the
clients' layer densities, rescales them to d, caps them at 1 and draws a Bernoulli mask with them;
the model is re-initialised. SPDST then trains that mask like PDST (`torch_reference.Reference`).
"""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class AuthorsSparseLearning:
    """The authors' client sparse learning state (their `Masking`): the masks, the per-step linearly
    decaying prune rate and the adjusted-growth accumulator that pulls nnz back to d * N_m."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], prune_rate: float, total_steps: int,
                 density: float):
        self.params = dict(model.named_parameters())
        self.masks = {name: m.clone() for name, m in masks.items()}
        self.prune_rate, self.decrement = prune_rate, prune_rate / total_steps
        self.target = sum(m.numel() for m in masks.values()) * density
        self.adjusted_growth, self.deficits = 0.0, []
        self.apply()

    def apply(self) -> None:
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.params[name].mul_(mask)

    def after_step(self) -> None:
        self.apply()
        self.prune_rate -= self.decrement

    def update(self) -> None:
        """Magnitude prune, regrow by mean magnitude at random (Bernoulli), feed the nnz deficit back."""
        with torch.no_grad():
            stats = {n: _layer_stats(self.params[n], m) for n, m in self.masks.items()}
            total_mean = sum(s[2] for s in stats.values())
            rho = {n: s[2] / total_mean for n, s in stats.items()}
            removed, caps = 0, {}
            for name, (active, zeros, _) in stats.items():
                rate = self.prune_rate
                if zeros / self.masks[name].numel() < 0.2 and (1.0 / len(stats)) / rho[name] < 1.0:
                    rate = min(zeros / self.masks[name].numel(), rate)
                num_remove = math.ceil(rate * active)
                self.masks[name] = _prune(self.params[name], self.masks[name], zeros, num_remove)
                removed += active - self.masks[name].sum().item()
                caps[name] = 0.99 * (zeros + num_remove)
            regrowth = authors_regrowth(rho, caps, removed + self.adjusted_growth)
            for name, mask in self.masks.items():
                inactive = (mask == 0).sum().item()
                if inactive:
                    drawn = torch.rand(mask.shape) < math.floor(regrowth[name]) / inactive
                    self.masks[name] = (mask.bool() | drawn).float()
            self.apply()
            deficit = self.target - sum(m.sum().item() for m in self.masks.values())
            self.deficits.append(deficit)
            self.adjusted_growth = 0.25 * self.adjusted_growth + 0.75 * deficit + float(np.mean(self.deficits))


def _layer_stats(weight: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, float]:
    """(active, inactive, mean |w| over the active entries)."""
    active = mask.sum().item()
    return active, mask.numel() - active, weight.abs()[mask.bool()].mean().item()


def _prune(weight: torch.Tensor, mask: torch.Tensor, zeros: float, num_remove: int) -> torch.Tensor:
    """Zero the mask at the `zeros + num_remove` smallest |w| of the whole tensor (the inactive
    entries are 0, so they come first), as the authors do."""
    if num_remove == 0:
        return (weight != 0).float()
    new = mask.clone()
    new.view(-1)[torch.argsort(weight.abs().view(-1))[:math.ceil(zeros + num_remove)]] = 0.0
    return new


def authors_regrowth(rho: dict[str, float], caps: dict[str, float], total: float) -> dict[str, float]:
    """Growth per layer: ceil(rho_l * total), capped; the excess over a cap is spread evenly over all
    layers again (the capped ones hand theirs straight back) until nothing is left, or 1000 passes."""
    regrowth, residual, mean_residual, passes = {}, 9999.0, 0.0, 0
    while residual > 0 and passes < 1000:
        residual = 0.0
        for name in rho:
            want = regrowth.get(name, math.ceil(rho[name] * total)) + mean_residual
            regrowth[name] = min(want, caps[name])
            residual += want - regrowth[name]
        mean_residual, passes = residual / len(regrowth), passes + 1
    return regrowth


def bernoulli_masks(model: nn.Module, pattern: str, densities: dict[str, float] | float) -> dict[str, torch.Tensor]:
    """Each maskable entry kept with its layer's probability (the authors' random masks)."""
    masks = {}
    for name, w in model.named_parameters():
        if re.search(pattern, name):
            density = densities if isinstance(densities, float) else densities[name]
            masks[name] = (torch.rand(w.shape) < density).float()
    return masks


def train_sparse_client(global_model: nn.Module, images: torch.Tensor, labels: torch.Tensor, masks, *, lr: float,
                        batch_size: int, epochs: int, prune_rate: float, density: float) -> dict[str, torch.Tensor]:
    """One stage-1 client: the authors' NST client update with `epochs` local epochs; returns its masks."""
    model = copy.deepcopy(global_model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=batch_size,
                                         shuffle=True)
    learner = AuthorsSparseLearning(model, masks, prune_rate, len(loader) * epochs, density)
    for epoch in range(1, epochs + 1):
        for step, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            learner.after_step()
            if epochs == 1 and step == len(loader) // 2:
                learner.update()
        if epoch < epochs:
            learner.update()
    return learner.masks


def sensitivity_densities(client_masks: list[dict[str, torch.Tensor]], density: float):
    """(mean reported layer density, stage-2 layer density): the mean rescaled so that the layers hold
    d * N_m entries, each capped at 1."""
    names = list(client_masks[0])
    reported = {n: float(np.mean([(m[n] != 0).float().mean().item() for m in client_masks])) for n in names}
    sizes = {n: client_masks[0][n].numel() for n in names}
    scale = sum(sizes.values()) * density / sum(reported[n] * sizes[n] for n in names)
    return reported, {n: min(reported[n] * scale, 1.0) for n in names}
