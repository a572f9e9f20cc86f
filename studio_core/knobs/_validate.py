"""The field checks every knob's ``validate`` is made of: a whole number, a number, a choice, a flag.

Each raises ``SpecError`` naming the field, the value and what is allowed; ``allowed`` replaces the
generic wording where a knob says more (what the ends of the range mean). Booleans are never numbers
or choices here, although Python counts ``True`` as 1.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from studio_core.errors import SpecError

__all__ = ["check_bool", "check_choice", "check_int", "check_number", "is_int"]


def is_int(value: Any) -> bool:
    """A whole number and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(field_name: str, value: Any, lo: int, hi: int, allowed: str | None = None) -> None:
    """``value`` is a whole number from ``lo`` to ``hi``."""
    if not is_int(value) or not lo <= value <= hi:
        raise SpecError(field_name, value, allowed or f"a whole number from {lo} to {hi}")


def check_number(field_name: str, value: Any, lo: float, hi: float, allowed: str | None = None, *,
                 above_lo: bool = False) -> None:
    """``value`` is a finite number from ``lo`` (exclusive with ``above_lo``) to ``hi``."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (lo < value if above_lo else lo <= value) and value <= hi)
    if not ok:
        raise SpecError(field_name, value, allowed or f"a number from {lo:g} to {hi:g}")


def check_choice(field_name: str, value: Any, choices: Iterable, allowed: str | None = None) -> None:
    """``value`` is one of ``choices`` (equal to one; a bool never counts as 0 or 1)."""
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        raise SpecError(field_name, value, allowed or f"one of {', '.join(map(str, choices))}")


def check_bool(field_name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise SpecError(field_name, value, "true or false")
