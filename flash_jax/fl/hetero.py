"""hetero-FLASH's budgets: which budget level each participant trains at, and the
server's mask of every level, derived from the mask at d and the model's magnitudes."""
from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from flash_jax.config import Config
from flash_jax.fl.setup import Setup
from flash_jax.sparse import Masks, level_masks, stack_levels
from flash_jax.streams import HETERO, generator


def _largest_remainder(shares: tuple[float, ...], total: int) -> np.ndarray:
    """Integer counts summing to `total` in proportion to `shares` (Hamilton's method)."""
    quotas = np.asarray(shares) * total
    counts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def client_budget_levels(config: Config) -> np.ndarray:
    """Each client's budget level (index into Config.density_levels), fixed for the run like a
    device's resource limit: exact shares of the N clients, assigned by a seeded permutation;
    all at level 0 (d) without --hetero_client."""
    if not config.hetero_client:
        return np.zeros(config.num_users, np.int64)
    levels, shares = config.density_levels
    assigned = np.repeat(np.arange(len(levels)), _largest_remainder(shares, config.num_users))
    return generator(config.seed, HETERO).permutation(assigned)


def slot_budget_levels(config: Config) -> np.ndarray:
    """The authors' assignment: the i-th sampled participant gets the i-th entry of a K-long list,
    lowest budgets first (their [0.5]*3 + [0.75]*3 + [1]*4 for K=10)."""
    levels, shares = config.density_levels
    per_slot = np.repeat(np.arange(len(levels)), _largest_remainder(shares, config.clients_per_round))
    return per_slot[::-1].copy()


def participant_level_index(config: Config, client_levels: np.ndarray, round_index: int,
                            ids: np.ndarray) -> np.ndarray:
    """Budget level of each participant: its own (hetero 'client'), its slot's (hetero 'slot'; round 0
    all at d, as in the authors' code), or the only level."""
    if config.hetero_client and config.hetero_assign == "client":
        return client_levels[ids]
    if config.hetero_client and round_index > 0:
        return slot_budget_levels(config)
    return np.zeros(len(ids), np.int64)


def level_masks_of(setup: Setup, params, top_mask: Masks) -> Masks:
    """Every level's server mask, stacked, the mask at d first; the lower levels are the top-k of
    |theta| inside the mask at d, so they nest."""
    if len(setup.level_budgets) == 1:
        return stack_levels(top_mask)
    flat = traverse_util.flatten_dict(params, sep="/")
    return _level_masks({p: flat[p] for p in setup.tensors.paths}, top_mask, setup.config.density, setup.level_budgets)


_level_masks = jax.jit(level_masks, static_argnums=3)
