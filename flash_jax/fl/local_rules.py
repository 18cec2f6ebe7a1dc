"""The client side of a method: records that local training (fl/client.py) runs without knowing
which method they belong to. A method's module defines its own and returns them from its client
rule (fl/rules.py: ClientRule.local per round, ClientRule.step_transform and .finish per run).

Each record is a frozen dataclass whose fields are plain values: local training is jitted with the
records as static arguments, so equal records (same class, same fields) share one compilation. (A
NamedTuple would not do: it equals any tuple of the same values, another record's included.)

A **local mask rule** changes the client's mask between phases of its local steps (mid-epoch
for one epoch, between epochs for several). It has
- `name`: a few words for the compile log;
- `needs_gradient`: whether `update` reads the latest step's dense gradient of the maskable tensors;
- `at(phase, num_phases)`: whether the boundary after `phase` (0-based; a Python int, or a traced
  one when the epochs run as a scan) changes the mask;
- `init()`: the rule's own state at the start of local training (a pytree);
- `update(step: MaskStep, state)`: (new masks, new state).
`SparseLearning` below is FLASH's; FedDST's readjustment lives in flash_jax/methods/feddst.py.

A **gradient report** is what participants upload besides their model: a statistic of their
gradients that the server averages and reads in RoundOutcome.reports. It has
- `init(params, paths)`: the accumulator before the first step (`paths`: the maskable tensors);
- `accumulate(acc, grads)`: after each real step, with that step's dense gradient of every parameter;
- `finalize(acc)`: the client's report (a pytree of float arrays);
- `by_samples`: averaged with the clients' sample counts (False: every participant counts once);
- `upload_values(tensors)`: values each participant uploads (32 bits each in the accounting).
PruneFL's two live in flash_jax/methods/prunefl.py.

A **step transform** changes how each local step computes its gradient. It has
- `init(masks)`: its state at the start of local training;
- `wrap(apply_fn, state)`: (the model function this step uses, the state after the step).
SparsyFed's activation pruning lives in flash_jax/methods/sparsyfed.py.

A **finishing step** (ClientRule.finish) maps the client's trained maskable tensors to its final
masks, e.g. Top-k's global magnitude cut.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flash_jax.sparse import mask_update, random_grow_scores, sl_init


class MaskStep(NamedTuple):
    """What a local mask rule sees at a phase boundary."""

    key: jax.Array           # the client's randomness for this boundary
    maskable: dict           # the client's maskable tensors now, by path
    masks: dict              # its masks now, by path
    gradient: dict | None    # the latest step's dense gradient of the maskable tensors (needs_gradient)
    progress: Any            # the share of the client's local steps done so far
    target_count: Any        # the client's budget of active entries, d_c * N_m
    rate: Any                # this round's RoundInputs.mask_rate (e.g. FedDST's readjustment ratio)


@dataclasses.dataclass(frozen=True)
class SparseLearning:
    """Client sparse learning (MASK_UPDATE) at every phase boundary: prune the smallest-magnitude
    share, regrow toward the client's budget at random or by largest |gradient|; the prune rate
    decays linearly with the client's completed steps."""

    prune_rate: float
    growth: str = "random"
    name = "sparse learning"

    @property
    def needs_gradient(self) -> bool:
        return self.growth == "gradient"

    @staticmethod
    def at(phase, num_phases):
        return phase < num_phases - 1

    @staticmethod
    def init():
        return sl_init()

    def update(self, step: MaskStep, state):
        scores = random_grow_scores(step.key, step.masks) if step.gradient is None \
            else {p: jnp.abs(g) for p, g in step.gradient.items()}
        return mask_update(step.maskable, step.masks, self.prune_rate * (1.0 - step.progress), step.target_count,
                           state, scores)


def sparse_learning(config) -> SparseLearning:
    """The run's sparse learning: --prune_rate and --growth."""
    return SparseLearning(config.prune_rate, config.growth)
