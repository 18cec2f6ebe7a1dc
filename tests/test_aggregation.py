"""Aggregation on hand-computed cases: FedAvg weighted by examples, summed in parts as chunks sum it,
and the masked average over the clients that hold each entry."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from flash_jax.fl.aggregate import weighted_average, weighted_sums


def fedavg(stacked, weights, client_masks=None):
    """The weighted average of stacked client trees, over the holders of each entry where masks are given."""
    return weighted_average(weighted_sums(stacked, weights, client_masks))


def test_fedavg_hand_computed_and_summed_in_parts():
    stacked = {"w": jnp.array([[1.0, 2.0], [3.0, 6.0]]), "b": jnp.array([0.0, 4.0])}
    out = fedavg(stacked, jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], 3.0)
    equal = fedavg(stacked, jnp.array([5.0, 5.0]))
    np.testing.assert_allclose(equal["w"], [2.0, 4.0])
    # the sums of two chunks (one padded with a weight-0 client) add up to the whole cohort's
    parts = [weighted_sums(jax.tree.map(lambda x: x[i:i + 1], stacked), jnp.array([w])) for i, w in ((0, 1.0), (1, 3.0))]
    padded = weighted_sums({"w": jnp.array([[9.0, 9.0]]), "b": jnp.array([9.0])}, jnp.array([0.0]))
    chex.assert_trees_all_close(weighted_average(jax.tree.map(lambda *s: sum(s), *parts, padded)), out)


def test_masked_average_hand_computed():
    stacked = {"w": jnp.array([[2.0, 0.0, 4.0], [6.0, 3.0, 0.0]]), "b": jnp.array([1.0, 3.0])}
    masks = {"w": jnp.array([[True, False, True], [True, True, False]])}
    equal = fedavg(stacked, jnp.array([5.0, 5.0]), masks)
    np.testing.assert_allclose(equal["w"], [4.0, 3.0, 4.0])  # FMA: (2+6)/2, 3/1, 4/1
    out = fedavg(stacked, jnp.array([1.0, 3.0]), masks)
    np.testing.assert_allclose(out["w"], [5.0, 3.0, 4.0])  # FedDST: (2*1+6*3)/4 over holders
    np.testing.assert_allclose(out["b"], 2.5)  # FedAvg, weighted 1:3
    nobody = fedavg(stacked, jnp.ones(2), {"w": jnp.zeros((2, 3), bool)})
    np.testing.assert_array_equal(nobody["w"], 0.0)
