"""Top-k, SparsyFed's baseline: clients train every weight with weight decay, then
keep their K_d largest |weights| across all maskable tensors; FedAvg; the global model is the union
of the clients' supports, reported as is and pruned back to d."""
from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.fl.rules import FEDAVG, SERVER_DENSE_START_SUPPORT, train_dense_then_cut

TOPK = register_method(Method(
    name="topk", help="Top-k: dense local training, then a global magnitude cut to d; FedAvg of the cuts",
    client=train_dense_then_cut(lambda setup: setup.config.topk_weight_decay),
    server_mask=SERVER_DENSE_START_SUPPORT, aggregation=lambda setup: FEDAVG, group="Top-k",
    knobs=(Knob("topk_weight_decay", 1e-3, "Top-k: client weight decay", lambda v: v >= 0.0, ">= 0"),)))
