"""Flax models applied functionally to parameter pytrees, and the registry naming their maskable tensors."""

from flash_jax.models.cnn import LeafCNN, MNISTNet
from flash_jax.models.layers import CONV_IMPLS, Conv, max_pool, resolve_conv_impl, with_fast_flax_convs
from flash_jax.models.registry import ModelDef, get_model, init_variables, model_names, register_model
from flash_jax.models.resnet import ResNet, ResNet18, ResNet34
from flash_jax.models.vgg import VGG16

__all__ = [
    "CONV_IMPLS",
    "VGG16",
    "Conv",
    "LeafCNN",
    "MNISTNet",
    "ModelDef",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "get_model",
    "init_variables",
    "max_pool",
    "model_names",
    "register_model",
    "resolve_conv_impl",
    "with_fast_flax_convs",
]
