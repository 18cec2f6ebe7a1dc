"""Client training: local training alone and padded, the vmapped cohort against its clients one by one,
cohort plans and chunks, the learning-rate schedule, client sampling, and gradient clipping."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flash_jax.config import Config
from flash_jax.data.store import build_store, cohort_layout, cohort_plan, padded_count
from flash_jax.fl.aggregate import FEDAVG, FMA, weighted_average, weighted_sums
from flash_jax.fl.client import ClientSchedule, ClientSpec, ClientStart, RoundInputs, clip_trained_gradient, local_train
from flash_jax.fl.cohort import ChunkPlan, ServerModel, chunk_size, train_chunk, train_cohort
from flash_jax.fl.local_rules import SparseLearning
from flash_jax.fl.phases import MASK_UPDATE_PHASES
from flash_jax.fl.rules import global_cut
from flash_jax.fl.setup import learning_rate_schedule
from flash_jax.streams import SHUFFLE, derive, sample_clients
from flash_jax.sparse import random_masks


class TinyNet(nn.Module):
    """Small conv + dense net: fast to compile, still exercises masks on a conv and a dense kernel."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool, example_mask=None):
        x = nn.relu(nn.Conv(4, (3, 3), padding="VALID", name="conv")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16, name="hidden")(x))
        return nn.Dense(self.num_classes, name="out")(x)


class LinearNet(nn.Module):
    """Softmax regression: the cheapest model to compile."""

    @nn.compact
    def __call__(self, x, train: bool, example_mask=None):
        return nn.Dense(3, name="out")(x.reshape(x.shape[0], -1))


def make_problem(counts, batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    total = sum(counts)
    x = rng.normal(size=(total, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=total)
    bounds = np.cumsum([0] + list(counts))
    store = build_store(x, y, [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
    model = TinyNet()
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 6, 6, 1)), train=False)["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    masks = random_masks(jax.random.PRNGKey(2), {p: flat[p] for p in ("conv/kernel", "hidden/kernel")}, 0.5)
    return store, model, params, masks


def spec_for(model, sparse_learning):
    return ClientSpec(apply_fn=model.apply, has_batch_stats=False, augment=False,
                      mask_rule=SparseLearning(prune_rate=0.25) if sparse_learning else None)


def plan_for(store, ids, shuffle_keys, batch_size=4, epochs=1):
    ids = np.asarray(ids)
    layout = cohort_layout(store, ids, batch_size=batch_size, epochs=epochs, phases=MASK_UPDATE_PHASES)
    return layout, cohort_plan(layout, shuffle_keys, jnp.asarray(store.offsets[ids]), jnp.asarray(store.counts[ids]))


def train_alone(spec, store, ids, params, masks, keys, target, batch_size=4, epochs=1, shuffle_keys=None):
    """Each client on its own (jitted local_train); keys double as shuffle keys unless given."""
    layout, plan = plan_for(store, ids, keys if shuffle_keys is None else shuffle_keys, batch_size, epochs)
    fn = jax.jit(local_train, static_argnums=(0, 1))
    outs = []
    for k in range(len(ids)):
        outs.append(fn(spec, layout.phase_lengths, schedule_of(store, plan, k), ClientStart(params, {}, masks, keys[k], target),
                       RoundInputs(0.1, 0.0, None)))
    return plan, outs


def schedule_of(store, plan, k):
    """Client k's part of a cohort plan, on the store."""
    return ClientSchedule(store.x, store.y, plan.example_index[k], plan.example_valid[k], plan.step_valid[k])


def cohort_keys(round_key, ids):
    """The keys train_chunk derives: client key fold_in(round_key, id), its shuffle stream."""
    keys = jnp.stack([derive(round_key, c) for c in ids])
    return keys, jax.vmap(lambda k: derive(k, SHUFFLE))(keys)


def run_cohort(spec, store, ids, params, masks, round_key, chunk, *, target, batch_stats=None, mask_index=None,
               fma=False, batch_size=4):
    ids = np.asarray(ids)
    clients = {"ids": ids, "offsets": store.offsets[ids], "counts": store.counts[ids],
               "targets": np.full(len(ids), target, np.float32)}
    if mask_index is not None:
        clients["mask_index"] = np.asarray(mask_index)
    layout = cohort_layout(store, ids, batch_size=batch_size, epochs=1, phases=MASK_UPDATE_PHASES)
    plan = ChunkPlan(spec, layout, FMA if fma else FEDAVG, None)
    model = ServerModel(params, {} if batch_stats is None else batch_stats, masks)
    result = train_cohort(plan, chunk, store, model, RoundInputs(0.1, 0.0, round_key), clients)
    return result.params, result.batch_stats, result.client_masks(), result.losses


@pytest.mark.parametrize("epochs", [1, 2])
def test_padded_client_matches_training_alone(epochs):
    store, model, params, masks = make_problem([12, 40])  # 3 and 10 steps of batch 4
    spec = spec_for(model, sparse_learning=True)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    target = jnp.float32(0.5 * sum(m.size for m in masks.values()))
    alone_plan, (alone,) = train_alone(spec, store, [0], params, masks, keys[:1], target, epochs=epochs)
    padded_plan, (padded, _) = train_alone(spec, store, [0, 1], params, masks, keys, target, epochs=epochs)
    assert int(alone_plan.step_valid.sum()) == 3 * epochs
    assert padded_plan.example_index.shape[1] == 10 * epochs
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(padded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("epochs", [1, 2])
def test_without_a_mask_rule_every_weight_trains_until_the_finishing_step(epochs):
    """Dense local training with a finishing step (Top-k, SparsyFed): no mask change between
    phases, so no weight is zeroed before the finishing step, which alone decides the masks."""
    store, model, params, masks = make_problem([40])
    every = {p: jnp.ones_like(m) for p, m in masks.items()}
    target = jnp.float32(0.05 * sum(m.size for m in masks.values()))
    cut_to_half, results = global_cut(0.5), {}
    for finish in (None, cut_to_half):
        spec = ClientSpec(apply_fn=model.apply, has_batch_stats=False, augment=False, finish=finish)
        _, ((trained, _, final_masks, _, _),) = train_alone(spec, store, [0], params, every,
                                                           jax.random.split(jax.random.PRNGKey(4), 1), target,
                                                           epochs=epochs)
        results[finish] = traverse_util.flatten_dict(trained, sep="/"), final_masks
    (dense, kept), (cut, cut_masks) = results[None], results[cut_to_half]
    expected = cut_to_half({p: dense[p] for p in masks})  # the finishing step on the densely trained weights
    for p in masks:
        assert bool(jnp.all(kept[p])) and int(jnp.sum(dense[p] == 0)) == 0, p  # trained densely throughout
        np.testing.assert_array_equal(cut_masks[p], expected[p])  # decided at the end
        np.testing.assert_array_equal(cut[p], jnp.where(cut_masks[p], dense[p], 0.0))


def test_mask_update_changes_masks_and_keeps_params_on_mask():
    store, model, params, masks = make_problem([40])
    spec = spec_for(model, sparse_learning=True)
    keys = jax.random.split(jax.random.PRNGKey(4), 1)
    target = jnp.float32(0.5 * sum(m.size for m in masks.values()))
    _, ((new_params, _, new_masks, loss, _),) = train_alone(spec, store, [0], params, masks, keys, target)
    assert any(bool(jnp.any(new_masks[p] != masks[p])) for p in masks)
    flat = traverse_util.flatten_dict(new_params, sep="/")
    for p, m in new_masks.items():
        assert bool(jnp.all(jnp.where(m, True, flat[p] == 0)))
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("sparse_learning", [False, True])
def test_vmapped_cohort_equals_sequential_clients(sparse_learning):
    counts = [12, 20, 16]
    store, model, params, masks = make_problem(counts)
    spec = spec_for(model, sparse_learning)
    ids = [2, 0, 1]
    round_key = jax.random.PRNGKey(5)
    keys, shuffle_keys = cohort_keys(round_key, ids)
    target = float(0.5 * sum(m.size for m in masks.values()))
    plan, outs = train_alone(spec, store, ids, params, masks, keys, jnp.float32(target), shuffle_keys=shuffle_keys)
    weights = jnp.asarray(store.counts[ids], jnp.float32)
    per_client = jax.tree.map(lambda m: m[None], masks)  # a stack of one, every client's row 0
    agg, _, client_masks, losses = run_cohort(spec, store, ids, params, per_client, round_key, 3, target=target,
                                              mask_index=[0, 0, 0])
    expected = weighted_average(weighted_sums(jax.tree.map(lambda *xs: jnp.stack(xs), *[o[0] for o in outs]),
                                              weights))
    chex.assert_trees_all_close(agg, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(losses, jnp.stack([o[3] for o in outs]), rtol=1e-5)
    if sparse_learning:
        for k in range(3):
            chex.assert_trees_all_equal(jax.tree.map(lambda m: m[k], client_masks), outs[k][2])
    else:
        assert client_masks is None


def test_cohort_plan_shapes_and_shuffle():
    store, *_ = make_problem([10, 7])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    layout, plan = plan_for(store, [0, 1], keys)
    chex.assert_shape(plan.example_index, (2, 3, 4))
    assert layout.phase_lengths == (2, 1)
    # client 0 sees each of its 10 examples exactly once; client 1 its 7
    for k, (lo, n) in enumerate([(0, 10), (10, 7)]):
        seen = np.asarray(plan.example_index[k])[np.asarray(plan.example_valid[k])]
        assert sorted(seen.tolist()) == list(range(lo, lo + n))
    _, again = plan_for(store, [0, 1], keys)
    np.testing.assert_array_equal(plan.example_index, again.example_index)
    # a client's plan does not depend on its cohort-mates beyond padding
    _, alone = plan_for(store, [1], keys[1:])
    valid = np.asarray(alone.example_valid[0])
    np.testing.assert_array_equal(np.asarray(alone.example_index[0])[valid],
                                  np.asarray(plan.example_index[1])[np.asarray(plan.example_valid[1])])


def test_chunk_size_is_a_multiple_of_the_devices():
    assert chunk_size(0, 10, 1) == 10 and chunk_size(4, 10, 1) == 4 and chunk_size(50, 10, 1) == 10
    assert chunk_size(0, 10, 8) == 16 and chunk_size(3, 10, 8) == 8 and chunk_size(12, 100, 8) == 16


def test_padded_count_grid():
    grid = [padded_count(c, 10_000) for c in (1, 2, 3, 4, 5, 6, 7, 9, 13, 17, 25, 33, 600)]
    assert grid == [1, 2, 3, 4, 6, 6, 8, 12, 16, 24, 32, 48, 768]
    assert padded_count(600, 600) == 600 and padded_count(520, 600) == 600  # the store's largest caps it


def test_unequal_clients_compile_few_cohort_shapes():
    """Clients of 2..40 examples: a round's padded shape is one of a few buckets, not its largest
    client, so 30 rounds compile a couple of shapes."""
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 41, 60)
    store = build_store(rng.normal(size=(counts.sum(), 6, 6, 1)).astype(np.float32), rng.integers(0, 3, counts.sum()),
                        np.split(np.arange(counts.sum()), np.cumsum(counts)[:-1]))
    model = LinearNet()
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 6, 6, 1)), train=False)["params"]
    spec = spec_for(model, sparse_learning=False)
    before = train_chunk._cache_size()
    largest, layouts = set(), set()
    for r in range(30):
        ids = sample_clients(0, 0, r, len(counts), 6)
        largest.add(int(counts[ids].max()))
        layouts.add(cohort_layout(store, ids, batch_size=4, epochs=1, phases=MASK_UPDATE_PHASES))
        run_cohort(spec, store, ids, params, {}, jax.random.PRNGKey(r), 6, target=0.0)
    assert len(largest) >= 8 and len(layouts) <= 3
    assert train_chunk._cache_size() - before == len(layouts)


def test_learning_rate_schedules():
    run_lr = learning_rate_schedule(Config(fl_rounds=5, lr_start=0.1, lr_end=0.001))
    np.testing.assert_allclose([run_lr(0), run_lr(4)], [0.1, 0.001], rtol=1e-6)
    np.testing.assert_allclose(run_lr(2), 0.01, rtol=1e-5)
    authors = learning_rate_schedule(Config(fl_rounds=600, lr_schedule="authors"))
    np.testing.assert_allclose([authors(0), authors(1)], [0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(authors(600), 0.1 * np.exp(599 / 1000 * np.log(0.01)), rtol=1e-5)


def test_sample_clients_is_pure_function_of_seed_and_round():
    a = sample_clients(1, 2, 7, 100, 10)
    np.testing.assert_array_equal(a, sample_clients(1, 2, 7, 100, 10))
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100
    assert not np.array_equal(a, sample_clients(1, 2, 8, 100, 10))
    assert not np.array_equal(a, sample_clients(2, 2, 7, 100, 10))
    assert not np.array_equal(a, sample_clients(1, 3, 7, 100, 10))


class TinyBNNet(nn.Module):
    """Conv + BatchNorm: exercises batch statistics through local training and FedAvg."""

    @nn.compact
    def __call__(self, x, train: bool, example_mask=None):
        x = nn.Conv(4, (3, 3), padding="VALID", use_bias=False, name="conv")(x)
        mask = None if example_mask is None else example_mask.reshape(-1, 1, 1, 1).astype(bool)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x, mask=mask)
        return nn.Dense(3, name="out")(nn.relu(x).mean(axis=(1, 2)))


def test_cohort_averages_batch_norm_statistics_and_augments():
    """A shared fixed mask (PDST), FedAvg of params and BatchNorm statistics, in one call or in chunks."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(28, 8, 8, 3)).astype(np.float32)
    store = build_store(x, rng.integers(0, 3, 28), [np.arange(0, 12), np.arange(12, 28)])
    model = TinyBNNet()
    variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 3)), train=False)
    spec = ClientSpec(apply_fn=model.apply, has_batch_stats=True, augment=True)
    masks = random_masks(jax.random.PRNGKey(2), {"conv/kernel": variables["params"]["conv"]["kernel"]}, 0.5)
    round_key = jax.random.PRNGKey(3)
    keys, shuffle_keys = cohort_keys(round_key, [0, 1])
    layout, plan = plan_for(store, [0, 1], shuffle_keys, batch_size=8)
    fn = jax.jit(local_train, static_argnums=(0, 1))
    outs = [fn(spec, layout.phase_lengths, schedule_of(store, plan, k),
               ClientStart(variables["params"], variables["batch_stats"], masks, keys[k], 0.0), RoundInputs(0.1, 0.0, None))
            for k in range(2)]
    expected = jax.tree.map(lambda a, b: (12 * a + 16 * b) / 28, outs[0][:2], outs[1][:2])
    for chunk in (2, 1):  # one call, and two chunks of one client whose sums add up
        params, stats, client_masks, _ = run_cohort(spec, store, [0, 1], variables["params"], masks, round_key, chunk,
                                                    target=0.0, batch_stats=variables["batch_stats"], batch_size=8)
        chex.assert_trees_all_close((params, stats), expected, rtol=1e-5, atol=1e-6)
        assert client_masks is None
    assert not np.allclose(stats["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])
    # augmentation is keyed per client and step: the same key gives the same result, another key another
    def train_client_0(key):
        return fn(spec, layout.phase_lengths, schedule_of(store, plan, 0),
                  ClientStart(variables["params"], variables["batch_stats"], masks, key, 0.0),
                  RoundInputs(0.1, 0.0, None))
    chex.assert_trees_all_equal(train_client_0(keys[0])[0], outs[0][0])
    assert not np.allclose(train_client_0(jax.random.PRNGKey(99))[0]["conv"]["kernel"], outs[0][0]["conv"]["kernel"])


def test_clipping_scales_the_trained_part_of_the_gradient_to_the_bound():
    rng = np.random.default_rng(0)
    grads = {"a": {"kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)},
             "b": {"bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}}
    masks = {"a/kernel": jnp.asarray(rng.random((4, 5)) < 0.3)}
    trained = lambda g: jnp.sqrt(jnp.sum(jnp.where(masks["a/kernel"], g["a"]["kernel"], 0) ** 2)
                                 + jnp.sum(g["b"]["bias"] ** 2))
    clipped = clip_trained_gradient(grads, masks, 0.5)
    assert float(trained(clipped)) == pytest.approx(0.5, rel=1e-5)
    scale = float(trained(clipped) / trained(grads))
    jax.tree.map(lambda c, g: np.testing.assert_allclose(c, scale * g, rtol=1e-6), clipped, grads)
    unchanged = clip_trained_gradient(grads, masks, 1e3)  # under the bound: the gradient as it was
    jax.tree.map(np.testing.assert_array_equal, unchanged, grads)
