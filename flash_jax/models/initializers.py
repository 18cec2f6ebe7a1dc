"""The authors' weight initialisation as Flax initialisers.

Flax's defaults (LeCun-normal kernels, zero biases) are not the authors'; with them dense FedAvg at the
paper's learning rate 0.1 diverged on more seeds and partitions. (PyTorch's initialisation alone does
not keep every partition finite with logits; clients also clip, see --clip_grad_norm.) Fan-in and fan-out
follow Flax's kernel layouts (Dense: in, out; Conv: H, W, in, out), which give PyTorch's values:
fan_in = inputs x kernel height x width, fan_out = outputs x kernel height x width.
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

# torch.nn.Conv2d / Linear: kaiming_uniform(a=sqrt(5)), i.e. uniform in +-1/sqrt(fan_in) (variance 1/(3 fan_in)).
PYTORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# Xavier-uniform with gain 0.5: bound 0.5*sqrt(6/(fan_in+fan_out)), variance 0.25 * 2/(fan_in+fan_out).
XAVIER_UNIFORM_HALF = nn.initializers.variance_scaling(0.25, "fan_avg", "uniform")
# The authors' ResNet/VGG classifier: normal with standard deviation 0.01 (and a zero bias).
CLASSIFIER_NORMAL = nn.initializers.normal(0.01)


def pytorch_default_bias(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias: uniform in +-1/sqrt(fan_in) of the layer's kernel. A bias's own shape
    does not carry the kernel's fan-in, hence the argument."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
