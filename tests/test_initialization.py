"""Every model starts from the authors' PyTorch initialisation: each tensor's range
and spread against the formula, with fans computed from Flax's kernel layouts."""
import math

import jax
import numpy as np
import pytest
from flax import traverse_util

from flash_jax.models import get_model, init_variables

SHAPES = {"mnistnet": (28, 28, 1), "leaf_cnn": (28, 28, 1), "resnet18_64": (64, 64, 3)}


def _fans(kernel_shape):
    """PyTorch's fans: inputs (resp. outputs) x kernel height x width; Flax kernels are (..., in, out)."""
    receptive = math.prod(kernel_shape[:-2])
    return kernel_shape[-2] * receptive, kernel_shape[-1] * receptive


def _initial_params(name, seed=0):
    model_def = get_model(name, 10, "xla")
    variables = init_variables(model_def, jax.random.key(seed), SHAPES.get(name, (32, 32, 3)))
    return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(variables["params"], sep="/").items()}


def assert_uniform(values, bound):
    """Inside +-bound, reaching near it, with the uniform's standard deviation bound/sqrt(3)."""
    values = values.ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    if values.size >= 1000:
        assert np.abs(values).max() >= 0.99 * bound
        # the sample std of a uniform has relative standard error ~ sqrt(0.2/n); allow 6 of them
        assert values.std() == pytest.approx(bound / math.sqrt(3), rel=6 * math.sqrt(0.2 / values.size) + 1e-3)
        assert abs(values.mean()) < 6 * bound / math.sqrt(3 * values.size)


def assert_normal(values, std):
    values = values.ravel()
    assert values.std() == pytest.approx(std, rel=6 / math.sqrt(2 * values.size))
    assert abs(values.mean()) < 6 * std / math.sqrt(values.size)


@pytest.mark.parametrize("name", ["mnistnet", "leaf_cnn"])
def test_small_cnns_use_pytorch_defaults_for_kernels_and_biases(name):
    params = _initial_params(name)
    layers = {p.rsplit("/", 1)[0] for p in params}
    assert layers == {"conv1", "conv2", "fc1", "fc2"}
    for layer in layers:
        kernel, bias = params[f"{layer}/kernel"], params[f"{layer}/bias"]
        fan_in, _ = _fans(kernel.shape)
        assert_uniform(kernel, 1 / math.sqrt(fan_in))
        assert_uniform(bias, 1 / math.sqrt(fan_in))
        assert np.all(bias != 0), f"{layer}/bias should not be zero-initialised"
    conv2_inputs, fc1_inputs = (10, 5120) if name == "mnistnet" else (32, 3136)
    assert _fans(params["conv2/kernel"].shape)[0] == conv2_inputs * 5 * 5
    assert _fans(params["fc1/kernel"].shape)[0] == fc1_inputs


@pytest.mark.parametrize("name,bn_scale", [("resnet18", 1.0), ("vgg16", 0.5)])
def test_resnet_and_vgg_use_half_gain_xavier_convs_and_a_small_normal_classifier(name, bn_scale):
    params = _initial_params(name)
    convs = [p for p in params if p.endswith("/kernel") and not p.startswith("fc/")]
    assert len(convs) == (20 if name == "resnet18" else 13)
    for path in convs:
        fan_in, fan_out = _fans(params[path].shape)
        assert_uniform(params[path], 0.5 * math.sqrt(6 / (fan_in + fan_out)))
    assert_normal(params["fc/kernel"], 0.01)
    np.testing.assert_array_equal(params["fc/bias"], 0)
    scales = [v for p, v in params.items() if p.endswith("/scale")]
    offsets = [v for p, v in params.items() if "bn" in p and p.endswith("/bias")]
    assert scales and len(scales) == len(offsets)
    assert all(np.all(s == bn_scale) for s in scales) and all(np.all(o == 0) for o in offsets)


def test_initialisation_depends_on_the_seed_only():
    first, again, other = _initial_params("mnistnet", 3), _initial_params("mnistnet", 3), _initial_params("mnistnet", 4)
    assert all(np.array_equal(first[p], again[p]) for p in first)
    assert not np.array_equal(first["fc1/kernel"], other["fc1/kernel"])


def test_mnistnet_softmax_changes_the_output_not_the_parameters_or_the_argmax():
    plain, softmax = get_model("mnistnet", 10, "xla"), get_model("mnistnet", 10, "xla", mnistnet_softmax=True)
    variables = init_variables(plain, jax.random.key(0), (28, 28, 1))
    assert jax.tree.structure(variables) == jax.tree.structure(init_variables(softmax, jax.random.key(0), (28, 28, 1)))
    x = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype(np.float32)
    logits = plain.module.apply(variables, x, train=False)
    probabilities = softmax.module.apply(variables, x, train=False)
    np.testing.assert_allclose(probabilities, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.argmax(probabilities, -1), np.argmax(logits, -1))
