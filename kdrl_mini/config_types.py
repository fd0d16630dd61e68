"""Each field of a config checked against its annotation: one clear line per wrong value (the field,
what it got, what it takes, and the fix), integers normalised to plain ints, and a number that YAML 1.1
read as text (``lr: 1e-3``: no dot, so not a float to YAML) turned into the float it spells, for
float fields only; and an unknown field name refused with the closest real ones."""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import typing

FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # 1e-3, 3E-4, .5, 2.: what a user means as a number


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


def check_fields(cls, names, where: str) -> None:
    """Refuse names that are not fields of the config dataclass ``cls``, each with the closest real ones
    (difflib), in one line that starts with ``where`` (a file, or ``--set``)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(names) - set(known))
    if unknown:
        close = {n: difflib.get_close_matches(n, known, n=3, cutoff=0.5) for n in unknown}
        named = "; ".join(f"{n!r} (closest: {', '.join(c)})" if c else f"{n!r} (no field is close)"
                          for n, c in close.items())
        raise ValueError(f"{where}: unknown config field {named}; {cls.__name__} in {cls.__module__.replace('.', '/')}"
                         f".py lists them all")


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
        if isinstance(value, str) and float in allowed and FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as text; it is the number 0.001 to anyone who writes it
            object.__setattr__(cfg, f.name, value)
        if isinstance(value, bool) and bool not in allowed:
            raise ValueError(f"config field {f.name}={value!r}: expected {kinds}, not true/false")
        if (float in allowed or int in allowed) and _is_integer(value):
            if int in allowed:  # numpy / torch integers become plain ints (YAML and JSON write them)
                object.__setattr__(cfg, f.name, operator.index(value))
            continue  # an int is a fine float too (beta: 1)
        if not isinstance(value, tuple(a for a in allowed if a is not type(None))):
            count = isinstance(value, str) and int in allowed and FLOAT_TEXT.fullmatch(value.strip())
            hint = " (a count: write a whole number, no quotes or exponent, e.g. 8)" if count else ""
            raise ValueError(f"config field {f.name}={value!r} is {type(value).__name__}; expected {kinds}{hint}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config field {f.name}={value} must be a finite number")
