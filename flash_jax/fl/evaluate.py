"""Test evaluation in fixed-size batches (one compiled shape, last batch padded)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@functools.partial(jax.jit, static_argnums=0)
def _batch_scores(apply_fn, variables, x, y):
    logits = apply_fn(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1) == y


def per_example_scores(apply_fn, variables, x: jax.Array, y: jax.Array, batch_size: int = 1000):
    """Cross-entropy and correctness of every test example (host arrays)."""
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
