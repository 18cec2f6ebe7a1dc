"""Global test evaluation in fixed-size batches (one compiled shape, last batch padded)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@functools.partial(jax.jit, static_argnums=0)
def _batch_sums(apply_fn, variables, x, y, weight):
    logits = apply_fn(variables, x, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return jnp.sum(loss * weight), jnp.sum(correct * weight)


def evaluate(apply_fn, variables, x: jax.Array, y: jax.Array, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a model over a whole test set."""
    n = x.shape[0]
    batch_size = min(batch_size, n)
    loss_sum, correct_sum = 0.0, 0.0
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        real = xb.shape[0]
        if real < batch_size:
            pad = batch_size - real
            xb = jnp.concatenate([xb, jnp.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
        weight = jnp.asarray(np.arange(batch_size) < real, jnp.float32)
        loss, correct = _batch_sums(apply_fn, variables, xb, yb, weight)
        loss_sum += float(loss)
        correct_sum += float(correct)
    return {"accuracy": correct_sum / n, "loss": loss_sum / n}
