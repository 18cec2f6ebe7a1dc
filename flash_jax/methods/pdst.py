"""PDST: a random mask at d drawn from the shared seed, fixed for the whole run."""
from flash_jax.fl.methods import Method, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, SERVER_FIXED_MASK, by_update_mode

PDST = register_method(Method(
    name="pdst", help="a random fixed mask at d (uniform layer densities)", client=CLIENT_FIXED_MASK,
    server_mask=SERVER_FIXED_MASK, aggregation=by_update_mode))
