"""Model names of the command line, and which of each model's tensors are maskable by default."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from flash_jax.models.cnn import LeafCNN, MNISTNet
from flash_jax.models.layers import resolve_conv_impl
from flash_jax.models.resnet import ResNet18, ResNet34
from flash_jax.models.vgg import VGG16


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A model and its default maskable set.

    `mask_pattern` is a regex, matched with `re.search` against '/'-joined parameter paths such as
    'conv2/kernel' or 'layer2_0/shortcut_conv/kernel'; users may substitute their own.
    """

    name: str
    module: nn.Module
    mask_pattern: str
    has_batch_stats: bool


# The paper's "middle layers": the second conv and the first dense kernel (ALGORITHMS.md §0). The LEAF
# CNN has no stated mask key; it gets the same choice, as the same-shaped net.
_MIDDLE_LAYERS = r"^(conv2|fc1)/kernel$"
# Every conv kernel: stem, block convs and 1x1 shortcuts (20 in ResNet-18), VGG's 13; never the dense head.
_ALL_CONVS = r"(^|/)(conv\d+|shortcut_conv)/kernel$"
# The authors' Tiny-ImageNet mask key leaves the shortcut convs dense (17 kernels in ResNet-18).
_NON_SHORTCUT_CONVS = r"(^|/)conv\d+/kernel$"

MODEL_TYPES = ("mnistnet", "leaf_cnn", "resnet18", "resnet18_64", "resnet34", "vgg16")
# Smallest image side each model maps to a non-empty feature map: MNISTNet's two VALID 5x5 convs and
# stride-1 3x3 pools take 12 pixels, the LEAF CNN's two 2x2 pools need 4, VGG-16's five 2x2 pools 32;
# the ResNets pad every conv and end in a global average pool.
MIN_INPUT_SIZE = {"mnistnet": 13, "leaf_cnn": 4, "resnet18": 1, "resnet18_64": 1, "resnet34": 1, "vgg16": 32}


@functools.cache  # one module object per model: jitted functions keyed on its apply compile once per process
def get_model(name: str, num_classes: int, conv_impl: str = "auto", mnistnet_softmax: bool = False) -> ModelDef:
    """`resnet18_64` (Tiny-ImageNet, 64x64) is the CIFAR ResNet-18 unchanged — its global average
    pool takes the 8x8 final map, at 4x the compute of a 32x32 input — and differs only in its
    default maskable set. An ImageNet stem (7x7 stride 2 + max-pool) is not reproduced.
    `mnistnet_softmax` ends MNISTNet in the authors' softmax (their loss, for exact comparisons)."""
    impl = resolve_conv_impl(conv_impl)
    if name == "mnistnet":
        return ModelDef(name, MNISTNet(num_classes, impl, mnistnet_softmax), _MIDDLE_LAYERS, False)
    if name == "leaf_cnn":
        return ModelDef(name, LeafCNN(num_classes, impl), _MIDDLE_LAYERS, False)
    if name == "resnet18":
        return ModelDef(name, ResNet18(num_classes, conv_impl=impl), _ALL_CONVS, True)
    if name == "resnet18_64":
        return ModelDef(name, ResNet18(num_classes, conv_impl=impl), _NON_SHORTCUT_CONVS, True)
    if name == "resnet34":
        return ModelDef(name, ResNet34(num_classes, conv_impl=impl), _ALL_CONVS, True)
    if name == "vgg16":
        return ModelDef(name, VGG16(num_classes, impl), _ALL_CONVS, True)
    raise ValueError(f"unknown --model_type {name!r}; choose one of {', '.join(MODEL_TYPES)}")


def init_variables(model_def: ModelDef, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """Initial {'params', 'batch_stats'} as plain nested dicts; `input_shape` is one example's
    (H, W, C). 'batch_stats' is {} for models without BatchNorm so every model has the same state.

    Jitted because op-by-op init compiles every random draw separately (ResNet-18: ~20 s vs ~8 s on CPU).
    """
    variables = _jitted_init(model_def.module)(key, jnp.zeros((1, *input_shape), jnp.float32))
    return {"params": _to_dict(variables["params"]), "batch_stats": _to_dict(variables.get("batch_stats", {}))}


@functools.cache  # per module object (get_model caches them), so a second run reuses the compiled init
def _jitted_init(module: nn.Module):
    return jax.jit(functools.partial(module.init, train=False))


def _to_dict(tree):
    return {k: _to_dict(v) for k, v in tree.items()} if hasattr(tree, "items") else tree
