"""Each field of a config checked against its annotation: one clear line per wrong value (the field,
what it got, what it takes, and the fix), and integers normalised to plain ints."""

from __future__ import annotations

import dataclasses
import math
import operator
import typing


def _allowed(hint) -> tuple[type, ...]:
    """The plain types a field annotation allows: ``float | None`` -> (float, NoneType)."""
    args = typing.get_args(hint)
    return tuple(a for a in args) if args else (hint,)


def _is_integer(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
        return True
    except TypeError:
        return False


def check_types(cfg) -> None:
    """One clear line per wrong value: the field, what it got, what it takes, and the fix."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, allowed = getattr(cfg, f.name), _allowed(hints[f.name])
        kinds = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
        if value is None:
            if type(None) not in allowed:
                raise ValueError(f"config field {f.name} is empty (null); expected {kinds}, e.g. {f.default!r}")
            continue
        if isinstance(value, bool) and bool not in allowed:
            raise ValueError(f"config field {f.name}={value!r}: expected {kinds}, not true/false")
        if (float in allowed or int in allowed) and _is_integer(value):
            if int in allowed:  # numpy / torch integers become plain ints (YAML and JSON write them)
                object.__setattr__(cfg, f.name, operator.index(value))
            continue  # an int is a fine float too (beta: 1)
        if not isinstance(value, tuple(a for a in allowed if a is not type(None))):
            hint = ""
            if isinstance(value, str) and float in allowed:
                hint = " (YAML reads 3e-4 as text: write 3.0e-4 or 0.0003)"
            raise ValueError(f"config field {f.name}={value!r} is {type(value).__name__}; expected {kinds}{hint}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config field {f.name}={value} must be a finite number")
