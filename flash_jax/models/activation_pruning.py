"""Activation pruning of the weight gradient (SWAT-style, as SparsyFed does it).

For a chosen layer with weight sparsity s (its kernel's fraction of exact zeros), the weight gradient
is computed from the layer input with all but its ceil((1-s)*size) largest |entries| zeroed (ties at
the threshold kept), while the forward pass and the input gradient stay exactly the dense ones: a
custom VJP whose backward differentiates the layer at the pruned input, which for a linear layer
changes only dL/dkernel. A layer is found by its kernel's '/'-joined path, through flax's method
interception, so models need no change; it must be an nn.Dense, an nn.Conv or the project's Conv (all
linear in their input, as the backward pass requires).

A convolution's threshold may be frozen after the first step where s > 0 (the authors' choice); the
thresholds are then the caller's state across steps, keyed by kernel path (negative: unset).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from flash_jax.models.layers import Conv
from flash_jax.sparse import topk_mask

UNSET = -1.0
PRUNABLE = (nn.Dense, nn.Conv, Conv)  # linear layers; all but nn.Dense are convolutions


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pruned_weight_gradient(layer, params, x, x_pruned):
    return layer(params, x)


def _forward(layer, params, x, x_pruned):
    return layer(params, x), (params, x_pruned)


def _backward(layer, saved, g):
    params, x_pruned = saved
    _, vjp = jax.vjp(layer, params, x_pruned)
    d_params, d_x = vjp(g)  # a linear layer's input gradient does not depend on its input
    return d_params, d_x, jnp.zeros_like(x_pruned)


_pruned_weight_gradient.defvjp(_forward, _backward)


def _threshold(x: jax.Array, keep_fraction: jax.Array) -> jax.Array:
    """The k-th largest |x| for k = ceil(keep_fraction * x.size) (k may be traced)."""
    magnitude = jnp.abs(x).reshape(-1)
    k = jnp.ceil(keep_fraction * x.size).astype(jnp.int32)
    return jnp.min(jnp.where(topk_mask(magnitude, k), magnitude, jnp.inf))


def with_pruned_weight_gradients(apply_fn: Callable, thresholds: dict[str, jax.Array],
                                 freeze_conv: bool) -> tuple[Callable, dict[str, jax.Array]]:
    """`apply_fn` with activation pruning of the weight gradients of the layers whose kernel paths key
    `thresholds`, and the dict that holds each layer's threshold once the wrapped function has run
    (frozen conv thresholds, else the entry passed in)."""
    updated = dict(thresholds)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        path = "/".join(module.path) + "/kernel"
        if context.method_name != "__call__" or not isinstance(module, PRUNABLE) or path not in thresholds:
            return next_fun(*args, **kwargs)
        (x,) = args
        params = dict(module.variables["params"])
        sparsity = jnp.mean(params["kernel"] == 0)
        active = (sparsity > 0) & (sparsity < 1)  # dense: nothing to prune; empty: no weight gradient anyway
        fresh = _threshold(x, 1.0 - sparsity)
        if freeze_conv and not isinstance(module, nn.Dense):
            frozen = thresholds[path]
            tau = jnp.where(frozen >= 0, frozen, fresh)
            updated[path] = jnp.where(active, tau, frozen)
        else:
            tau = fresh
        x_pruned = jnp.where(active & (jnp.abs(x) < tau), 0.0, x).astype(x.dtype)
        unbound = module.clone(parent=None)
        layer = functools.partial(_apply_layer, unbound)
        return _pruned_weight_gradient(layer, params, x, x_pruned)

    def wrapped(*args, **kwargs):
        with nn.intercept_methods(interceptor):
            return apply_fn(*args, **kwargs)

    return wrapped, updated


def _apply_layer(module: nn.Module, params: dict, x: jax.Array) -> jax.Array:
    return module.apply({"params": params}, x)


def initial_thresholds(paths) -> dict[str, jax.Array]:
    return {p: jnp.float32(UNSET) for p in paths}

