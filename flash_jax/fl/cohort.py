"""A whole cohort's local training and its aggregation as one jitted function."""
from __future__ import annotations

import functools

import jax

from flash_jax.fl.aggregate import fedavg, masked_average
from flash_jax.fl.client import ClientSpec, local_train


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def train_cohort(spec: ClientSpec, phase_lengths: tuple[int, ...], per_client_masks: bool, fma: bool, store_x, store_y,
                 params, batch_stats, masks, lr, readjust_ratio, keys, example_index, example_valid, step_valid,
                 target_counts, weights):
    """vmap(local_train) over the cohort, then FedAvg (or FMA, `fma`) of parameters and FedAvg of
    BatchNorm statistics.

    Server params are shared (broadcast); masks are either shared or one per client
    (`per_client_masks`). Returns the aggregated params and statistics, the clients' final masks
    (when they can change) and their mean training losses.
    """
    def one_client(masks, key, index, valid, step_ok, target):
        return local_train(spec, phase_lengths, store_x, store_y, params, batch_stats, masks, lr, readjust_ratio,
                           key, index, valid, step_ok, target)

    mask_axis = 0 if per_client_masks else None
    client_params, client_stats, client_masks, losses = jax.vmap(one_client, in_axes=(mask_axis, 0, 0, 0, 0, 0))(
        masks, keys, example_index, example_valid, step_valid, target_counts)
    aggregate = masked_average(client_params, client_masks, weights) if fma else fedavg(client_params, weights)
    return (aggregate, fedavg(client_stats, weights),
            client_masks if spec.changes_masks else None, losses)
