"""flash_jax.sparse: exact-count masks, the server's masks and consensus metrics from the clients' masks,
and the client MASK_UPDATE (sparse learning)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flash_jax.sparse import (
    SLState,
    apply_masks,
    layer_counts,
    magnitude_masks,
    mask_consensus,
    mask_update,
    maskable_paths,
    next_mask,
    random_grow_scores,
    random_masks,
    random_masks_from_counts,
    sl_init,
    topk_mask,
)
from flash_jax.sparse.sparse_learning import _redistribute

KEY = jax.random.key(0)


def count(masks) -> int:
    """Active entries of a mask set."""
    return sum(int(np.sum(np.asarray(m))) for m in masks.values())


@jax.jit  # one compile per shape set; eager op-by-op dispatch is slower here
def update(key, params, masks, prune_rate, target_count, state, grow_scores=None):
    """MASK_UPDATE growing at random from `key` (the authors' growth) unless scores are given."""
    scores = random_grow_scores(key, masks) if grow_scores is None else grow_scores
    return mask_update(params, masks, prune_rate, target_count, state, scores)


NO_GROWTH = SLState(jnp.float32(-1e9), jnp.float32(0.0), jnp.int32(0))  # A so negative g_l = 0


def _params():
    return {
        "conv1": {"kernel": jnp.arange(1.0, 25.0).reshape(2, 3, 4), "bias": jnp.ones(4)},
        "dense": {"kernel": -jnp.arange(1.0, 11.0).reshape(5, 2), "bias": jnp.ones(2)},
    }


def _layer(n, active, magnitude, offset=0.0):
    """A masked tensor whose first `active` entries are active with |w| = magnitude + offset * i."""
    mask = np.arange(n) < active
    w = np.where(mask, magnitude + offset * np.arange(n), 0.0).astype(np.float32)
    sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    return jnp.asarray(w * sign), jnp.asarray(mask)


SIZES = {"a": 100, "b": 40, "c": 1000}  # one layout for the hand-made cases: a single jit compile


def _rng(seed=0):
    """Test data from numpy: every jax.random call shape costs a slow threefry compile on CPU."""
    return np.random.default_rng(seed)


def _setup(**active):
    """Layers a, b, c of SIZES with (active count, magnitude[, offset]) each."""
    params, masks = {}, {}
    for path, args in active.items():
        params[path], masks[path] = _layer(SIZES[path], *args)
    return params, masks


def _nnz(masks):
    return {p: int(m.sum()) for p, m in masks.items()}


# ----------------------------------------------------------------------------------- masks.py


def test_topk_mask_exact_counts_and_ties():
    scores = jnp.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.0])
    m = topk_mask(scores, 2)
    chex.assert_shape(m, (6,))
    chex.assert_type(m, bool)
    np.testing.assert_array_equal(m, [0, 1, 1, 0, 0, 0])  # ties go to the lower index
    np.testing.assert_array_equal(topk_mask(scores, 4), [0, 1, 1, 1, 1, 0])
    assert int(topk_mask(scores, 0).sum()) == 0
    assert int(topk_mask(scores, -3).sum()) == 0
    assert int(topk_mask(scores, 99).sum()) == 6
    ties = jnp.zeros((4, 5))
    m = topk_mask(ties, 7)
    chex.assert_shape(m, (4, 5))
    np.testing.assert_array_equal(m.reshape(-1), np.arange(20) < 7)


def test_topk_mask_equals_a_stable_descending_sort():
    """The radix select picks exactly what a stable descending argsort picks: across signs, ties,
    infinities and signed zeros, for every k, concretely and jitted under vmap with traced k."""
    rng = _rng()
    n = 97
    cases = [rng.normal(size=n), rng.integers(-3, 3, n).astype(float),
             np.where(rng.random(n) < 0.5, -np.inf, rng.random(n)),
             np.where(rng.random(n) < 0.3, -0.0, np.abs(rng.normal(size=n)) * (rng.random(n) < 0.5))]
    ks = jnp.arange(-1, n + 2)

    def by_sort(scores, k):
        order = jnp.argsort(scores, descending=True, stable=True)
        return jnp.zeros(scores.shape, bool).at[order].set(jnp.arange(scores.size) < k)

    for values in cases:
        scores = jnp.asarray(values, jnp.float32)
        expected = jax.vmap(by_sort, in_axes=(None, 0))(scores, ks)
        np.testing.assert_array_equal(jax.jit(jax.vmap(topk_mask, in_axes=(None, 0)))(scores, ks), expected)
        for k in (0, 5, n // 2, n):
            np.testing.assert_array_equal(topk_mask(scores, k), expected[k + 1])


def test_topk_mask_traced_k_jit_and_vmap():
    scores = jnp.asarray(_rng().normal(size=(4, 3, 5)), jnp.float32)
    ks = jnp.array([0, 3, 15, 7])
    out = jax.jit(jax.vmap(topk_mask))(scores, ks)
    chex.assert_shape(out, (4, 3, 5))
    np.testing.assert_array_equal(out.sum(axis=(1, 2)), [0, 3, 15, 7])
    for row, k in zip(range(4), [0, 3, 15, 7]):
        np.testing.assert_array_equal(out[row], topk_mask(scores[row], k))
        kept = np.sort(np.asarray(scores[row]).ravel())[::-1][:k]
        chosen = np.asarray(scores[row])[np.asarray(out[row])]
        np.testing.assert_allclose(np.sort(chosen)[::-1], kept)


def test_maskable_paths():
    params = _params()
    assert maskable_paths(params, r"kernel$") == ("conv1/kernel", "dense/kernel")
    assert maskable_paths(params, r"^conv") == ("conv1/bias", "conv1/kernel")
    with pytest.raises(ValueError, match=r"'nothing'.*\n.*conv1/bias"):
        maskable_paths(params, "nothing")


def test_layer_counts_rounding():
    shapes = {"a": (10,), "b": (5,), "c": (3, 3)}
    assert layer_counts(shapes, 0.3) == {"a": 3, "b": 2, "c": 3}  # 1.5 -> 2, 2.7 -> 3
    assert layer_counts(shapes, 0.5) == {"a": 5, "b": 2, "c": 4}  # ties to even: 2.5 -> 2, 4.5 -> 4
    assert layer_counts(shapes, {"a": 1.5, "b": -0.1, "c": 0.0}) == {"a": 10, "b": 0, "c": 0}
    assert all(type(v) is int for v in layer_counts(shapes, 0.3).values())
    with pytest.raises(KeyError):
        layer_counts(shapes, {"a": 0.1})


def test_random_masks_exact_counts_and_keys():
    shapes = {"l1/kernel": (8, 16), "l2/kernel": (3, 3, 4, 8), "l0/kernel": (50,)}
    masks = random_masks(KEY, shapes, 0.1)
    assert list(masks) == sorted(shapes)
    for p, s in shapes.items():
        chex.assert_shape(masks[p], s)
        chex.assert_type(masks[p], bool)
    expected = {"l0/kernel": 5, "l1/kernel": 13, "l2/kernel": 29}
    assert _nnz(masks) == layer_counts(shapes, 0.1) == expected
    again = random_masks(KEY, shapes, 0.1)
    other = random_masks(jax.random.key(1), shapes, 0.1)
    for p in shapes:
        np.testing.assert_array_equal(masks[p], again[p])
        assert not np.array_equal(masks[p], other[p])
    # Per-tensor keys: changing one layer's density leaves the others' masks alone.
    dens = {"l0/kernel": 0.1, "l1/kernel": 0.5, "l2/kernel": 0.1}
    changed = random_masks(KEY, shapes, dens)
    np.testing.assert_array_equal(changed["l2/kernel"], masks["l2/kernel"])
    assert _nnz(changed)["l1/kernel"] == 64
    # A params tree of the maskable tensors works as well as a shapes dict.
    params = {"l0": {"kernel": jnp.zeros(50)}, "l1": {"kernel": jnp.zeros((8, 16))}}
    from_params = random_masks(KEY, params, 0.1)
    np.testing.assert_array_equal(from_params["l1/kernel"], masks["l1/kernel"])


def test_random_masks_traced_densities_and_counts():
    shapes = {"a": (40,), "b": (7, 9)}
    eager = random_masks(KEY, shapes, 0.25)
    traced = jax.jit(lambda k, d: random_masks(k, shapes, d))(KEY, jnp.float32(0.25))
    for p in shapes:
        np.testing.assert_array_equal(eager[p], traced[p])
    keys = jax.random.split(KEY, 3)
    counts = {"a": jnp.array([0, 5, 40]), "b": jnp.array([63, 1, 20])}
    batched = jax.jit(jax.vmap(lambda k, c: random_masks_from_counts(k, shapes, c)))(keys, counts)
    chex.assert_shape(batched["b"], (3, 7, 9))
    np.testing.assert_array_equal(batched["a"].sum(axis=1), [0, 5, 40])
    np.testing.assert_array_equal(batched["b"].sum(axis=(1, 2)), [63, 1, 20])


def test_apply_masks_nested_and_flat():
    params = _params()
    mask = jnp.arange(24).reshape(2, 3, 4) % 3 == 0
    out = apply_masks(params, {"conv1/kernel": mask})
    assert set(out) == {"conv1", "dense"}
    w = params["conv1"]["kernel"]
    np.testing.assert_array_equal(out["conv1"]["kernel"], np.where(mask, w, 0.0))
    assert int(jnp.count_nonzero(out["conv1"]["kernel"])) == int(mask.sum())
    assert out["conv1"]["bias"] is params["conv1"]["bias"]
    assert out["dense"]["kernel"] is params["dense"]["kernel"]
    chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
    flat = {"conv1/kernel": w, "conv1/bias": params["conv1"]["bias"]}
    flat_out = apply_masks(flat, {"conv1/kernel": mask})
    assert set(flat_out) == set(flat)
    np.testing.assert_array_equal(flat_out["conv1/kernel"], out["conv1"]["kernel"])
    with pytest.raises(KeyError, match="missing/kernel"):
        apply_masks(params, {"missing/kernel": mask})


def test_magnitude_masks_global_vs_layer():
    params = {
        "small": {"kernel": jnp.linspace(-0.1, 0.1, 20).reshape(4, 5)},
        "large": {"kernel": jnp.linspace(-10.0, 10.0, 10)},
        "bias": jnp.ones(3),
    }
    paths = ("large/kernel", "small/kernel")
    glob = magnitude_masks(params, paths, 0.3)  # 9 of 30: all from the large layer
    assert _nnz(glob) == {"large/kernel": 9, "small/kernel": 0}
    layer = magnitude_masks(params, paths, 0.3, scope="layer")
    assert _nnz(layer) == {"large/kernel": 3, "small/kernel": 6}
    small = np.abs(np.asarray(params["small"]["kernel"]))
    keep = np.asarray(layer["small/kernel"])
    assert small[keep].min() >= small[~keep].max()
    glob_many = magnitude_masks(params, paths, 0.5)  # 15 of 30: large layer full, 5 small ones
    assert _nnz(glob_many) == {"large/kernel": 10, "small/kernel": 5}
    traced = jax.jit(lambda prm, d: magnitude_masks(prm, paths, d))(params, jnp.float32(0.5))
    for p in paths:
        np.testing.assert_array_equal(traced[p], glob_many[p])
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(params, paths, 0.3, scope="tensor")


# --------------------------------------------------------------------------------- consensus.py


def test_hamming_and_consensus_on_hand_made_masks():
    server = {"a": jnp.array([1, 1, 0, 0], bool), "b": jnp.array([[1, 0], [0, 0]], bool)}
    clients = {"a": jnp.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], bool),
               "b": jnp.array([[[1, 0], [0, 0]], [[1, 0], [0, 1]], [[0, 0], [0, 0]]], bool)}
    previous = {"a": jnp.array([1, 0, 0, 0], bool), "b": jnp.array([[1, 0], [0, 1]], bool)}
    got = {k: float(v) for k, v in mask_consensus(clients, server, previous).items()}
    assert got["server_mask_change"] == pytest.approx(2 / 8)  # normalised Hamming distance of the server masks
    # client-to-server distances 0, 3/8, 3/8; pairwise: (0,1) 3/8, (0,2) 3/8, (1,2) 4/8
    assert got["mask_hamming_to_server"] == pytest.approx((0 + 3 / 8 + 3 / 8) / 3)
    assert got["mask_hamming_clients"] == pytest.approx((3 / 8 + 3 / 8 + 4 / 8) / 3)
    assert got["union_density"] == pytest.approx(5 / 8)
    # IoU with the server: 1, 2/5 (|{a0,b0}| / |{a0,a1,a2,b0,b3}|), 0 (empty client vs 3 active)
    assert got["mask_iou_to_server"] == pytest.approx((1 + 2 / 5 + 0) / 3)


@pytest.mark.parametrize("method", ["avg", "aggregate"])
def test_next_mask_is_exact_per_tensor_topk_with_formula_counts(method):
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


def test_regrowth_counts_on_hand_made_masks():
    previous = {"a": jnp.array([1, 1, 0, 0, 0], bool)}
    clients = {"a": jnp.array([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0]], bool)}
    server = {"a": jnp.array([1, 1, 1, 0, 0], bool)}
    got = mask_consensus(clients, server, previous, np.array([3, 1]))
    assert got["mask_activated"] == pytest.approx((3 * 1 + 0) / 4)  # entry 2, for the three holders of row 0
    assert got["mask_deactivated"] == pytest.approx((3 * 1 + 0) / 4)  # entry 1
    assert got["server_reactivated"] == 1


# --------------------------------------------------------------------------- sparse_learning.py


def test_sl_init():
    state = sl_init()
    fields = [state.adjust, state.deficit_sum, state.deficit_count]
    chex.assert_type(fields, [jnp.float32, jnp.float32, jnp.int32])
    chex.assert_rank(fields, 0)


def test_removed_counts_and_smallest_magnitudes():
    # (a) r_l = ceil(p * a_l) with every z_l/n_l >= 0.2; (g) the removed ones are the smallest |w|.
    params, masks = _setup(a=(40, 1.0, 0.01), b=(21, 2.0, 0.1), c=(7, 5.0, 1.0))
    new, _ = update(KEY, params, masks, 0.25, 0.0, NO_GROWTH)
    kept = {p: int(m.sum()) - math.ceil(0.25 * int(m.sum())) for p, m in masks.items()}
    assert _nnz(new) == kept == {"a": 30, "b": 15, "c": 5}
    for path, m in masks.items():
        # |w| grows with the index among the active entries, so the highest-index ones survive
        expected = np.asarray(m) & (np.arange(m.size) >= int(m.sum()) - kept[path])
        np.testing.assert_array_equal(new[path], expected)


def test_grown_counts_match_hand_computed_rho():
    # (b) mu = 1, 3, 4 -> rho = 1/8, 3/8, 1/2; p = 0.25 removes 10, 5, 2 -> R = 17.
    params, masks = _setup(a=(40, 1.0), b=(20, 3.0), c=(8, 4.0))
    new, _ = update(KEY, params, masks, 0.25, 0.0, sl_init())
    grown = {"a": math.ceil(17 / 8), "b": math.ceil(17 * 3 / 8), "c": math.ceil(17 / 2)}
    assert grown == {"a": 3, "b": 7, "c": 9}
    assert _nnz(new) == {"a": 30 + 3, "b": 15 + 7, "c": 6 + 9}
    # with A = 7: R + A = 24 -> 3, 9, 12
    state = SLState(jnp.float32(7.0), jnp.float32(0.0), jnp.int32(0))
    new, _ = update(KEY, params, masks, 0.25, 0.0, state)
    assert _nnz(new) == {"a": 30 + 3, "b": 15 + 9, "c": 6 + 12}


AB = {"A": (1000,), "B": (1000,)}


def _ab_params():
    """Layer B has 10x larger weights than layer A."""
    rng = _rng()
    return {"A": jnp.asarray(rng.normal(size=1000), jnp.float32),
            "B": jnp.asarray(10.0 * rng.normal(size=1000), jnp.float32)}


def test_total_count_kept_within_rounding():
    # (c) A = 0 and no cap binding: sum_l ceil(rho_l R) lies in [R, R + L - 1] (each layer's ceil
    # adds less than one entry), so total nnz after = total before + 0 .. L-1; here L = 2.
    params = _ab_params()
    for density, p in [(0.1, 0.25), (0.3, 0.5), (0.05, 0.1)]:
        masks = random_masks(KEY, AB, density)
        before = int(count(masks))
        new, state = update(KEY, apply_masks(params, masks), masks, p, before, sl_init())
        after = int(count(new))
        assert before <= after <= before + 1
        assert float(state.deficit_sum) == before - after


def test_density_moves_toward_larger_magnitudes():
    # (d) layer B has 10x larger weights: it gains density, A loses, the total stays near d.
    params = _ab_params()
    masks = random_masks(KEY, AB, 0.1)
    target = 200.0
    state = sl_init()
    for step in range(5):
        key = jax.random.fold_in(KEY, step)
        masks, state = update(key, apply_masks(params, masks), masks, 0.25, target, state)
    dens = _nnz(masks)
    assert dens["A"] < 100 < dens["B"]
    assert abs(dens["A"] + dens["B"] - target) <= 4


def test_redistribute_even_split_remainder_and_recap():
    grown = _redistribute(jnp.array([10, 1, 1, 1]), jnp.array([2, 100, 100, 100]))
    np.testing.assert_array_equal(grown, [2, 4, 4, 3])  # excess 8 over 3 open layers: 3, 3, 2
    grown = _redistribute(jnp.array([20, 1, 1]), jnp.array([2, 4, 100]))  # b fills, rest to c
    np.testing.assert_array_equal(grown, [2, 4, 16])
    grown = _redistribute(jnp.array([20, 9]), jnp.array([2, 4]))  # nowhere to go: dropped
    np.testing.assert_array_equal(grown, [2, 4])


def test_capping_and_excess_redistribution():
    # (e) + (f). Layer a is nearly full (z/n = 0.05) and has the largest mean |w| (rho = 3/4 > 1/3):
    # its prune rate drops to 0.05 -> ceil(0.05 * 95) = 5 removed; b and c lose ceil(0.5 * a_l).
    params, masks = _setup(a=(95, 6.0), b=(30, 1.0), c=(100, 1.0))
    state = SLState(jnp.float32(1.0), jnp.float32(0.0), jnp.int32(0))
    new, _ = update(KEY, params, masks, 0.5, 0.0, state)
    removed = {"a": 5, "b": 15, "c": 50}
    total = sum(removed.values()) + 1.0  # R + A = 71
    want = {p: math.ceil(rho * total) for p, rho in {"a": 0.75, "b": 0.125, "c": 0.125}.items()}
    assert want == {"a": 54, "b": 9, "c": 9}
    inactive = {p: masks[p].size - (int(masks[p].sum()) - removed[p]) for p in masks}
    cap = {p: math.floor(0.99 * inactive[p]) for p in masks}
    assert cap == {"a": 9, "b": 24, "c": 940}
    # a capped at 9 -> excess 45 split 23/22 over b, c; b re-caps at 24 -> its 8 extra go to c.
    grown = {p: _nnz(new)[p] - (int(masks[p].sum()) - removed[p]) for p in masks}
    assert grown == {"a": 9, "b": 24, "c": 39}
    assert all(grown[p] <= cap[p] for p in masks)
    assert sum(grown.values()) == sum(want.values())


def test_prune_rate_cap_needs_both_conditions():
    # (f) a and b both have z/n = 0.1; mu = 3, 1, 1 -> rho = 0.6, 0.2, 0.2 and 1/L = 1/3, so only a
    # gets p_l = min(p, 0.1).
    params, masks = _setup(a=(90, 3.0), b=(36, 1.0), c=(10, 1.0))
    new, _ = update(KEY, params, masks, 0.5, 0.0, NO_GROWTH)
    assert _nnz(new) == {"a": 90 - 9, "b": 36 - 18, "c": 10 - 5}
    # with p below the zero fraction the cap does not bind
    new, _ = update(KEY, params, masks, 0.05, 0.0, NO_GROWTH)
    assert _nnz(new) == {"a": 90 - 5, "b": 36 - 2, "c": 10 - 1}


def test_grown_entries_are_inactive_and_random():
    # (g) equal mean |w| (1.195) -> rho = 1/3; p = 0.5 removes 20, 10, 20 -> R = 50 -> g = 17 each.
    params, masks = _setup(a=(40, 1.0, 0.01), b=(20, 1.1, 0.01), c=(40, 1.0, 0.01))
    kept = {p: np.asarray(m) & (np.arange(m.size) >= int(m.sum()) // 2) for p, m in masks.items()}
    outs = [update(jax.random.key(s), params, masks, 0.5, 0.0, sl_init())[0] for s in (0, 0, 1)]
    for new in outs:
        assert _nnz(new) == {"a": 20 + 17, "b": 10 + 17, "c": 20 + 17}
        for p in masks:
            assert np.all(np.asarray(new[p])[kept[p]])  # the largest active entries survive
    for p in masks:
        np.testing.assert_array_equal(outs[0][p], outs[1][p])
        assert not np.array_equal(outs[0][p], outs[2][p])
    # grown = new minus kept: drawn among inactive and just-removed entries alike
    grown_c = np.asarray(outs[0]["c"]) & ~kept["c"]
    assert (grown_c & ~np.asarray(masks["c"])).any()


def test_grow_scores_pick_largest_inactive():
    # (h) equal means -> rho = 1/3; p = 0.5 removes 10 each -> R = 30 -> g = 10 per layer, grown at
    # the inactive (after removal) entries with the largest scores.
    params, masks = _setup(a=(20, 1.0, 0.01), b=(20, 1.0, 0.01), c=(20, 1.0, 0.01))
    rng = _rng()
    scores = {p: jnp.asarray(rng.permutation(n), jnp.float32) for p, n in SIZES.items()}
    new, _ = update(KEY, params, masks, 0.5, 0.0, sl_init(), grow_scores=scores)
    for p in masks:
        kept = np.asarray(masks[p]) & (np.arange(SIZES[p]) >= 10)
        s = np.where(kept, -np.inf, np.asarray(scores[p]))
        expected = kept.copy()
        expected[np.argsort(-s, kind="stable")[:10]] = True
        np.testing.assert_array_equal(new[p], expected)


def test_jit_vmap_matches_unbatched_calls():
    # (i) three clients, different p, target counts and states.
    keys = jax.random.split(jax.random.key(11), 3)
    counts = {"a": [10, 30, 60], "b": [5, 20, 39], "c": [50, 100, 10]}  # b: z/n = 1/40 for client 2
    rng = _rng()
    masks = {p: jnp.asarray([rng.permutation(SIZES[p]) < k for k in c]) for p, c in counts.items()}
    params = {p: jnp.asarray(rng.normal(size=(3, n)), jnp.float32) for p, n in SIZES.items()}
    params = jax.vmap(apply_masks)(params, masks)
    p = jnp.array([0.1, 0.3, 0.5])
    target = jnp.array([60.0, 150.0, 100.0])
    state = SLState(
        jnp.array([0.0, 2.0, -3.0]), jnp.array([0.0, 1.0, 4.0]), jnp.array([0, 1, 2], jnp.int32)
    )
    batched, bstate = jax.jit(jax.vmap(update))(keys, params, masks, p, target, state)
    chex.assert_shape([batched[k] for k in SIZES], [(3, n) for n in SIZES.values()])
    chex.assert_shape(list(bstate), [(3,)] * 3)
    for c in range(3):
        new, st = update(*jax.tree.map(lambda x: x[c], (keys, params, masks, p, target, state)))
        for path in SIZES:
            np.testing.assert_array_equal(batched[path][c], new[path])
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[c], bstate), st)
    assert len({int(count(jax.tree.map(lambda x: x[c], batched))) for c in range(3)}) == 3


def test_adjust_update_over_two_calls():
    # (j) A <- 0.25 A + 0.75 deficit + mean(deficits so far), deficit = target - nnz(new masks).
    params, masks = _setup(a=(40, 1.0, 0.01), b=(20, 3.0, 0.01), c=(10, 2.0, 0.01))
    target = 67.0
    m1, s1 = update(jax.random.key(1), params, masks, 0.25, target, sl_init())
    d1 = target - int(count(m1))
    np.testing.assert_allclose(s1.adjust, 0.75 * d1 + d1)
    params = {p: jnp.where(m1[p], params[p] + 0.5, 0.0) for p in params}
    m2, s2 = update(jax.random.key(2), params, m1, 0.2, target, s1)
    d2 = target - int(count(m2))
    assert d1 != d2
    np.testing.assert_allclose(s2.adjust, 0.25 * float(s1.adjust) + 0.75 * d2 + (d1 + d2) / 2)
    assert float(s2.deficit_sum) == d1 + d2 and int(s2.deficit_count) == 2


def test_gradient_growth_picks_the_largest_gradients():
    params = {"w": jnp.array([0.5, 0.4, 0.0, 0.0, 0.0, 0.0])}
    masks = {"w": jnp.array([1, 1, 0, 0, 0, 0], bool)}
    scores = {"w": jnp.array([0.0, 0.0, 1.0, 3.0, 2.0, 0.5])}
    new, _ = mask_update(params, masks, 0.5, 2.0, sl_init(), scores)
    np.testing.assert_array_equal(new["w"], [1, 0, 0, 1, 0, 0])  # prune 0.4, regrow entry 3
