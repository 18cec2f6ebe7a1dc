"""FLASH: stage 1's sensitivity, SPDST and JMWST on digits, and hetero-FLASH (budget levels fixed per
client, nested level masks)."""
import json

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flash_jax.comm import model_bits
from flash_jax.config import Config
from flash_jax.fl.hetero import client_budget_levels, slot_budget_levels
from flash_jax.fl.loop import run
from flash_jax.fl.round import run_round
from flash_jax.fl.setup import build_setup
from flash_jax.fl.state import init_state
from flash_jax.sparse import (client_layer_densities, layer_counts, level_masks, next_mask, sensitivity_densities,
                              topk_mask)
from flash_jax.streams import ROUND, sample_clients

N_M = 261000  # MNISTNet's maskable entries: conv2 (5000) + fc1 (256000)


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


def test_spdst_end_to_end_on_digits(digits, tmp_path):
    config = Config(experiment_type="spdst", dataset="digits", num_users=10, frac=0.5, init_frac=0.2, init_epoch=2,
                    fl_rounds=4, eval_every=2, density=0.05, quiet=True, workdir=str(tmp_path / "w"))
    history = run(config, digits)
    sizes = {"conv2/kernel": 5000, "fc1/kernel": 256000}
    last = history[-1]
    # the stage-2 mask has the sensitivity layer densities and exactly d*N_m weights within rounding
    assert abs(last["density"] * sum(sizes.values()) - 0.05 * sum(sizes.values())) <= 1
    assert last["layer_density"]["conv2/kernel"] > 0.06  # moved away from the uniform 0.05
    assert all(m["layer_density"] == last["layer_density"] for m in history)  # same mask every round
    sensitivity = json.load(open(tmp_path / "w" / "sensitivity.json"))
    assert len(sensitivity["clients"]) == 2
    for p, uploads in sensitivity["client_layer_density"].items():  # what each client sent; the server averaged it
        assert len(uploads) == 2 and np.mean(uploads) == pytest.approx(sensitivity["reported_layer_density"][p])
    for p, n in sizes.items():
        assert last["layer_density"][p] == pytest.approx(round(sensitivity["layer_density"][p] * n) / n)
    assert np.isfinite(last["loss"])


def test_jmwst_end_to_end_keeps_density_d_and_reports_consensus(digits):
    history = run(Config(experiment_type="jmwst", dataset="digits", num_users=10, frac=0.5, init_frac=0.2,
                         init_epoch=2, fl_rounds=4, eval_every=1, density=0.05, jmwst_update_interval=2,
                         quiet=True), digits)
    for m in history:
        assert abs(m["density"] - 0.05) * N_M <= 2  # floor(lam*e_l) per tensor, 2 tensors
        assert 0.0 <= m["mask_hamming_clients"] <= 1.0 and 0.0 <= m["mask_hamming_to_server"] <= 1.0
    # r_int=2: rounds 1 and 3 renew the mask (the clients' sparse-learned masks differ from each other and
    # from the new server mask, which moves); rounds 2 and 4 keep it, and every client holds it exactly
    renewing, fixed = history[0::2], history[1::2]
    for key in ("server_mask_change", "mask_hamming_to_server", "mask_hamming_clients"):
        assert all(m[key] > 0.0 for m in renewing) and all(m[key] == 0.0 for m in fixed), key


def test_hetero_levels_nest_with_next_mask_counts():
    rng = np.random.default_rng(0)
    shapes = {"a": (40, 5), "b": (300,)}
    top = {p: jnp.asarray(rng.random(s) < 0.3) for p, s in shapes.items()}
    params = {p: jnp.asarray(rng.normal(size=s), jnp.float32) for p, s in shapes.items()}
    levels = (1.0, 0.75, 0.5)
    stacked = level_masks(params, top, 0.2, levels)
    chex.assert_shape(stacked["a"], (3, 40, 5))
    chex.assert_trees_all_equal({p: m[0] for p, m in stacked.items()}, top)
    support = {p: int(top[p].sum()) for p in shapes}
    total = sum(int(np.prod(s)) for s in shapes.values())
    for i, h in enumerate(levels[1:], start=1):
        lam = min(1.0, h * 0.2 * total / sum(support.values()))
        for p in shapes:
            assert int(stacked[p][i].sum()) == int(np.floor(lam * support[p]))
            assert not np.any(np.asarray(stacked[p][i]) & ~np.asarray(stacked[p][i - 1]))  # nested
    np.testing.assert_array_equal(level_masks(params, top, 0.2, (1.0,))["b"], top["b"][None])


def test_next_mask_avg_takes_hetero_budgets_from_the_clients_at_d():
    rng = np.random.default_rng(1)
    params = {"a": jnp.asarray(rng.normal(size=(50,)), jnp.float32), "b": jnp.asarray(rng.normal(size=(200,)))}
    full = {"a": jnp.asarray(np.arange(50) < 10)[None], "b": jnp.asarray(np.arange(200) < 20)[None]}
    half = {"a": jnp.asarray(np.arange(50) < 5)[None], "b": jnp.asarray(np.arange(200) < 10)[None]}
    both = {p: jnp.concatenate([full[p], half[p]]) for p in full}
    expected = next_mask(full, params, 0.1, "avg")
    assert {p: int(m.sum()) for p, m in expected.items()} == {"a": 8, "b": 16}  # floor(e_l * 25 / 30)
    # the client at d sets the budgets, whatever the client below d holds
    current = {"a": jnp.asarray(np.arange(50) < 20), "b": jnp.asarray(np.arange(200) < 5)}
    chex.assert_trees_all_equal(next_mask(both, params, 0.1, "avg", jnp.array([1.0, 0.5]), current), expected)
    # without a client at d, the current d mask's counts stay (a full layer below d is not the d profile)
    kept = next_mask(half, params, 0.1, "avg", jnp.array([0.5]), current)
    assert {p: int(m.sum()) for p, m in kept.items()} == {"a": 20, "b": 5}
    np.testing.assert_array_equal(kept["b"], topk_mask(jnp.abs(params["b"]), 5))


def test_budget_levels_fixed_per_client_and_authors_slots():
    config = Config(num_users=100, frac=0.1, hetero_client=True, experiment_type="spdst")
    levels = client_budget_levels(config)
    np.testing.assert_array_equal(np.bincount(levels), [40, 30, 30])  # levels 1, 0.75, 0.5 of d
    np.testing.assert_array_equal(levels, client_budget_levels(config))  # a pure function of the seed
    assert not np.array_equal(levels, client_budget_levels(Config(num_users=100, hetero_client=True, seed=2)))
    h = np.asarray(config.density_levels[0])
    np.testing.assert_array_equal(h[slot_budget_levels(config)], [0.5] * 3 + [0.75] * 3 + [1.0] * 4)
    seven = Config(num_users=70, frac=0.1, hetero_client=True, experiment_type="jmwst")  # any K: largest remainder
    np.testing.assert_array_equal(h[slot_budget_levels(seven)], [0.5] * 2 + [0.75] * 2 + [1.0] * 3)
    np.testing.assert_array_equal(np.bincount(client_budget_levels(seven)), [28, 21, 21])


def _level_downloads(setup, state, ids, level=None) -> int:
    """Bits of the participants' downloads: the server weights inside each one's level mask (or the
    given level's), the mask's positions unless the participant holds that mask's current id."""
    params = traverse_util.flatten_dict(state.model.params, sep="/")
    total = 0
    for client in ids:
        row = state.clients.level[client] if level is None else level
        nnz = {p: int(np.sum((np.asarray(params[p]) != 0) & np.asarray(state.server.levels[p][row])))
               for p in setup.tensors.sizes}
        held = state.clients.mask_id[client] == state.server.ids[row]
        total += model_bits(nnz, setup.tensors.sizes, setup.tensors.dense_size, mask_known=bool(held))
    return total


def test_hetero_spdst_budgets_stay_fixed_and_levels_nest(digits):
    config = Config(experiment_type="spdst", hetero_client=True, num_users=10, frac=0.5, init_frac=0.2, init_epoch=1,
                    fl_rounds=3, quiet=True)
    setup = build_setup(config, digits)
    state = init_state(setup)
    budgets = state.clients.level.copy()
    below_d = 0
    for _ in range(3):
        ids = sample_clients(config.seed, ROUND, state.round, config.num_users, config.clients_per_round)
        previous = state
        state, info = run_round(setup, state)
        np.testing.assert_array_equal(state.clients.level, budgets)
        assert info["hetero_level_density"][0] == pytest.approx(0.05, abs=2 / N_M)
        for got, h in zip(info["hetero_level_density"][1:], (0.75, 0.5)):
            assert abs(got - h * 0.05) <= 2 / N_M  # floor per tensor
        stacked = state.server.levels
        for p in stacked:
            assert not np.any(np.asarray(stacked[p][2]) & ~np.asarray(stacked[p][1]))
            assert not np.any(np.asarray(stacked[p][1]) & ~np.asarray(stacked[p][0]))
        # each participant downloads its level's model (with that mask unless it holds it already): below
        # d, fewer bits than d's model
        assert info["download_bits"] == _level_downloads(setup, previous, ids)
        below_d += int(np.sum(budgets[ids] > 0))
        assert _level_downloads(setup, previous, ids[:1], level=2) < _level_downloads(setup, previous, ids[:1], level=0)
        chex.assert_trees_all_equal(state.server.top, previous.server.top)  # SPDST: d mask fixed
    assert below_d > 0  # the downloads above were of levels below d too


@pytest.mark.slow  # whole runs; the hetero budgets and level-mask tests keep hetero-FLASH in the quick set
@pytest.mark.parametrize("experiment_type, assign", [("jmwst", "client"), ("spdst", "slot")])
def test_hetero_end_to_end_density_d(digits, experiment_type, assign):
    history = run(Config(experiment_type=experiment_type, hetero_client=True, hetero_assign=assign, num_users=10,
                         frac=1.0, init_frac=0.2, init_epoch=1, fl_rounds=2, eval_every=1, quiet=True), digits)
    for m in history:
        assert abs(m["density"] - 0.05) * N_M <= 2
        assert np.isfinite(m["loss"])
    # clients below d hold sub-masks of the server mask (the authors' slots put all at d in round 0)
    assert history[-1]["mask_hamming_to_server"] > 0.0
