"""Dense FedAvg: no mask, every transfer dense (the reference for comm_ratio_vs_dense)."""
from flash_jax.fl.methods import Method, register_method
from flash_jax.fl.rules import FEDAVG, FIXED_MASK, NO_MASK

DENSE = register_method(Method(
    name="dense", help="FedAvg of the dense model", client=FIXED_MASK, server_mask=NO_MASK,
    aggregation=lambda setup: FEDAVG))
