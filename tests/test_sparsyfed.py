"""SparsyFed: Powerprop, activation pruning of the weight gradient, the monotone
support of the union model, and Top-k as its alpha-1, no-pruning case."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from flash_jax.config import Config
from flash_jax.fl.client import momentum_sgd
from flash_jax.fl.loop import run
from flash_jax.methods.sparsyfed import powerprop
from flash_jax.models import get_model, init_variables
from flash_jax.models.activation_pruning import initial_thresholds, with_pruned_weight_gradients
from flash_jax.models.layers import Conv, with_fast_flax_convs
from flash_jax.sparse import apply_masks, random_masks
from tests.runs import TIMING

MASKED = ("conv2/kernel", "fc1/kernel")


def test_powerprop_gradient_is_zero_at_zero_and_the_init_is_the_projects():
    reparam = powerprop(1.25, ("w",))
    u = {"w": jnp.array([-0.3, 0.0, 0.2, 1e-6])}
    v = reparam.stored(u)
    np.testing.assert_allclose(reparam.effective(v)["w"], u["w"], rtol=1e-6)  # at init w = u
    grad = jax.grad(lambda v: jnp.sum(reparam.effective(v)["w"] * jnp.array([1.0, 2.0, 3.0, 4.0])))(v)["w"]
    assert np.all(np.isfinite(grad)) and grad[1] == 0.0
    # one SGD step with weight decay leaves every zero of v at zero
    optimizer = momentum_sgd(0.5, momentum=None, weight_decay=1e-3)
    updates, _ = optimizer.update({"w": grad}, optimizer.init(v), v)
    assert optax.apply_updates(v, updates)["w"][1] == 0.0


@pytest.fixture(scope="module")
def mnistnet_problem():
    model = get_model("mnistnet", 10, "xla")
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    return model.module.apply, variables["params"], x, y


def _loss_and_grads(apply_fn, params, x, y, thresholds=None, freeze_conv=True):
    def loss(params, x):
        fn, new = (apply_fn, {}) if thresholds is None else with_pruned_weight_gradients(apply_fn, thresholds,
                                                                                          freeze_conv)
        logits = fn({"params": params}, x, train=True)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)), (logits, new)
    (_, (logits, new)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return logits, grads, new


def test_activation_pruning_changes_only_the_weight_gradients_of_sparse_layers(mnistnet_problem):
    apply_fn, params, x, y = mnistnet_problem
    masks = random_masks(jax.random.key(2), {p: params[p.split("/")[0]]["kernel"].shape for p in MASKED}, 0.1)
    sparse = apply_masks(params, masks)
    logits, (d_params, d_x), _ = _loss_and_grads(apply_fn, sparse, x, y)
    pruned_logits, (pruned_d_params, pruned_d_x), new = _loss_and_grads(apply_fn, sparse, x, y,
                                                                        initial_thresholds(MASKED))
    chex.assert_trees_all_equal(pruned_logits, logits)  # the forward pass is the dense one, bit for bit
    chex.assert_trees_all_equal(pruned_d_x, d_x)        # and so is the input gradient
    for name in ("conv1", "fc2"):  # layers without a threshold entry are untouched
        chex.assert_trees_all_equal(pruned_d_params[name], d_params[name])
    for name in ("conv2", "fc1"):
        assert not np.array_equal(pruned_d_params[name]["kernel"], d_params[name]["kernel"])
        chex.assert_trees_all_equal(pruned_d_params[name]["bias"], d_params[name]["bias"])
    assert float(new["conv2/kernel"]) > 0 and float(new["fc1/kernel"]) < 0  # conv frozen; dense recomputed
    # a dense layer (s = 0, as in round 1 from the dense init) is not pruned at all
    _, (dense_d_params, _), unset = _loss_and_grads(apply_fn, params, x, y, initial_thresholds(MASKED))
    chex.assert_trees_all_equal(dense_d_params, _loss_and_grads(apply_fn, params, x, y)[1][0])
    assert float(unset["conv2/kernel"]) < 0  # no threshold to freeze yet


class _TwoLayers(nn.Module):
    """conv -> dense, with flax's nn.Conv or the project's Conv (the same parameters)."""

    flax_conv: bool

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(4, (3, 3), name="conv") if self.flax_conv else Conv(4, (3, 3), name="conv")
        return nn.Dense(10, name="fc")(jax.nn.relu(conv(x)).reshape(x.shape[0], -1))


def _two_layers_apply(flax_conv: bool):
    """The model function as local training runs it: flax's convolutions in the fast formulation."""
    def apply_fn(variables, x, train):
        return _TwoLayers(flax_conv).apply(variables, x)
    return with_fast_flax_convs(apply_fn, "slices") if flax_conv else apply_fn


def test_a_flax_conv_gets_activation_pruning_as_the_projects_conv_does():
    x, y = jax.random.normal(jax.random.key(1), (4, 6, 6, 2)), jnp.arange(4)
    params = _TwoLayers(True).init(jax.random.key(0), x)["params"]
    paths = ("conv/kernel", "fc/kernel")
    masks = random_masks(jax.random.key(2), {p: params[p.split("/")[0]]["kernel"].shape for p in paths}, 0.3)
    sparse = apply_masks(params, masks)
    _, (flax_grads, _), flax_thresholds = _loss_and_grads(_two_layers_apply(True), sparse, x, y,
                                                          initial_thresholds(paths))
    _, (own_grads, _), own_thresholds = _loss_and_grads(_two_layers_apply(False), sparse, x, y,
                                                        initial_thresholds(paths))
    chex.assert_trees_all_close(flax_grads, own_grads, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(flax_thresholds, own_thresholds)
    assert float(flax_thresholds["conv/kernel"]) > 0  # found and frozen after this first step
    _, (unpruned_grads, _), _ = _loss_and_grads(_two_layers_apply(True), sparse, x, y)
    assert not np.allclose(flax_grads["conv"]["kernel"], unpruned_grads["conv"]["kernel"])


SMALL = dict(num_users=10, frac=0.3, fl_rounds=5, eval_every=1, quiet=True)


@pytest.mark.slow
def test_sparsyfed_support_never_grows_from_round_2(digits):
    history = run(Config(experiment_type="sparsyfed", **SMALL), digits)
    densities = [r["density"] for r in history]
    assert all(b <= a for a, b in zip(densities[1:], densities[2:]))
    assert all(r["server_reactivated"] == 0 and r["mask_activated"] == 0 for r in history[1:])
    assert all(r["density_pruned"] == round(0.05 * 261000) / 261000 for r in history)
    # alpha 1 (Top-k with activation pruning): zeros grow back, on clients and at the server
    plain = run(Config(experiment_type="sparsyfed", sparsyfed_alpha=1.0, **SMALL), digits)
    assert max(r["mask_activated"] for r in plain[1:]) > 0 and max(r["server_reactivated"] for r in plain[1:]) > 0


@pytest.mark.slow
def test_topk_is_sparsyfed_with_alpha_1_and_no_activation_pruning(digits):
    def lines(history):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in history]
    topk = run(Config(experiment_type="topk", **SMALL), digits)
    sparsyfed = run(Config(experiment_type="sparsyfed", sparsyfed_alpha=1.0, sparsyfed_act_threshold="off", **SMALL),
                    digits)
    assert lines(sparsyfed) == lines(topk)
