"""Reading cells of run rows, whichever way they came: ``RunStore.get_run`` decodes JSON columns and
gives None for NULL, ``RunStore.runs_frame`` leaves JSON as text and gives NaN for a missing number."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["is_missing", "json_list"]


def is_missing(v: Any) -> bool:
    """None (a NULL from ``get_run``) or NaN (a NULL number in a DataFrame)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def json_list(value: Any) -> list:
    """A JSON list column (prompts, seeds, images ...) as a list: decoded already, JSON text, or nothing."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value:
        try:
            out = json.loads(value)
            return out if isinstance(out, list) else []
        except json.JSONDecodeError:
            return []
    return []
