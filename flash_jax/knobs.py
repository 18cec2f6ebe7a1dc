"""A method's own settings (knobs), and the table of those declared so far: what Config accepts
besides its fields, and their defaults. The method registry (fl/methods.py) declares a method's
knobs when it registers the method."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Knob:
    """A setting of its own that a method adds to Config and the command line (--name)."""

    name: str
    default: Any  # its type is the flag's type
    help: str
    valid: Callable[[Any], bool] | None = None  # None: any value of the type
    valid_text: str = ""  # the range, for the error message ("in [0, 1)")
    choices: tuple = ()
    per_tensor: bool = False  # a comma-separated list with one entry per maskable tensor (empty: none given)


_DECLARED: dict[str, Knob] = {}


def declare(knobs: Iterable[Knob]) -> None:
    """Add knobs to the table; refuses a name already taken (nothing is added then)."""
    knobs = tuple(knobs)
    for knob in knobs:
        if knob.name in _DECLARED:
            raise ValueError(f"knob --{knob.name} is already defined; give yours another name")
        if (knob.choices and knob.default not in knob.choices) or (knob.valid and not knob.valid(knob.default)):
            valid = f"one of {', '.join(map(str, knob.choices))}" if knob.choices else knob.valid_text or "its check"
            raise ValueError(f"knob --{knob.name}: its default {knob.default!r} fails its own check ({valid}); fix "
                             "the default or the check")
    _DECLARED.update((knob.name, knob) for knob in knobs)


def declared() -> dict[str, Knob]:
    """Every declared knob by name, in the order declared."""
    return dict(_DECLARED)
