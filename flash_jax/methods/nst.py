"""NST: every client keeps a mask of its own and moves it by sparse learning; the server averages
and its model is the union of the masks, also reported pruned back to d."""
from flash_jax.fl.methods import Method, register_method
from flash_jax.fl.rules import CLIENT_PRIVATE_SPARSE_LEARNING, SERVER_MODEL_SUPPORT, by_update_mode

NST = register_method(Method(
    name="nst", help="clients' own sparse-learned masks (no consensus)", client=CLIENT_PRIVATE_SPARSE_LEARNING,
    server_mask=SERVER_MODEL_SUPPORT, aggregation=by_update_mode))
