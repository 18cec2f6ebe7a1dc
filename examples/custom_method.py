"""A sparse federated method written outside the package: FedAvg with gradual magnitude pruning of
the aggregate (server-side GMP, after Zhu & Gupta's cubic schedule), which flash_jax does not ship.

The server starts dense. After each round it keeps the largest-magnitude weights of the aggregate,
ranked across all maskable tensors, at a density that falls from 1 to --density over the first
--gmp_prune_fraction of the rounds; clients train inside the mask they receive. The method is one
record of rules plus its own knob: the command line, validation, checkpoints, communication and
consensus metrics come with the registration.

    PYTHONPATH=. python examples/custom_method.py
"""
import jax
import jax.numpy as jnp

import flash_jax
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FEDAVG, ServerMaskRule, ServerUpdate
from flash_jax.sparse import magnitude_masks


def gmp_density(config, t: int) -> float:
    """Cubic decay from 1 to d, reached after round gmp_prune_fraction * fl_rounds (rounds count from 1)."""
    end = max(1, round(config.gmp_prune_fraction * config.fl_rounds))
    left = max(0.0, 1.0 - t / end)
    return config.density + (1.0 - config.density) * left**3


def start_dense(setup, key, params):
    return {path: jnp.ones(shape, bool) for path, shape in setup.tensors.shapes.items()}


def prune_aggregate(setup, outcome):
    return ServerUpdate(mask=_global_magnitude(outcome.maskable, gmp_density(setup.config, outcome.round)))


@jax.jit
def _global_magnitude(maskable, density):
    return magnitude_masks(maskable, sorted(maskable), density, scope="global")


flash_jax.register_method(flash_jax.Method(
    name="fedavg_gmp", help="FedAvg, the aggregate magnitude-pruned along a cubic schedule from 1 to d",
    client=CLIENT_FIXED_MASK, server_mask=ServerMaskRule(init=start_dense, update=prune_aggregate),
    aggregation=lambda setup: FEDAVG,
    knobs=(flash_jax.Knob("gmp_prune_fraction", 0.5, "share of the rounds over which the density falls to d",
                          lambda v: 0.0 < v <= 1.0, "in (0, 1]"),)))

if __name__ == "__main__":
    history = flash_jax.run(flash_jax.Config(experiment_type="fedavg_gmp", dataset="digits", fl_rounds=60,
                                             eval_every=20, quiet=True))
    final = history[-1]
    print(f"fedavg_gmp on digits: round {final['round']} accuracy {final['accuracy']:.4f} "
          f"density {final['density']:.4f} comm_ratio_vs_dense {final['comm_ratio_vs_dense']:.3f}")
