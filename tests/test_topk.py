"""Top-k: the global cut, the union model, regrowth and communication."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from flash_jax.comm import VALUE_BITS
from flash_jax.config import Config
from flash_jax.fl.loop import run
from flash_jax.fl.rules import global_cut

N_M, D_SIZE = 261000, 250 + 10 + 20 + 50 + 500 + 10  # MNISTNet: conv2+fc1 kernels; conv1, biases, fc2
TOTAL = N_M + D_SIZE


def test_global_cut_keeps_exactly_k_d_with_one_threshold_across_tensors():
    rng = np.random.default_rng(0)
    maskable = {"small": jnp.asarray(rng.normal(size=(40,)) * 0.01), "large": jnp.asarray(rng.normal(size=(7, 9)))}
    masks = global_cut(0.2)(maskable)
    kept = np.concatenate([np.abs(np.asarray(maskable[p]))[np.asarray(masks[p])] for p in sorted(masks)])
    dropped = np.concatenate([np.abs(np.asarray(maskable[p]))[~np.asarray(masks[p])] for p in sorted(masks)])
    assert len(kept) == round(0.2 * 103)
    assert kept.min() >= dropped.max()  # one threshold for both tensors: the small-scale one keeps ~nothing
    assert int(np.sum(np.asarray(masks["small"]))) < int(np.sum(np.asarray(masks["large"])))


@pytest.fixture(scope="module")
def history(digits):
    config = Config(experiment_type="topk", num_users=10, frac=0.3, fl_rounds=4, eval_every=1, quiet=True)
    return run(config, digits)


def test_topk_union_model_regrowth_and_communication(history):
    k, k_d = 3, round(0.05 * N_M)
    for record in history:
        assert 0.05 <= record["density"] <= min(1.0, k * 0.05) + 1e-12  # d <= density(G_t) <= K d
        assert record["density_pruned"] == k_d / N_M
        # every upload: K_d values plus their positions, and the dense rest. The positions cost 18-bit
        # indices in fc1 (256,000 entries) and at most a 5,000-bit bitmap in conv2 (5,000 entries), so
        # between 18 (K_d - 5,000) + 5,000 and 18 K_d bits, however K_d splits between the two
        values = VALUE_BITS * (k_d + D_SIZE)
        assert k * (values + 18 * (k_d - 5000) + 5000) <= record["upload_bits"] <= k * (values + 18 * k_d)
    assert history[0]["download_bits"] == k * VALUE_BITS * TOTAL  # round 1 sends the dense, seeded init
    for record in history[1:]:  # later: the union (at most K d) and its mask, far below the dense model
        assert k * VALUE_BITS * (k_d + D_SIZE) < record["download_bits"] < k * VALUE_BITS * TOTAL / 2
    # zeros of the received model grow back in dense local training, and the server re-activates some
    assert max(r["mask_activated"] for r in history[1:]) > 0
    assert max(r["server_reactivated"] for r in history[1:]) > 0
    assert all(math.isfinite(r["accuracy_pruned"]) for r in history)
