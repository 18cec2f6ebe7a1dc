"""Models by name: the built-in ones and any a user registers, with the tensors each masks by default.

A registry rather than an if-chain so that a model defined outside the package (examples/custom_model.py)
is a `register_model` call away from `--model_type` and `run`, with no edit here.

The interface a registered model's module must follow (the built-in ones are the reference):

- Called as `module(x, train: bool, example_mask: jax.Array | None = None) -> logits`, `x` a float32
  NHWC batch, logits of shape (batch, num_classes).
- Variables are 'params' and, for BatchNorm, 'batch_stats'. With train=True the apply is called with
  mutable=['batch_stats'], and `example_mask` (bool, per example) marks the real examples of a padded
  batch: the statistics must ignore the others. Models without BatchNorm accept and ignore both.
- A `num_classes` attribute: the run's config.json records it.
- `builder(num_classes, conv_impl)` receives 'xla' or 'slices' (`resolve_conv_impl` has turned 'auto'
  into the backend's fastest); passing it to models/layers.py's `Conv` makes vmapped cohorts fast on
  CPU. A builder may ignore it.
- `mask_pattern` picks the maskable tensors: a regex, `re.search`ed in '/'-joined parameter paths
  such as 'conv2/kernel' or 'layer2_0/shortcut_conv/kernel' (--mask_pattern overrides it).
- `min_input_size`: the smallest image side the model maps to a non-empty output; smaller data is
  refused before training.
"""

import dataclasses
import functools
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from flash_jax.models.cnn import LeafCNN, MNISTNet
from flash_jax.models.layers import resolve_conv_impl
from flash_jax.models.resnet import ResNet18, ResNet34
from flash_jax.models.vgg import VGG16


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A model and its default maskable set (`mask_pattern`: see the module docstring)."""

    name: str
    module: nn.Module
    mask_pattern: str
    has_batch_stats: bool
    min_input_size: int = 1
    help: str = ""


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[[int, str], nn.Module]
    mask_pattern: str
    min_input_size: int
    help: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, builder: Callable[[int, str], nn.Module], mask_pattern: str,
                   min_input_size: int = 1, help: str = "") -> None:
    """Make `name` a valid --model_type. Re-registering a name is refused: silently replacing a
    model would change what existing presets and workdirs mean."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered; pick another name")
    try:
        re.compile(mask_pattern)
    except (re.error, TypeError) as err:
        raise ValueError(f"model {name!r}: mask_pattern {mask_pattern!r} is not a regular expression ({err}); "
                         "fix the pattern") from None
    _REGISTRY[name] = _Entry(builder, mask_pattern, min_input_size, help)


def model_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


@functools.cache  # one module object per model: jitted functions keyed on its apply compile once per process
def get_model(name: str, num_classes: int, conv_impl: str = "auto", mnistnet_softmax: bool = False) -> ModelDef:
    """`mnistnet_softmax` ends MNISTNet in the authors' softmax (their loss, for exact comparisons)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown --model_type {name!r}; choose one of {', '.join(_REGISTRY)}")
    entry = _REGISTRY[name]
    module = entry.builder(num_classes, resolve_conv_impl(conv_impl))
    if mnistnet_softmax:
        if name != "mnistnet":
            raise ValueError(f"mnistnet_softmax works with mnistnet, not {name}")
        module = module.clone(softmax_output=True)
    return ModelDef(name, module, entry.mask_pattern, _has_batch_stats(name, module, entry.min_input_size),
                    entry.min_input_size, entry.help)


def _has_batch_stats(name: str, module: nn.Module, side: int) -> bool:
    """From an abstract init (no compile, no arrays) on one single-channel image of the smallest side;
    a model whose downsampling leaves nothing of that image is refused, naming min_input_size."""
    try:
        shapes = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, side, side, 1)), train=False),
                                jax.random.key(0))
    except Exception as err:
        raise ValueError(f"model {name!r} cannot take a {side}x{side} image, its min_input_size ({type(err).__name__}"
                         f": {str(err).splitlines()[0] if str(err) else ''}); register it with the min_input_size "
                         "its downsampling needs") from None
    return bool(shapes.get("batch_stats"))


# The paper's "middle layers": the second conv and the first dense kernel. The LEAF
# CNN has no stated mask key; it gets the same choice, as the same-shaped net.
_MIDDLE_LAYERS = r"^(conv2|fc1)/kernel$"
# Every conv kernel: stem, block convs and 1x1 shortcuts (20 in ResNet-18), VGG's 13; never the dense head.
_ALL_CONVS = r"(^|/)(conv\d+|shortcut_conv)/kernel$"
# The authors' Tiny-ImageNet mask key leaves the shortcut convs dense (17 kernels in ResNet-18).
_NON_SHORTCUT_CONVS = r"(^|/)conv\d+/kernel$"

# Minimum input sizes: MNISTNet's two VALID 5x5 convs and stride-1 3x3 pools take 12 pixels, the LEAF
# CNN's two 2x2 pools need 4, VGG-16's five 2x2 pools 32; the ResNets pad every conv and end in a global
# average pool, so any size works.
register_model("mnistnet", lambda n, impl: MNISTNet(n, impl), _MIDDLE_LAYERS, 13,
               "the authors' MNIST CNN (2 conv, 2 dense)")
register_model("leaf_cnn", lambda n, impl: LeafCNN(n, impl), _MIDDLE_LAYERS, 4, "LEAF's FEMNIST CNN")
register_model("resnet18", lambda n, impl: ResNet18(n, conv_impl=impl), _ALL_CONVS, 1, "CIFAR ResNet-18")
# `resnet18_64` (Tiny-ImageNet, 64x64) is the CIFAR ResNet-18 unchanged — its global average pool takes
# the 8x8 final map, at 4x the compute of a 32x32 input — and differs only in its default maskable set.
# An ImageNet stem (7x7 stride 2 + max-pool) is not reproduced.
register_model("resnet18_64", lambda n, impl: ResNet18(n, conv_impl=impl), _NON_SHORTCUT_CONVS, 1,
               "CIFAR ResNet-18 with the authors' Tiny-ImageNet mask (shortcut convs dense)")
register_model("resnet34", lambda n, impl: ResNet34(n, conv_impl=impl), _ALL_CONVS, 1, "CIFAR ResNet-34")
register_model("vgg16", lambda n, impl: VGG16(n, impl), _ALL_CONVS, 32, "VGG-16 with BatchNorm (13 convs)")


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
