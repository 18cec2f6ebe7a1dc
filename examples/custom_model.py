"""Train FLASH with a model defined outside the package.

A model needs no edit of flash_jax: a Flax module following the interface of
flash_jax/models/registry.py, registered under a name, becomes a valid `model_type`. Here a two-layer
MLP learns the offline digits dataset with both kernels masked to the default 5% density.

    PYTHONPATH=. python examples/custom_model.py
"""

import jax
from flax import linen as nn

import flash_jax


class MLP(nn.Module):
    """`train` and `example_mask` are the models' calling convention; without BatchNorm they go unused."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, example_mask: jax.Array | None = None) -> jax.Array:
        x = nn.relu(nn.Dense(64, name="dense0")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, name="dense1")(x)


# Before Config: it validates model_type against the registered names.
flash_jax.register_model("mlp", lambda num_classes, conv_impl: MLP(num_classes), mask_pattern=r"^dense\d/kernel$",
                         help="flatten, dense 64, relu, dense")

history = flash_jax.run(flash_jax.Config(model_type="mlp", dataset="digits", experiment_type="spdst", fl_rounds=60,
                                         eval_every=20, quiet=True))
final = history[-1]
print(f"final accuracy {final['accuracy']:.3f} density {final['density']:.3f}")
