"""PDST: a random mask at d drawn from the shared seed, fixed for the whole run (ALGORITHMS.md §3)."""
from flash_jax.fl.methods import Method, register_method
from flash_jax.fl.rules import FIXED_MASK, KEEP_MASK, by_update_mode

PDST = register_method(Method(
    name="pdst", help="a random fixed mask at d (uniform layer densities)", client=FIXED_MASK,
    server_mask=KEEP_MASK, aggregation=by_update_mode))
