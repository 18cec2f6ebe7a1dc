"""Dense FedAvg: no mask, every transfer dense (the reference for comm_ratio_vs_dense)."""
from flash_jax.fl.methods import Method, register_method
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FEDAVG, SERVER_NO_MASK

DENSE = register_method(Method(
    name="dense", help="FedAvg of the dense model", client=CLIENT_FIXED_MASK, server_mask=SERVER_NO_MASK,
    aggregation=lambda setup: FEDAVG))
