"""SparsyFed (Guastella et al., ICLR 2025): clients train every weight through
Powerprop (the model computes with sign(v)|v|^alpha, the server stores and averages v) with the
weight gradient computed from activation-pruned layer inputs, then cut to d with one global
magnitude threshold; FedAvg; the global model is the union of the cuts. With alpha > 1 a zero of v
gets zero gradient, so what the server sends stays zero: the union shrinks instead of regrowing."""
import dataclasses

import jax.numpy as jnp
from flax import traverse_util

from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.fl.rules import FEDAVG, SERVER_DENSE_START_SUPPORT, Reparameterization, train_dense_then_cut
from flash_jax.models.activation_pruning import initial_thresholds, with_pruned_weight_gradients

ACT_THRESHOLDS = ("first_step", "every_step", "off")


@dataclasses.dataclass(frozen=True)
class ActivationPruning:
    """SparsyFed's step transform: each layer's weight gradient is computed from its input with
    the small activations pruned; the conv layers' thresholds are frozen after the first step
    (`frozen`) or recomputed every step."""

    frozen: bool

    @staticmethod
    def init(masks):
        return initial_thresholds(masks)

    def wrap(self, apply_fn, thresholds):
        return with_pruned_weight_gradients(apply_fn, thresholds, self.frozen)


def activation_pruning(setup) -> ActivationPruning | None:
    """--sparsyfed_act_threshold: first_step (the authors'), every_step, or off."""
    threshold = setup.config.sparsyfed_act_threshold
    return None if threshold == "off" else ActivationPruning(frozen=threshold == "first_step")


def powerprop(alpha: float, paths: tuple[str, ...]) -> Reparameterization:
    """v = sign(u)|u|^(1/alpha) stored for an initial weight u, so the effective init is the project's;
    sign(v)|v|^alpha (not v|v|^(alpha-1), whose gradient at 0 is NaN) is exactly 0-gradient at v = 0."""
    def on_maskable(params, fn):
        flat = traverse_util.flatten_dict(params, sep="/")
        flat.update({p: fn(flat[p]) for p in paths})
        return traverse_util.unflatten_dict(flat, sep="/")

    return Reparameterization(
        stored=lambda params: on_maskable(params, lambda u: jnp.sign(u) * jnp.abs(u) ** (1.0 / alpha)),
        effective=lambda params: on_maskable(params, lambda v: jnp.sign(v) * jnp.abs(v) ** alpha))


SPARSYFED = register_method(Method(
    name="sparsyfed", help="SparsyFed: Powerprop, activation-pruned weight gradients, a global cut to d; FedAvg",
    client=train_dense_then_cut(lambda setup: setup.config.sparsyfed_weight_decay, step_transform=activation_pruning),
    server_mask=SERVER_DENSE_START_SUPPORT, aggregation=lambda setup: FEDAVG, group="SparsyFed",
    # alpha 1 is the identity: no transform at all, so zeros keep their gradient (Top-k's behaviour)
    reparameterization=lambda setup: None if setup.config.sparsyfed_alpha == 1.0
    else powerprop(setup.config.sparsyfed_alpha, setup.tensors.paths),
    knobs=(
        Knob("sparsyfed_alpha", 1.25, "SparsyFed: Powerprop exponent (1: no Powerprop)", lambda v: v >= 1.0, ">= 1"),
        Knob("sparsyfed_act_threshold", "first_step",
             "SparsyFed: conv layers' activation-pruning threshold, frozen after the first step (authors), "
             "recomputed every step, or no activation pruning (dense layers always recompute)",
             choices=ACT_THRESHOLDS),
        Knob("sparsyfed_weight_decay", 1e-3, "SparsyFed: client weight decay on v", lambda v: v >= 0.0, ">= 0"),
    )))
