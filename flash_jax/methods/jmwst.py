"""JMWST (FLASH): after stage 1, participants run sparse learning and the server renews its mask with
NEXT_MASK every r_int rounds, keeping it fixed in between."""
from flash_jax.fl.methods import Knob, Method, register_method
from flash_jax.fl.rules import by_update_mode, next_mask_every, sparse_learning_every
from flash_jax.fl.stage1 import sensitivity_stage
from flash_jax.sparse import SUBSAMPLE_METHODS


def _interval(setup) -> int:
    return setup.config.jmwst_update_interval


JMWST = register_method(Method(
    name="jmwst", help="FLASH: stage-1 layer densities, then sparse learning and NEXT_MASK consensus",
    client=sparse_learning_every(_interval),
    server_mask=next_mask_every(_interval, lambda setup: setup.config.subsample_method),
    aggregation=by_update_mode, stage1=sensitivity_stage, hetero=True, group="FLASH",
    knobs=(
        Knob("jmwst_update_interval", 1,
             "JMWST: rounds between server-mask updates r_int (clients keep the mask fixed between)",
             lambda v: v >= 1, ">= 1"),
        Knob("subsample_method", "avg",
             "JMWST's NEXT_MASK budgets: avg (clients' mean layer counts) or aggregate (model support)",
             choices=SUBSAMPLE_METHODS),
    )))
