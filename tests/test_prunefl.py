"""PruneFL: ADJUST's invariants on random problems, initial pruning, adjustment
rounds, the dense-gradient uploads and the density cap."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flash_jax.comm import VALUE_BITS
from flash_jax.config import Config, ConfigError
from flash_jax.fl.loop import run
from flash_jax.settings import validate
from flash_jax.sparse.prunefl_search import CostModel, SquaredGradients, adjust, ratio

N_M, D_SIZE = 261000, 840  # MNISTNet: the conv2 and fc1 kernels; every other parameter


def problem(seed: int, active: float = 0.5):
    rng = np.random.default_rng(seed)
    shapes = {"a": (6, 5), "b": (40,)}
    theta = {p: rng.normal(size=s) for p, s in shapes.items()}
    mask = {p: rng.random(s) < active for p, s in shapes.items()}
    squared = {p: rng.exponential(size=s) * (rng.random(s) < 0.8) for p, s in shapes.items()}  # some exact zeros
    return theta, mask, squared, {"a": 1.0, "b": 2.5}


def kept_set(theta, mask, dtp):
    """Each tensor's active entries minus its floor(dtp * active) smallest |theta| (lower index first)."""
    kept = {}
    for p in mask:
        active = np.flatnonzero(mask[p].reshape(-1))
        order = sorted(active, key=lambda j: (abs(theta[p].reshape(-1)[j]), j))
        keep = np.zeros(mask[p].size, bool)
        keep[order[math.floor(dtp * len(active)):]] = True
        kept[p] = keep.reshape(mask[p].shape)
    return kept


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), dtp=st.floats(0.0, 0.9), tau=st.floats(0.05, 3.0))
def test_adjust_invariants(seed, dtp, tau):
    theta, mask, squared, costs = problem(seed)
    t0 = tau * sum(costs[p] * theta[p].size for p in theta)
    new = adjust(theta, mask, SquaredGradients(squared, 1.0), dtp, CostModel(costs, t0))
    for p in mask:
        left = mask[p] & ~new[p]
        assert left.sum() <= math.floor(dtp * mask[p].sum())  # at most floor(dtp |A_l|) leave a tensor
        assert not np.any(new[p] & ~mask[p] & (squared[p] == 0))  # an inactive entry with S = 0 never enters
    scaled = adjust(theta, mask, SquaredGradients({p: 7.0 * s for p, s in squared.items()}, 7.0), dtp,
                    CostModel(costs, t0))
    assert all(np.array_equal(scaled[p], new[p]) for p in new)  # invariant to scaling S
    kept = kept_set(theta, mask, dtp)
    assert all(np.all(new[p] >= kept[p]) for p in new)
    assert ratio(new, SquaredGradients(squared, 1.0), CostModel(costs, t0)) >= ratio(
        kept, SquaredGradients(squared, 1.0), CostModel(costs, t0))  # additions only raise U/V
    # greedy order: every added entry had S_j / c_l > U/V of the set before it
    added = sorted(((squared[p].reshape(-1)[j] / costs[p], p, j) for p in new
                    for j in np.flatnonzero((new[p] & ~kept[p]).reshape(-1))), key=lambda e: -e[0])
    current = {p: kept[p].copy() for p in new}
    for score, p, j in added:
        assert score > ratio(current, SquaredGradients(squared, 1.0), CostModel(costs, t0))
        current[p].reshape(-1)[j] = True
    # a larger tau never gives a sparser mask
    denser = adjust(theta, mask, SquaredGradients(squared, 1.0), dtp, CostModel(costs, t0 * 1.5))
    assert sum(m.sum() for m in denser.values()) >= sum(m.sum() for m in new.values())


def test_adjust_respects_the_cap():
    theta, mask, squared, costs = problem(3, active=0.2)
    free = adjust(theta, mask, SquaredGradients(squared, 0.0), 0.3, CostModel(costs, 1.0))
    capped = adjust(theta, mask, SquaredGradients(squared, 0.0), 0.3, CostModel(costs, 1.0), cap=12)
    assert sum(m.sum() for m in free.values()) > 12 >= sum(m.sum() for m in capped.values())


SMALL = dict(experiment_type="prunefl", num_users=10, frac=0.3, fl_rounds=8, eval_every=1, quiet=True,
             prunefl_adjust_every=2, prunefl_ip_max_rounds=60, prunefl_ip_adjust_every=10)


@pytest.mark.slow
def test_initial_pruning_and_adjustment_rounds(digits, tmp_path):
    history = run(Config(workdir=str(tmp_path), **SMALL), digits)
    record = json.load(open(tmp_path / "initial_pruning.json"))
    densities = record["densities"]
    assert densities and all(b <= a for a, b in zip(densities, densities[1:]))  # prune-only
    assert record["rounds"] == 60 or len(densities) >= 6
    assert history[0]["density"] == pytest.approx(densities[-1])
    k, dense_gradients = 3, 3 * VALUE_BITS * (N_M + D_SIZE)
    for r in history:
        adjusting = r["round"] - 1 >= 2 and (r["round"] - 1) % 2 == 0  # 0-based rounds 2, 4, 6
        if not adjusting:  # the mask changes only on adjustment rounds
            assert r["server_mask_change"] == 0.0 and r["mask_hamming_to_server"] == 0.0
        # every participant trains in the server mask; uploads are the masked model, plus S when adjusting
        assert r["mask_hamming_clients"] == 0.0
        model_upload = k * (VALUE_BITS * (round(r["union_density"] * N_M) + D_SIZE))
        assert r["upload_bits"] == model_upload + (dense_gradients if adjusting else 0)
    assert any(r["server_mask_change"] > 0 for r in history)


@pytest.mark.slow  # a whole PruneFL run; test_adjust_respects_the_cap checks the cap itself quickly
def test_the_cap_brings_the_density_to_d(digits):
    history = run(Config(prunefl_max_density=0.05, prunefl_adjust_every=1,
                         **{k: v for k, v in SMALL.items() if k != "prunefl_adjust_every"}), digits)
    assert history[-1]["density"] <= 0.05
    reached = next(i for i, r in enumerate(history) if r["density"] <= 0.05)
    assert all(r["density"] <= 0.05 for r in history[reached:])


@pytest.mark.slow  # 53 rounds, to see round 52 turn dense
def test_the_feddst_variant_keeps_70_then_85_percent_and_turns_dense(digits, tmp_path):
    """Its READJUST keeps at least 1 - 0.3 * 0.5^t of the mask: 0.7 after the initial stage, 0.85
    after round 1 (t = 1), everything after round 51; the rebuilt mask is paid with a dense gradient."""
    config = Config(experiment_type="prunefl_feddst", num_users=10, frac=0.3, fl_rounds=53,
                    eval_every=1, quiet=True, workdir=str(tmp_path))
    history = run(config, digits)
    stage = json.load(open(tmp_path / "initial_pruning.json"))
    assert stage["density"] == pytest.approx(0.7, abs=2 / N_M)  # n <= n_req admits one entry past 0.7 N_m
    mask = {r["round"]: r["server_mask_density"] for r in history}  # after the round's server update
    assert mask[1] == stage["density"] and mask[2] >= 0.85 and mask[51] < 1.0 and mask[52] == 1.0
    for r in history:  # the model inside the mask it trained in, plus the dense last-step gradient on t = 1, 51
        model = 3 * VALUE_BITS * (round(r["union_density"] * N_M) + D_SIZE)
        assert r["upload_bits"] == model + (3 * VALUE_BITS * N_M if r["round"] in (2, 52) else 0)


def test_the_feddst_variant_is_a_method_of_its_own():
    with pytest.raises(ConfigError, match=r"--prunefl_variant='feddst' is invalid: .*--experiment_type prunefl_feddst"):
        validate(Config(experiment_type="prunefl", prunefl_variant="feddst"))
    validate(Config(experiment_type="prunefl_feddst"))
