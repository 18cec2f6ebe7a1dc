"""VGG-16 for 32x32 inputs, in the common CIFAR form (13 3x3 convs with BatchNorm, five 2x2
max-pools, one dense classifier), initialised as the authors': as the ResNets,
but BatchNorm scale 0.5."""

import jax
from flax import linen as nn

from flash_jax.models.initializers import CLASSIFIER_NORMAL, XAVIER_UNIFORM_HALF
from flash_jax.models.layers import Conv, batch_norm, batch_stats_mask, max_pool

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """Convs conv1..conv13 (no bias, a BatchNorm bn1..bn13 follows each) and a single dense `fc`.

    The head averages the final map over space: identical to flattening the 1x1x512 map of a 32x32
    input, and it keeps the classifier at 512 inputs for larger images.
    """

    num_classes: int
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        bn_mask = batch_stats_mask(example_mask, x.ndim)
        index = 0
        for width in _VGG16:
            if width == "M":
                x = max_pool(x, 2, 2)
                continue
            index += 1
            x = Conv(width, 3, 1, 1, use_bias=False, impl=self.conv_impl, kernel_init=XAVIER_UNIFORM_HALF,
                     name=f"conv{index}")(x)
            x = nn.relu(batch_norm(train, f"bn{index}", scale=0.5)(x, mask=bn_mask))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=CLASSIFIER_NORMAL, name="fc")(x)
