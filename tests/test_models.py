import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flash_jax.models import Conv, get_model, init_variables, max_pool, resolve_conv_impl

IMAGE_SHAPES = {"mnistnet": (28, 28, 1), "leaf_cnn": (28, 28, 1), "resnet18_64": (64, 64, 3)}


def _image_shape(name):
    return IMAGE_SHAPES.get(name, (32, 32, 3))


def _paths(tree):
    return ["/".join(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@functools.cache
def _maskable(name):
    model_def = get_model(name, 10, "xla")
    params = jax.eval_shape(lambda k: init_variables(model_def, k, _image_shape(name)), jax.random.key(0))["params"]
    return {p for p in _paths(params) if re.search(model_def.mask_pattern, p)}


CONV_CASES = [
    dict(kernel_size=5, strides=1, padding="VALID"),
    dict(kernel_size=3, strides=2, padding="SAME"),
    dict(kernel_size=(5, 3), strides=2, padding=(2, 1)),
    dict(kernel_size=1, strides=2, padding=0, use_bias=False),
]


@pytest.mark.parametrize("impl", ["patches", "slices"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_conv_impl_matches_xla_values_grads_and_vmap(case, impl):
    """Per-client kernels and inputs, as a vmapped cohort sees them; gradients for kernel, bias and input."""
    clients, in_features, features = 3, 3, 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(clients, 2, 9, 9, in_features)).astype(np.float32)
    kernel_shape = (*np.broadcast_to(case["kernel_size"], 2), in_features, features)
    params = {"params": {"kernel": rng.normal(size=(clients, *kernel_shape)).astype(np.float32)}}
    if case.get("use_bias", True):
        params["params"]["bias"] = rng.normal(size=(clients, features)).astype(np.float32)

    def value_and_grads(impl):
        conv = Conv(features, impl=impl, **case)
        one_client = jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x))), argnums=(0, 1))
        first = jax.tree_util.tree_map(lambda a: a[0], (params, x))
        return jax.jit(lambda: (one_client(*first), jax.vmap(one_client)(params, x)))()

    chex.assert_trees_all_close(value_and_grads(impl), value_and_grads("xla"), atol=1e-4, rtol=1e-4)


def test_conv_params_are_nn_conv_params():
    x = jnp.zeros((1, 8, 8, 3))
    ours = Conv(6, 3, impl="patches").init(jax.random.key(1), x)
    flax_conv = nn.Conv(6, (3, 3)).init(jax.random.key(1), x)
    chex.assert_trees_all_equal(ours, flax_conv)


@pytest.mark.parametrize("window,stride,padding", [(3, 1, "VALID"), (2, 2, "VALID"), (3, 2, "SAME"), (2, 2, "SAME")])
def test_max_pool_matches_nn_max_pool(window, stride, padding):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 7, 3)), jnp.float32)

    def ours(x):
        return max_pool(x, window, stride, padding)

    def reference(x):
        return nn.max_pool(x, (window, window), (stride, stride), padding)

    chex.assert_trees_all_close(ours(x), reference(x))
    weights = np.random.default_rng(3).normal(size=ours(x).shape)
    chex.assert_trees_all_close(
        jax.jit(jax.grad(lambda x: jnp.sum(weights * ours(x))))(x),
        jax.jit(jax.grad(lambda x: jnp.sum(weights * reference(x))))(x),
    )


def test_resolve_conv_impl():
    assert resolve_conv_impl("auto") == ("patches" if jax.default_backend() == "cpu" else "xla")
    assert resolve_conv_impl("xla") == "xla"
    with pytest.raises(ValueError, match="conv impl"):
        resolve_conv_impl("cudnn")


@pytest.mark.parametrize("name", ["mnistnet", "leaf_cnn", "resnet18", "vgg16"])
def test_forward_output_shape(name):
    model_def = get_model(name, 7)
    variables = init_variables(model_def, jax.random.key(0), _image_shape(name))
    assert (variables["batch_stats"] != {}) == model_def.has_batch_stats
    x = jax.random.normal(jax.random.key(1), (2, *_image_shape(name)))
    logits = jax.jit(lambda v, x: model_def.module.apply(v, x, train=False))(variables, x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", ["resnet18_64", "resnet34"])
def test_output_shape_of_larger_variants(name):
    model_def = get_model(name, 200)
    variables = jax.eval_shape(lambda k: init_variables(model_def, k, _image_shape(name)), jax.random.key(0))
    logits = jax.eval_shape(
        lambda v, x: model_def.module.apply(v, x, train=False), variables, jnp.zeros((2, *_image_shape(name)))
    )
    chex.assert_shape(logits, (2, 200))


def test_flatten_sizes():
    mnist = jax.eval_shape(lambda k: init_variables(get_model("mnistnet", 10), k, (28, 28, 1)), jax.random.key(0))
    chex.assert_shape(mnist["params"]["fc1"]["kernel"], (5120, 50))
    leaf = jax.eval_shape(lambda k: init_variables(get_model("leaf_cnn", 62), k, (28, 28, 1)), jax.random.key(0))
    chex.assert_shape(leaf["params"]["fc1"]["kernel"], (3136, 2048))


def test_default_maskable_sets():
    assert _maskable("mnistnet") == {"conv2/kernel", "fc1/kernel"}
    assert _maskable("leaf_cnn") == {"conv2/kernel", "fc1/kernel"}
    resnet18 = _maskable("resnet18")
    assert len(resnet18) == 20 and "conv1/kernel" in resnet18
    assert {p for p in resnet18 if "shortcut" in p} == {f"layer{i}_0/shortcut_conv/kernel" for i in (2, 3, 4)}
    resnet18_64 = _maskable("resnet18_64")
    assert len(resnet18_64) == 17 and resnet18_64 == {p for p in resnet18 if "shortcut" not in p}
    assert len(_maskable("resnet34")) == 36
    assert len(_maskable("vgg16")) == 13
    for name in ("resnet18", "resnet18_64", "resnet34", "vgg16"):
        assert all(re.fullmatch(r"(layer\d_\d/)?(shortcut_)?conv\d*/kernel", p) for p in _maskable(name))


def test_batch_norm_statistics_ignore_masked_examples():
    model_def = get_model("resnet18", 10)
    variables = init_variables(model_def, jax.random.key(0), (8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    valid = np.array([True, False, True, False])

    @jax.jit
    def train_forward(x, example_mask):
        return model_def.module.apply(variables, x, train=True, example_mask=example_mask, mutable=["batch_stats"])

    logits, state = train_forward(x, jnp.asarray(valid))
    subset_logits, subset_state = train_forward(x[valid], jnp.ones(2, bool))
    chex.assert_trees_all_close(state, subset_state, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(logits[valid], subset_logits, atol=1e-5, rtol=1e-5)
    _, padded_state = train_forward(x, jnp.zeros(4, bool))
    chex.assert_tree_all_finite(padded_state)


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown --model_type 'resnet50'; choose one of mnistnet"):
        get_model("resnet50", 10)
