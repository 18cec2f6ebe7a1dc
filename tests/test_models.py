"""The models: our convolution and pooling against Flax's (values, gradients, vmap), forward shapes, the
maskable tensors, batch statistics, the model registry, and the smallest image each model takes."""
import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from flash_jax.models import (Conv, ResNet, get_model, init_variables, max_pool, model_names, register_model,
                              resolve_conv_impl, with_fast_flax_convs)

IMAGE_SHAPES = {"mnistnet": (28, 28, 1), "leaf_cnn": (28, 28, 1), "resnet18_64": (64, 64, 3)}


def _image_shape(name):
    return IMAGE_SHAPES.get(name, (32, 32, 3))


def _pair(v):
    return (v, v) if isinstance(v, int) else v


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
    kernel_shape = (*_pair(case["kernel_size"]), in_features, features)
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
    ours, flax_conv = jax.jit(lambda k: (Conv(6, 3, impl="slices").init(k, x), nn.Conv(6, (3, 3)).init(k, x)))(
        jax.random.key(1)
    )
    chex.assert_trees_all_equal(ours, flax_conv)


@pytest.mark.parametrize(
    "window,stride,padding", [(3, 1, "VALID"), (2, 2, "VALID"), (3, 2, "SAME"), ((2, 3), (1, 2), "SAME")]
)
def test_max_pool_matches_nn_max_pool(window, stride, padding):
    """Values and gradients (no ties in random inputs), with a leading client axis as under vmap."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 7, 7, 3)), jnp.float32)

    def ours(x):
        return jax.vmap(lambda x: max_pool(x, window, stride, padding))(x)

    def reference(x):
        return jax.vmap(lambda x: nn.max_pool(x, _pair(window), _pair(stride), padding))(x)

    chex.assert_trees_all_close(ours(x), reference(x))
    weights = np.random.default_rng(3).normal(size=ours(x).shape)
    chex.assert_trees_all_close(
        jax.jit(jax.grad(lambda x: jnp.sum(weights * ours(x))))(x),
        jax.jit(jax.grad(lambda x: jnp.sum(weights * reference(x))))(x),
        atol=1e-6,
    )


def test_resolve_conv_impl():
    assert resolve_conv_impl("auto") == ("slices" if jax.default_backend() == "cpu" else "xla")
    assert resolve_conv_impl("xla") == "xla"
    with pytest.raises(ValueError, match="conv impl"):
        resolve_conv_impl("cudnn")


def _random_variables(module, input_shape):
    """Variables with init's structure, filled from numpy: compiling flax's random init is slow on CPU."""
    rng = np.random.default_rng(0)
    abstract = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, *input_shape)), train=False), jax.random.key(0))

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, np.float32)
        return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def test_init_variables_mnistnet():
    variables = init_variables(get_model("mnistnet", 10), jax.random.key(0), (28, 28, 1))
    assert type(variables["params"]) is dict and type(variables["params"]["fc1"]) is dict
    assert variables["batch_stats"] == {}
    chex.assert_shape(variables["params"]["fc1"]["kernel"], (5120, 50))
    chex.assert_tree_all_finite(variables)


@pytest.mark.parametrize("name", ["mnistnet", "leaf_cnn", "resnet18", "vgg16"])
def test_forward_output_shape(name):
    model_def = get_model(name, 7, "xla")
    variables = _random_variables(model_def.module, _image_shape(name))
    x = np.random.default_rng(1).normal(size=(2, *_image_shape(name))).astype(np.float32)
    logits = jax.jit(lambda v, x: model_def.module.apply(v, x, train=False))(variables, x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("name", model_names())
def test_output_shape_and_batch_stats_of_every_model(name):
    model_def = get_model(name, 200)
    variables = jax.eval_shape(lambda k: init_variables(model_def, k, _image_shape(name)), jax.random.key(0))
    assert bool(variables["batch_stats"]) == model_def.has_batch_stats
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
    """A two-stage ResNet has the same block, shortcut and mask plumbing as ResNet-18 at a fraction of the compile."""
    model = ResNet(10, stage_sizes=(1, 1))
    variables = _random_variables(model, (8, 8, 3))
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype(np.float32)
    valid = np.array([True, False, True, False])

    @jax.jit
    def train_forward(x, example_mask):
        return model.apply(variables, x, train=True, example_mask=example_mask, mutable=["batch_stats"])

    logits, state = train_forward(x, valid)
    subset_logits, subset_state = train_forward(x[valid], np.ones(2, bool))
    assert "shortcut_bn" in state["batch_stats"]["layer2_0"]
    chex.assert_trees_all_close(state, subset_state, atol=1e-5, rtol=1e-4)
    chex.assert_trees_all_close(logits[valid], subset_logits, atol=1e-5, rtol=1e-4)
    _, padded_state = train_forward(x, np.zeros(4, bool))
    chex.assert_tree_all_finite(padded_state)


def test_unknown_model_type():
    with pytest.raises(ValueError, match="unknown --model_type 'resnet50'; choose one of mnistnet"):
        get_model("resnet50", 10)


class _TinyMLP(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool, example_mask=None):
        return nn.Dense(self.num_classes, name="dense0")(x.reshape(x.shape[0], -1))


def test_registered_model_is_served_by_get_model():
    register_model("test_mlp_registry", lambda n, impl: _TinyMLP(n), r"^dense0/kernel$", min_input_size=2,
                   help="a test MLP")
    model_def = get_model("test_mlp_registry", 3)
    assert model_def.module == _TinyMLP(3) and model_def.mask_pattern == r"^dense0/kernel$"
    assert model_def.has_batch_stats is False and model_def.min_input_size == 2 and model_def.help == "a test MLP"
    assert get_model("test_mlp_registry", 3) is model_def
    assert model_names()[-1] == "test_mlp_registry"


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'mnistnet' is already registered"):
        register_model("mnistnet", lambda n, impl: _TinyMLP(n), r"^dense0/kernel$")
    assert get_model("mnistnet", 10, "xla").mask_pattern == r"^(conv2|fc1)/kernel$"


def test_unknown_model_type_lists_every_name():
    with pytest.raises(ValueError, match="unknown --model_type") as err:
        get_model("test_mlp_never_registered", 10)
    assert all(name in str(err.value) for name in model_names())


def test_mnistnet_softmax_is_refused_for_other_models():
    with pytest.raises(ValueError, match="mnistnet_softmax works with mnistnet, not leaf_cnn"):
        get_model("leaf_cnn", 10, "xla", mnistnet_softmax=True)


class FlaxConvNet(nn.Module):
    """A user's model built from flax's own Conv, one layer per kind of convolution."""

    dilated: bool = False

    @nn.compact
    def __call__(self, x, train=False, example_mask=None):
        x = nn.relu(nn.Conv(6, (3, 3), name="same")(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding="VALID", use_bias=False, name="valid")(x))
        if self.dilated:  # conv2d does not compute dilation: flax's own formulation stays
            x = nn.Conv(8, (3, 3), kernel_dilation=2, name="dilated")(x)
        return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("dilated", [False, True])
def test_flax_convs_of_a_user_model_train_in_the_fast_formulation(dilated):
    """Vmapped over per-client parameters, flax's Conv becomes a grouped convolution, slow on CPU;
    with_fast_flax_convs computes the plain ones as im2col and a matmul, the same values and gradients."""
    model = FlaxConvNet(dilated)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 9, 2))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    stacked = jax.tree.map(lambda p: jnp.stack([p, 1.5 * p]), params)  # two clients

    def loss(apply_fn, p):
        return jnp.sum(apply_fn({"params": p}, x) ** 2)

    fast = with_fast_flax_convs(model.apply, "slices")
    assert with_fast_flax_convs(model.apply, "slices") == fast  # compared by value: compiled once per model
    expected = jax.vmap(jax.value_and_grad(functools.partial(loss, model.apply)))(stacked)
    computed = jax.vmap(jax.value_and_grad(functools.partial(loss, fast)))(stacked)
    chex.assert_trees_all_close(computed, expected, rtol=2e-5, atol=1e-5)
    convolutions = str(jax.make_jaxpr(jax.vmap(jax.grad(functools.partial(loss, fast))))(stacked)).count(
        "conv_general_dilated")
    assert convolutions == (3 if dilated else 0)  # the dilated layer's forward and its two gradients
    assert with_fast_flax_convs(model.apply, "xla") == model.apply  # flax's own formulation: untouched


@pytest.mark.parametrize("name", ["mnistnet", "leaf_cnn"])  # vgg16 (32: five 2x2 pools) takes 40 s to check on CPU
def test_min_input_size_is_the_smallest_image_a_model_takes(name):
    def usable(side):
        """Every tensor non-empty and a finite output (VGG's mean over an empty map is NaN)."""
        model = get_model(name, 10)
        try:
            variables = init_variables(model, jax.random.PRNGKey(0), (side, side, 1))
        except Exception:  # a negative shape
            return False
        if any(math.prod(leaf.shape) == 0 for leaf in jax.tree.leaves(variables)):
            return False
        logits = model.module.apply(variables, jnp.ones((1, side, side, 1)), train=False)
        return bool(jnp.all(jnp.isfinite(logits)))

    side = get_model(name, 10).min_input_size
    assert usable(side) and not usable(side - 1)
