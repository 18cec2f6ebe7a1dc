"""The small convolutional nets of the paper's MNIST and FEMNIST experiments,
initialised as PyTorch initialises the authors' layers (kernel and bias uniform in +-1/sqrt(fan_in))."""

import jax
from flax import linen as nn

from flash_jax.models.initializers import PYTORCH_DEFAULT_KERNEL, pytorch_default_bias
from flash_jax.models.layers import Conv, max_pool


def _conv(x: jax.Array, features: int, kernel: int, padding, impl: str, name: str) -> jax.Array:
    fan_in = x.shape[-1] * kernel * kernel
    return Conv(features, kernel, padding=padding, impl=impl, kernel_init=PYTORCH_DEFAULT_KERNEL,
                bias_init=pytorch_default_bias(fan_in), name=name)(x)


def _dense(x: jax.Array, features: int, name: str) -> jax.Array:
    return nn.Dense(features, kernel_init=PYTORCH_DEFAULT_KERNEL, bias_init=pytorch_default_bias(x.shape[-1]),
                    name=name)(x)


class MNISTNet(nn.Module):
    """The authors' MNIST net. It returns logits unless `softmax_output`: theirs ends in a softmax that
    the training loss feeds to a cross-entropy (softmax twice), which bounds the loss and its
    gradients, and also slows training a lot; `--mnistnet_softmax` keeps it for exact comparisons.

    Layers are named conv1, conv2, fc1, fc2 so the maskable ones (conv2, fc1) are addressable.
    `train` and `example_mask` exist only to share the models' calling convention (no BatchNorm).
    """

    num_classes: int
    conv_impl: str = "xla"
    softmax_output: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(_conv(x, 10, 5, "VALID", self.conv_impl, "conv1"))
        x = max_pool(x, 3, 1)
        x = nn.relu(_conv(x, 20, 5, "VALID", self.conv_impl, "conv2"))
        x = max_pool(x, 3, 1)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(_dense(x, 50, "fc1"))
        x = _dense(x, self.num_classes, "fc2")
        return nn.softmax(x) if self.softmax_output else x


class LeafCNN(nn.Module):
    """LEAF's FEMNIST CNN. Layers are named conv1, conv2, fc1, fc2; `train` and `example_mask` exist
    only to share the models' calling convention (no BatchNorm)."""

    num_classes: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(_conv(x, 32, 5, 2, self.conv_impl, "conv1"))
        x = max_pool(x, 2, 2)
        x = nn.relu(_conv(x, 64, 5, 2, self.conv_impl, "conv2"))
        x = max_pool(x, 2, 2)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(_dense(x, 2048, "fc1"))
        return _dense(x, self.num_classes, "fc2")
