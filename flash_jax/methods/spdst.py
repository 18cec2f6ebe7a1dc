"""SPDST (FLASH): stage 1 measures the layer densities sparse learning settles at; the stage-2 mask
is drawn at those densities and then fixed."""
from flash_jax.fl.methods import Method, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, SERVER_FIXED_MASK, by_update_mode
from flash_jax.fl.stage1 import sensitivity_stage

SPDST = register_method(Method(
    name="spdst", help="FLASH: stage-1 layer densities, then a fixed mask", client=CLIENT_FIXED_MASK,
    server_mask=SERVER_FIXED_MASK, aggregation=by_update_mode, stage1=sensitivity_stage, hetero=True))
