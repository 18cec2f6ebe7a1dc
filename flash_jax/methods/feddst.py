"""FedDST (Bibikar et al., 2022) as flash_jax runs it (docs/methods.md): a magnitude-pruned start, clients
that readjust their masks every R_adj rounds (prune by |theta|, regrow by |gradient|), FMA, and a
server mask that is the union of the participants' masks pruned back to the per-tensor counts."""
import functools
import math

import jax

from flash_jax.fl.client import momentum_sgd
from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FMA, LocalMode, ServerMaskRule, ServerUpdate, magnitude_at_d
from flash_jax.sparse import layer_counts, prune_union


def readjust_ratio(config, t: int) -> float:
    """The readjustment fraction of round t: on rounds 2, 2+R_adj, 2+2R_adj, ... (its code counts
    rounds from 0: 1, 1+R_adj, ...), cosine-annealed from --feddst_readjust_ratio to 0 at half the
    rounds, after which masks stay fixed."""
    r, end = t - 1, config.fl_rounds // 2  # r: the round as its code counts it
    if r >= end or (r - 1) % config.feddst_readjust_every != 0:
        return 0.0
    return config.feddst_readjust_ratio * (1.0 + math.cos(math.pi * r / end)) / 2.0


def _local(setup, t: int) -> LocalMode:
    ratio = readjust_ratio(setup.config, t)
    return LocalMode(readjust_ratio=ratio, metrics=(("readjust_ratio", ratio),))


def _prune_union(setup, outcome) -> ServerUpdate:
    if outcome.mode.readjust_ratio == 0.0:
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
