"""Evaluation of the global model: test scores in fixed-size batches (one compiled
shape, last batch padded) and the model's true density from exact non-zero counts."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from flash_jax.sparse import apply_masks, magnitude_masks


@functools.partial(jax.jit, static_argnums=0)
def _batch_scores(apply_fn, variables, x, y):
    logits = apply_fn(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1) == y


def per_example_scores(apply_fn, variables, x: jax.Array, y: jax.Array, batch_size: int = 250):
    """Cross-entropy and correctness of every test example (host arrays); batches of 250 keep the
    activations small next to a large federation's state."""
    n = x.shape[0]
    batch_size = min(batch_size, n)
    losses, correct = [], []
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        pad = batch_size - xb.shape[0]
        if pad:
            xb = jnp.concatenate([xb, jnp.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
        loss, ok = _batch_scores(apply_fn, variables, xb, yb)
        losses.append(loss[:batch_size - pad])
        correct.append(ok[:batch_size - pad])
    return np.asarray(jnp.concatenate(losses), np.float64), np.asarray(jnp.concatenate(correct))


def evaluate(apply_fn, variables, x, y, client_indices=()) -> dict[str, float]:
    """Global accuracy and loss; with per-client test splits also their mean and worst accuracy."""
    loss, correct = per_example_scores(apply_fn, variables, x, y)
    metrics = {"accuracy": float(correct.mean()), "loss": float(loss.mean())}
    per_client = [correct[ix].mean() for ix in client_indices if len(ix)]
    if per_client:
        metrics["client_accuracy_mean"] = float(np.mean(per_client))
        metrics["client_accuracy_min"] = float(np.min(per_client))
    return metrics


def server_nnz(params, paths) -> dict[str, int]:
    flat = traverse_util.flatten_dict(params, sep="/")
    return {p: int(c) for p, c in jax.device_get(_nonzero_counts({p: flat[p] for p in paths})).items()}


@jax.jit
def _nonzero_counts(tensors: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {p: jnp.count_nonzero(t) for p, t in tensors.items()}


def model_density(params, sizes: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Overall and per-tensor non-zero fraction of the maskable tensors, from exact integer counts."""
    counts = server_nnz(params, tuple(sizes))
    return sum(counts.values()) / sum(sizes.values()), {p: counts[p] / sizes[p] for p in sizes}


def evaluate_state(setup, state) -> dict[str, Any]:
    """Headline metrics of the global model at its true density; a method whose server mask is the
    model's support also reports the model magnitude-pruned back to d (`*_pruned`)."""
    batch_stats, data, sizes = state.model.batch_stats, setup.data, setup.tensors.sizes

    def scores(params):
        if setup.reparameterization:
            params = setup.reparameterization.effective(params)
        variables = {"params": params, "batch_stats": batch_stats} if setup.model.has_batch_stats \
            else {"params": params}
        return evaluate(setup.eval_apply, variables, data.test_x, data.test_y, data.test_partition)

    params = state.model.params
    metrics = scores(params)
    metrics["density"], metrics["layer_density"] = model_density(params, sizes)
    if setup.method.report_pruned:
        pruned = apply_masks(params, magnitude_masks(params, setup.tensors.paths, setup.config.density,
                                                     scope="global"))
        pruned_scores = scores(pruned)
        metrics["accuracy_pruned"] = pruned_scores["accuracy"]
        metrics["loss_pruned"] = pruned_scores["loss"]
        metrics["density_pruned"] = model_density(pruned, sizes)[0]
    return metrics
