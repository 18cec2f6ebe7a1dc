"""FedDST: the readjustment's schedule and its moves by magnitude and gradient, pruning of the clients'
union to exact counts, and the target density every round."""
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from flash_jax.config import Config
from flash_jax.fl.loop import run
from flash_jax.methods.feddst import readjust_ratio as feddst_readjust_ratio
from flash_jax.sparse import prune_union, readjust_masks


def test_readjust_moves_a_fraction_by_magnitude_and_gradient():
    params = {"w": jnp.array([0.5, -0.1, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, -0.2, 0.4])}
    masks = {"w": jnp.array([1, 1, 0, 1, 0, 0, 0, 0, 1, 1], bool)}
    grads = {"w": jnp.array([9.0, 0.0, 0.1, 0.0, 5.0, -7.0, 0.2, 0.0, 0.0, 0.0])}
    out = readjust_masks(params, masks, {"w": jnp.abs(grads["w"])}, 0.4)  # round(0.4 * 5) = 2 moved
    # drops -0.1 and -0.2 (smallest |w|), grows entries 5 and 4 (largest |gradient| among inactive)
    np.testing.assert_array_equal(out["w"], [1, 0, 0, 1, 1, 1, 0, 0, 0, 1])
    chex.assert_trees_all_equal(readjust_masks(params, masks, grads, 0.0), masks)


def test_prune_union_keeps_union_entries_and_exact_counts():
    params = {"w": jnp.array([0.9, 0.0, 0.5, 0.0, 0.2, 0.0])}
    client_masks = {"w": jnp.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0]], bool)}
    out = prune_union(params, client_masks, {"w": 4})
    # the union {0, 1, 2, 4} has 4 entries: a zero-valued union entry outranks any entry outside it
    np.testing.assert_array_equal(out["w"], [1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(prune_union(params, client_masks, {"w": 2})["w"], [1, 0, 1, 0, 0, 0])


def test_feddst_readjust_schedule_is_cosine_and_stops_at_half():
    config = Config(fl_rounds=100, feddst_readjust_ratio=0.05, feddst_readjust_every=10)
    ratios = {t: feddst_readjust_ratio(config, t) for t in range(1, 101)}  # rounds count from 1
    assert [t for t, v in ratios.items() if v > 0] == [2, 12, 22, 32, 42]
    assert ratios[2] == pytest.approx(0.05 * (1 + np.cos(np.pi / 50)) / 2)
    assert ratios[42] < ratios[32] < ratios[2]


@pytest.mark.slow
def test_feddst_keeps_target_density_every_round(digits):
    config = Config(experiment_type="feddst", num_users=10, frac=0.5, fl_rounds=6, eval_every=1, quiet=True,
                    feddst_readjust_every=2, feddst_readjust_ratio=0.2)
    history = run(config, digits)
    counts = {"conv2/kernel": 250, "fc1/kernel": 12800}  # layer counts at d = 0.05
    for m in history:
        for p, c in counts.items():
            assert m["layer_density"][p] * {"conv2/kernel": 5000, "fc1/kernel": 256000}[p] == pytest.approx(c)
    readjusted = [m["round"] for m in history if m["readjust_ratio"] > 0]
    assert readjusted == [2]  # rounds index 1 (and 3 would be >= fl_rounds // 2)
    change = {m["round"]: m["server_mask_change"] for m in history}
    assert change[2] > 0.0 and change[1] == change[3] == change[4] == 0.0
    assert history[1]["upload_bits"] > history[2]["upload_bits"]  # readjusted masks travel up once
