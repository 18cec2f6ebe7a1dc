"""The small convolutional nets of the paper's MNIST and FEMNIST experiments (ALGORITHMS.md §0, §6)."""

import jax
from flax import linen as nn

from flash_jax.models.layers import Conv, max_pool


class MNISTNet(nn.Module):
    """The authors' MNIST net, returning logits (theirs ends in a softmax that is fed to a
    cross-entropy loss, i.e. softmax twice).

    Layers are named conv1, conv2, fc1, fc2 so the maskable ones (conv2, fc1) are addressable.
    `train` and `example_mask` exist only to share the models' calling convention (no BatchNorm).
    """

    num_classes: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(Conv(10, 5, padding="VALID", impl=self.conv_impl, name="conv1")(x))
        x = max_pool(x, 3, 1)
        x = nn.relu(Conv(20, 5, padding="VALID", impl=self.conv_impl, name="conv2")(x))
        x = max_pool(x, 3, 1)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(50, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)


class LeafCNN(nn.Module):
    """LEAF's FEMNIST CNN. Layers are named conv1, conv2, fc1, fc2; `train` and `example_mask` exist
    only to share the models' calling convention (no BatchNorm)."""

    num_classes: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(Conv(32, 5, padding=2, impl=self.conv_impl, name="conv1")(x))
        x = max_pool(x, 2, 2)
        x = nn.relu(Conv(64, 5, padding=2, impl=self.conv_impl, name="conv2")(x))
        x = max_pool(x, 2, 2)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(2048, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)
