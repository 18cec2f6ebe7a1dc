"""hetero-FLASH (budget levels, nested masks), FedDST (readjustment, union pruning) and gradient growth."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flash_jax.config import Config
from flash_jax.data.sources import load_dataset
from flash_jax.fl.hetero import client_budget_levels, slot_budget_levels
from flash_jax.fl.loop import run
from flash_jax.fl.round import run_round
from flash_jax.fl.state import init_state
from flash_jax.fl.setup import build_setup
from flash_jax.streams import ROUND, sample_clients
from flash_jax.methods.feddst import readjust_ratio as feddst_readjust_ratio
from flash_jax.sparse import level_masks, mask_update, next_mask, prune_union, readjust_masks, sl_init, topk_mask

N_M = 261000  # MNISTNet's maskable entries: conv2 (5000) + fc1 (256000)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


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


def test_feddst_readjust_schedule_is_cosine_and_stops_at_half():
    config = Config(fl_rounds=100, feddst_readjust_ratio=0.05, feddst_readjust_every=10)
    ratios = {t: feddst_readjust_ratio(config, t) for t in range(1, 101)}  # rounds count from 1
    assert [t for t, v in ratios.items() if v > 0] == [2, 12, 22, 32, 42]
    assert ratios[2] == pytest.approx(0.05 * (1 + np.cos(np.pi / 50)) / 2)
    assert ratios[42] < ratios[32] < ratios[2]


def test_hetero_spdst_budgets_stay_fixed_and_levels_nest(digits):
    config = Config(experiment_type="spdst", hetero_client=True, num_users=10, frac=0.5, init_frac=0.2, init_epoch=1,
                    fl_rounds=3, quiet=True)
    setup = build_setup(config, digits)
    state = init_state(setup)
    budgets = state.clients.level.copy()
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
        # a participant downloads its level's model: fewer bits below d
        assert info["download_bits"] < len(ids) * info["upload_bits"] / len(ids) * 2
        chex.assert_trees_all_equal(state.server.top, previous.server.top)  # SPDST: d mask fixed


@pytest.mark.parametrize("experiment_type, assign", [("jmwst", "client"), ("spdst", "slot")])
def test_hetero_end_to_end_density_d(digits, experiment_type, assign):
    history = run(Config(experiment_type=experiment_type, hetero_client=True, hetero_assign=assign, num_users=10,
                         frac=1.0, init_frac=0.2, init_epoch=1, fl_rounds=2, eval_every=1, quiet=True), digits)
    for m in history:
        assert abs(m["density"] - 0.05) * N_M <= 2
        assert np.isfinite(m["loss"])
    # clients below d hold sub-masks of the server mask (the authors' slots put all at d in round 0)
    assert history[-1]["mask_hamming_to_server"] > 0.0


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


def test_gradient_growth_picks_the_largest_gradients():
    params = {"w": jnp.array([0.5, 0.4, 0.0, 0.0, 0.0, 0.0])}
    masks = {"w": jnp.array([1, 1, 0, 0, 0, 0], bool)}
    scores = {"w": jnp.array([0.0, 0.0, 1.0, 3.0, 2.0, 0.5])}
    new, _ = mask_update(params, masks, 0.5, 2.0, sl_init(), scores)
    np.testing.assert_array_equal(new["w"], [1, 0, 0, 1, 0, 0])  # prune 0.4, regrow entry 3


def test_nst_with_gradient_growth_runs(digits):
    history = run(Config(experiment_type="nst", growth="gradient", num_users=10, frac=0.5, fl_rounds=2,
                         eval_every=1, quiet=True), digits)
    assert history[-1]["union_density"] >= 0.05 and np.isfinite(history[-1]["loss"])
