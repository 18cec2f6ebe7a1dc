"""FLASH stage 1 (sensitivity) and SPDST."""
import jax.numpy as jnp
import numpy as np
import pytest

from flash_jax.config import Config
from flash_jax.data.sources import load_dataset
from flash_jax.fl.loop import run
from flash_jax.sparse import client_layer_densities, layer_counts, sensitivity_densities


def test_client_layer_densities_average_over_clients():
    masks = {"a": jnp.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool), "b": jnp.array([[[1, 1]], [[0, 0]]], bool)}
    assert client_layer_densities(masks) == pytest.approx({"a": 0.5, "b": 0.5})


def test_sensitivity_rescales_to_the_budget_and_caps_at_one():
    sizes = {"a": 1000, "b": 9000}
    dens = sensitivity_densities({"a": 0.3, "b": 0.02}, sizes, 0.05)
    assert sum(dens[p] * sizes[p] for p in sizes) == pytest.approx(0.05 * 10000)
    assert dens["a"] / dens["b"] == pytest.approx(15.0)
    counts = layer_counts({"a": (1000,), "b": (9000,)}, dens)
    assert abs(sum(counts.values()) - 500) <= len(sizes) / 2  # exact counts, within rounding
    capped = sensitivity_densities({"a": 0.9, "b": 0.001}, sizes, 0.5)
    assert capped["a"] == 1.0


def test_spdst_end_to_end_on_digits(tmp_path):
    digits = load_dataset("digits")
    config = Config(experiment_type="spdst", dataset="digits", num_users=10, frac=0.5, init_frac=0.2, init_epoch=2,
                    fl_rounds=4, eval_every=2, density=0.05, quiet=True, workdir=str(tmp_path / "w"))
    history = run(config, digits)
    sizes = {"conv2/kernel": 5000, "fc1/kernel": 256000}
    last = history[-1]
    # the stage-2 mask has the sensitivity layer densities and exactly d*N_m weights within rounding
    assert abs(last["density"] * sum(sizes.values()) - 0.05 * sum(sizes.values())) <= 1
    assert last["layer_density"]["conv2/kernel"] > 0.06  # moved away from the uniform 0.05
    assert all(m["layer_density"] == last["layer_density"] for m in history)  # same mask every round
    import json
    sensitivity = json.load(open(tmp_path / "w" / "sensitivity.json"))
    assert len(sensitivity["clients"]) == 2
    for p, uploads in sensitivity["client_layer_density"].items():  # what each client sent; the server averaged it
        assert len(uploads) == 2 and np.mean(uploads) == pytest.approx(sensitivity["reported_layer_density"][p])
    for p, n in sizes.items():
        assert last["layer_density"][p] == pytest.approx(round(sensitivity["layer_density"][p] * n) / n)
    assert np.isfinite(last["loss"])


def test_hamming_and_consensus_on_hand_made_masks():
    from flash_jax.sparse import mask_consensus
    server = {"a": jnp.array([1, 1, 0, 0], bool), "b": jnp.array([[1, 0], [0, 0]], bool)}
    clients = {"a": jnp.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], bool),
               "b": jnp.array([[[1, 0], [0, 0]], [[1, 0], [0, 1]], [[0, 0], [0, 0]]], bool)}
    previous = {"a": jnp.array([1, 0, 0, 0], bool), "b": jnp.array([[1, 0], [0, 1]], bool)}
    got = {k: float(v) for k, v in mask_consensus(clients, server, previous).items()}
    assert got["server_mask_change"] == pytest.approx(2 / 8)  # normalised Hamming distance of the server masks
    # client-to-server distances 0, 3/8, 3/8; pairwise: (0,1) 3/8, (0,2) 3/8, (1,2) 4/8
    assert got["mask_hamming_to_server"] == pytest.approx((0 + 3 / 8 + 3 / 8) / 3)
    assert got["mask_hamming_clients"] == pytest.approx((3 / 8 + 3 / 8 + 4 / 8) / 3)
    assert got["server_mask_change"] == pytest.approx(2 / 8)
    assert got["union_density"] == pytest.approx(5 / 8)
    # IoU with the server: 1, 2/5 (|{a0,b0}| / |{a0,a1,a2,b0,b3}|), 0 (empty client vs 3 active)
    assert got["mask_iou_to_server"] == pytest.approx((1 + 2 / 5 + 0) / 3)


@pytest.mark.parametrize("method", ["avg", "aggregate"])
def test_next_mask_is_exact_per_tensor_topk_with_formula_counts(method):
    from flash_jax.sparse import next_mask
    rng = np.random.default_rng(0)
    shapes = {"a": (6, 5), "b": (40,)}
    params = {p: rng.normal(size=s).astype(np.float32) for p, s in shapes.items()}
    params["b"][rng.random(40) < 0.5] = 0.0  # a sparse aggregate: 'aggregate' counts its support
    clients = {p: rng.random((3,) + s) < 0.3 for p, s in shapes.items()}
    density = 0.2
    got = next_mask({p: jnp.asarray(m) for p, m in clients.items()}, {p: jnp.asarray(v) for p, v in params.items()},
                    density, method)
    e = {p: (clients[p].reshape(3, -1).sum(1).mean() if method == "avg" else np.count_nonzero(params[p]))
         for p in shapes}
    lam = min(1.0, density * 70 / sum(e.values()))
    for p in shapes:
        m = int(np.floor(lam * e[p]))
        assert int(got[p].sum()) == m
        order = np.argsort(-np.abs(params[p]).ravel(), kind="stable")
        expected = np.zeros(params[p].size, bool)
        expected[order[:m]] = True
        np.testing.assert_array_equal(np.asarray(got[p]).ravel(), expected)


def test_jmwst_end_to_end_keeps_density_d_and_reports_consensus():
    digits = load_dataset("digits")
    history = run(Config(experiment_type="jmwst", dataset="digits", num_users=10, frac=0.5, init_frac=0.2,
                         init_epoch=2, fl_rounds=4, eval_every=2, density=0.05, jmwst_update_interval=2,
                         quiet=True), digits)
    n_m, n_layers = 261000, 2
    for m in history:
        assert abs(m["density"] - 0.05) * n_m <= n_layers  # floor(lam*e_l) per tensor
        assert 0.0 <= m["mask_hamming_clients"] <= 1.0 and 0.0 <= m["mask_hamming_to_server"] <= 1.0
    # round 4 is a fixed-mask round (r_int=2: updates at rounds 1 and 3): the clients agree with the server
    assert history[-1]["mask_hamming_to_server"] == 0.0 and history[-1]["server_mask_change"] == 0.0
    assert history[0]["server_mask_change"] == 0.0  # round 2 (index 1) keeps round 1's mask
