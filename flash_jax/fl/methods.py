"""The method registry: a method is a small record of rules (fl/rules.py), its knobs and help text.

The command line's --experiment_type choices, its method flags and their --help, and the validation
of those flags (flash_jax/settings.py) all read this registry; `register_method` adds one from
outside the package. The built-in methods (flash_jax/methods/) register themselves when the package
is imported.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flash_jax.config import Config
from flash_jax.fl.rules import SERVER_NO_MASK, Aggregation, ClientRule, Reparameterization, ServerMaskRule
from flash_jax.knobs import Knob, declare, declared


@dataclasses.dataclass(frozen=True)
class Method:
    """How a sparse federated method differs from another: each part is a rule (fl/rules.py).

    `stage1` runs once before the rounds, from the initial state to the first round's state (and a
    record for the workdir's `stage1_record` file). `hetero`: the method accepts --hetero_client budgets.
    """

    name: str
    help: str
    client: ClientRule
    server_mask: ServerMaskRule
    aggregation: Callable[[Any], Aggregation]  # (setup) -> the aggregation
    stage1: Callable | None = None
    stage1_record: str = "sensitivity.json"  # the workdir file stage 1's record goes to
    knobs: tuple[Knob, ...] = ()
    hetero: bool = False
    # (setup) -> None, or how the maskable weights are stored vs computed with
    reparameterization: Callable[[Any], Reparameterization | None] = lambda setup: None
    group: str = ""  # --help group of its knobs (default: the name)

    @property
    def sparse(self) -> bool:
        return self.server_mask is not SERVER_NO_MASK

    @property
    def report_pruned(self) -> bool:
        """A global model whose mask is its own support (the union of the clients') is also
        evaluated cut back to d, for comparisons at the same density."""
        return not self.server_mask.masks_model


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make `method` runnable as --experiment_type NAME; refuses a taken name or knob."""
    if method.name in _METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered; give yours another name")
    settings = {field.name for field in dataclasses.fields(Config)}
    for knob in method.knobs:
        if knob.name in settings:
            raise ValueError(f"method {method.name!r}: knob --{knob.name} has the name of a setting every run has; "
                             f"rename the knob (e.g. {method.name}_{knob.name})")
    try:
        declare(method.knobs)
    except ValueError as err:
        raise ValueError(f"method {method.name!r}: {err}") from None
    _METHODS[method.name] = method
    return method


def methods() -> dict[str, Method]:
    """Every registered method by name, the built-in ones first."""
    return dict(_METHODS)


def get_method(name: str) -> Method:
    registered = methods()
    if name not in registered:
        raise KeyError(f"unknown --experiment_type {name!r}; one of {', '.join(registered)}")
    return registered[name]


def knobs() -> dict[str, Knob]:
    """Every registered method's knobs by name."""
    return declared()
