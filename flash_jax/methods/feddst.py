"""FedDST (Bibikar et al., 2022) as flash_jax runs it (docs/methods.md): a magnitude-pruned start, clients
that readjust their masks every R_adj rounds (prune by |theta|, regrow by |gradient|), FMA, and a
server mask that is the union of the participants' masks pruned back to the per-tensor counts."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from flash_jax.fl.client import momentum_sgd
from flash_jax.fl.local_rules import MaskStep
from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FMA, LocalMode, ServerMaskRule, ServerUpdate, magnitude_at_d
from flash_jax.sparse import layer_counts, prune_union, readjust_masks


def readjust_ratio(config, t: int) -> float:
    """The readjustment fraction of round t: on rounds 2, 2+R_adj, 2+2R_adj, ... (its code counts
    rounds from 0: 1, 1+R_adj, ...), cosine-annealed from --feddst_readjust_ratio to 0 at half the
    rounds, after which masks stay fixed."""
    r, end = t - 1, config.fl_rounds // 2  # r: the round as its code counts it
    if r >= end or (r - 1) % config.feddst_readjust_every != 0:
        return 0.0
    return config.feddst_readjust_ratio * (1.0 + math.cos(math.pi * r / end)) / 2.0


@dataclasses.dataclass(frozen=True)
class Readjustment:
    """FedDST's client mask rule: once, at the last phase boundary, in every tensor drop the
    fraction `rate` of its active entries of smallest |theta| and regrow as many inactive ones of
    largest |gradient| of the latest step, so each tensor keeps its count."""

    name = "readjusting masks"
    needs_gradient = True

    @staticmethod
    def at(phase, num_phases):
        return phase == num_phases - 2

    @staticmethod
    def init():
        return ()

    @staticmethod
    def update(step: MaskStep, state):
        scores = {p: jnp.abs(g) for p, g in step.gradient.items()}
        return readjust_masks(step.maskable, step.masks, scores, step.rate), state


READJUSTMENT = Readjustment()


def _local(setup, t: int) -> LocalMode:
    ratio = readjust_ratio(setup.config, t)
    return LocalMode(mask_rule=READJUSTMENT if ratio > 0 else None, mask_rate=ratio,
                     metrics=(("readjust_ratio", ratio),))


def _prune_union(setup, outcome) -> ServerUpdate:
    if outcome.mode.mask_rule is None:
        return ServerUpdate()
    return ServerUpdate(mask=_jitted_prune_union(outcome.maskable, outcome.client_masks,
                                                 layer_counts(setup.tensors.shapes, setup.config.density)))


_jitted_prune_union = jax.jit(prune_union)


def feddst_optimizer(setup):
    """FedDST's client optimizer: SGD with --feddst_momentum and --feddst_weight_decay."""
    config = setup.config
    return functools.partial(momentum_sgd, momentum=config.feddst_momentum, weight_decay=config.feddst_weight_decay)


FEDDST = register_method(Method(
    name="feddst", help="FedDST: readjusted client masks, union pruned back to d",
    client=CLIENT_FIXED_MASK._replace(local=_local, optimizer=feddst_optimizer),
    server_mask=ServerMaskRule(init=magnitude_at_d, update=_prune_union),
    aggregation=lambda setup: FMA, group="FedDST",
    knobs=(
        Knob("feddst_readjust_ratio", 0.05,
             "FedDST: fraction of active weights readjusted (cosine-decayed to 0 at half the rounds)",
             lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
        Knob("feddst_readjust_every", 10, "FedDST: rounds between mask readjustments R_adj", lambda v: v >= 1, ">= 1"),
        Knob("feddst_momentum", 0.9, "FedDST: client SGD momentum", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
        Knob("feddst_weight_decay", 1e-3, "FedDST: client weight decay", lambda v: v >= 0.0, ">= 0"),
    )))
