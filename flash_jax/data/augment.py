"""On-device CIFAR augmentation, so augmented batches never round-trip through the host."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Zero-pad, random HxW crop and random horizontal flip, independently per image of an NHWC batch.

    Jittable and vmappable (e.g. over a client axis with per-client keys); `padding` must be static.
    """
    _, height, width, channels = images.shape

    def one(k, image):
        k_crop, k_flip = jax.random.split(k)
        dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * padding + 1)
        padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        crop = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
        return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)

    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
