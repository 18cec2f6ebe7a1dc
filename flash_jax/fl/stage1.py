"""FLASH's stage 1: the sensitivity stage that picks the layer densities of the
first mask, a method's optional step before the rounds."""
from __future__ import annotations

from typing import Any

import jax

from flash_jax.comm import VALUE_BITS
from flash_jax.fl.accounting import model_transfer_bits, with_stage_bits
from flash_jax.fl.client import RoundInputs
from flash_jax.fl.cohort import Participants, ServerModel, train_clients
from flash_jax.fl.hetero import level_masks_of
from flash_jax.fl.local_rules import sparse_learning
from flash_jax.fl.rules import LocalMode
from flash_jax.fl.setup import Setup
from flash_jax.fl.state import Model, RoundState
from flash_jax.models import init_variables
from flash_jax.sparse import (apply_masks, client_layer_densities, client_mask_counts, random_masks,
                              sensitivity_densities)
from flash_jax.streams import REINIT, SENSITIVITY, STAGE2_MASK, key, sample_clients


def sensitivity_stage(setup: Setup, state: RoundState) -> tuple[RoundState, dict[str, Any]]:
    """K_d clients run sparse learning for init_epoch epochs from the shared init and mask; only
    their per-layer densities reach the server, which rescales them to d, draws the stage-2 mask
    with those layer densities and re-initialises the model."""
    config, tensors = setup.config, setup.tensors
    ids = sample_clients(config.seed, SENSITIVITY, 0, config.num_users, config.stage1_clients)
    result, _ = train_clients(
        setup, setup.spec.for_round(LocalMode(mask_rule=sparse_learning(config))), Participants(ids),
        ServerModel(state.model.params, state.model.batch_stats, state.server.top),
        RoundInputs(config.lr_start, 0.0, key(config.seed, SENSITIVITY)), config.init_epoch)
    client_masks = result.client_masks()
    reported = client_layer_densities(client_masks)
    counts = jax.device_get(client_mask_counts(client_masks))
    uploads = {p: [int(c) / tensors.sizes[p] for c in counts[p]] for p in tensors.paths}
    densities = sensitivity_densities(reported, tensors.sizes, config.density)
    masks = random_masks(key(config.seed, STAGE2_MASK), tensors.shapes, densities)
    variables = init_variables(setup.model, key(config.seed, REINIT), setup.data.input_shape)
    # K_d downloads of the seeded initial model, one scalar per layer per client up; the stage-2
    # mask is again drawn from the shared seed (plus the broadcast layer densities)
    download = model_transfer_bits(tensors, state.model.params, mask_known=True)
    stage_bits = len(ids) * (download + VALUE_BITS * len(tensors.sizes))
    params = apply_masks(variables["params"], masks)
    new_state = with_stage_bits(state.replace(model=Model(params, variables.get("batch_stats", {})),
                                              server=state.server.replace(levels=level_masks_of(setup, params, masks))),
                                stage_bits)
    return new_state, {"clients": ids.tolist(), "client_layer_density": uploads, "reported_layer_density": reported,
                       "layer_density": densities}
