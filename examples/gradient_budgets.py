"""A method with a client side of its own, written outside the package: clients report a per-tensor
statistic of their gradients, and the server moves the layer budgets by it. flash_jax does not
ship it.

Clients train inside the server's mask. Every --gb_every rounds (from round 1) each participant
also uploads one number per maskable tensor: the mean squared dense gradient of that tensor over
its local steps (a gradient report: the client side). The server averages the reports and sets
each tensor's density in proportion to the square root of its value, rescaled so the mask keeps
d * N_m weights (at most all of a tensor); each tensor then keeps its largest-magnitude weights at
its new count, and a tensor that grows adds weights drawn at random from the server's key (the
server side). The report's 32 bits per value are counted in the round's upload.

    PYTHONPATH=. python examples/gradient_budgets.py
"""
import dataclasses

import jax
import jax.numpy as jnp
from flax import traverse_util

import flash_jax
from flash_jax.fl.rules import CLIENT_FIXED_MASK, FEDAVG, LocalMode, ServerMaskRule, ServerUpdate
from flash_jax.sparse import magnitude_masks, random_masks, sensitivity_densities


@dataclasses.dataclass(frozen=True)
class MeanSquaredGradient:
    """The client side: each maskable tensor's mean squared dense gradient over the client's steps."""

    by_samples = True  # averaged like the models, by the clients' sample counts

    @staticmethod
    def init(params, paths):
        return {"sums": {p: jnp.zeros(()) for p in paths}, "steps": jnp.zeros(())}

    @staticmethod
    def accumulate(acc, grads):
        flat = traverse_util.flatten_dict(grads, sep="/")
        return {"sums": {p: s + jnp.mean(jnp.square(flat[p])) for p, s in acc["sums"].items()},
                "steps": acc["steps"] + 1}

    @staticmethod
    def finalize(acc):
        return {p: s / jnp.maximum(acc["steps"], 1) for p, s in acc["sums"].items()}

    @staticmethod
    def upload_values(tensors) -> int:
        return len(tensors.paths)


MEAN_SQUARED_GRADIENT = MeanSquaredGradient()


def report_on_schedule(setup, t: int) -> LocalMode:
    return LocalMode(report=MEAN_SQUARED_GRADIENT if (t - 1) % setup.config.gb_every == 0 else None)


def random_at_d(setup, key, params):
    return random_masks(key, setup.tensors.shapes, setup.config.density)


def move_budgets(setup, outcome) -> ServerUpdate:
    """The server side: layer densities from the averaged report, the mask redrawn to them."""
    if outcome.mode.report is None:
        return ServerUpdate()
    report = traverse_util.flatten_dict(outcome.reports, sep="/")
    importance = {p: float(jnp.sqrt(report[p])) for p in setup.tensors.paths}
    if sum(importance.values()) == 0.0:
        return ServerUpdate()
    densities = sensitivity_densities(importance, setup.tensors.sizes, setup.config.density)
    return ServerUpdate(mask=_keep_largest(outcome.maskable, outcome.key, densities))


@jax.jit
def _keep_largest(maskable, key, densities):
    """Per tensor, its largest-magnitude weights at its density; zeros rank below every non-zero
    weight, in random order."""
    keys = dict(zip(sorted(maskable), jax.random.split(key, len(maskable))))
    scores = {p: jnp.where(w != 0, 1.0 + jnp.abs(w), jax.random.uniform(keys[p], w.shape))
              for p, w in maskable.items()}
    return magnitude_masks(scores, sorted(scores), densities, scope="layer")


flash_jax.register_method(flash_jax.Method(
    name="gradient_budgets", help="layer budgets moved by the clients' reported per-tensor mean squared gradient",
    client=CLIENT_FIXED_MASK._replace(local=report_on_schedule),
    server_mask=ServerMaskRule(init=random_at_d, update=move_budgets), aggregation=lambda setup: FEDAVG,
    knobs=(flash_jax.Knob("gb_every", 5, "rounds between the clients' gradient reports (from round 1)",
                          lambda v: v >= 1, ">= 1"),)))

if __name__ == "__main__":
    history = flash_jax.run(flash_jax.Config(experiment_type="gradient_budgets", dataset="digits", density=0.2,
                                             fl_rounds=60, eval_every=20, quiet=True))
    final = history[-1]
    densities = ", ".join(f"{p} {d:.3f}" for p, d in final["layer_density"].items())
    print(f"gradient_budgets on digits: round {final['round']} accuracy {final['accuracy']:.4f} "
          f"density {final['density']:.4f} ({densities})")
