"""CIFAR-style ResNets (3x3 stride-1 stem, no stem max-pool), as in the paper's CIFAR and
Tiny-ImageNet experiments.

Parameter paths: conv1, bn1 (stem); layer{stage}_{block}/{conv1,bn1,conv2,bn2,shortcut_conv,shortcut_bn}
(stages 1-4, blocks from 0); fc. Convolutions have no bias because a BatchNorm follows each one.
Initialisation as the authors': conv kernels Xavier-uniform with gain 0.5, the
classifier normal with standard deviation 0.01 and a zero bias, BatchNorm scale 1 and offset 0.
"""

from collections.abc import Sequence

import jax
from flax import linen as nn

from flash_jax.models.initializers import CLASSIFIER_NORMAL, XAVIER_UNIFORM_HALF
from flash_jax.models.layers import Conv, batch_norm, batch_stats_mask


class BasicBlock(nn.Module):
    features: int
    strides: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, bn_mask: jax.Array | None) -> jax.Array:
        def conv(features, kernel, strides, padding, name):
            return Conv(features, kernel, strides, padding, use_bias=False, impl=self.conv_impl,
                        kernel_init=XAVIER_UNIFORM_HALF, name=name)

        y = conv(self.features, 3, self.strides, 1, "conv1")(x)
        y = nn.relu(batch_norm(train, "bn1")(y, mask=bn_mask))
        y = conv(self.features, 3, 1, 1, "conv2")(y)
        y = batch_norm(train, "bn2")(y, mask=bn_mask)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.strides, 0, "shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x, mask=bn_mask)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Works for any input size: the head is a global average pool (the 4x4 map of a 32x32 input,
    8x8 of a 64x64 one). `example_mask` (B,) keeps padded examples out of the batch statistics."""

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        bn_mask = batch_stats_mask(example_mask, x.ndim)
        x = Conv(64, 3, 1, 1, use_bias=False, impl=self.conv_impl, kernel_init=XAVIER_UNIFORM_HALF, name="conv1")(x)
        x = nn.relu(batch_norm(train, "bn1")(x, mask=bn_mask))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(64 * 2**stage, strides, self.conv_impl, name=f"layer{stage + 1}_{block}")(
                    x, train, bn_mask
                )
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=CLASSIFIER_NORMAL, name="fc")(x)


class ResNet18(ResNet):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)


class ResNet34(ResNet):
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
