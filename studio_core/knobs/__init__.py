"""Registry of knobs: the UI, CLI, presets and docs discover knobs here, never by naming them."""

from __future__ import annotations

import importlib

from studio_core.knobs.base import Applied, Knob, KnobReport

__all__ = ["KNOBS", "Applied", "Knob", "KnobReport", "knobs_in", "register"]

KNOBS: dict[str, Knob] = {}


def register(cls: type[Knob]) -> type[Knob]:
    """Class decorator: add one instance of ``cls`` to ``KNOBS`` (refuses a name taken twice)."""
    if cls.name in KNOBS and type(KNOBS[cls.name]) is not cls:
        raise ValueError(f"a knob named {cls.name!r} is already registered ({type(KNOBS[cls.name]).__name__})")
    KNOBS[cls.name] = cls()
    return cls


def knobs_in(spec) -> list[tuple[Knob, object]]:
    """(knob, settings) of every knob ``spec`` uses, in apply order (``Knob.order``)."""
    pairs = ((knob, knob.settings_for(spec)) for knob in sorted(KNOBS.values(), key=lambda k: k.order))
    return [(knob, settings) for knob, settings in pairs if settings is not None]


# built-in knobs register through the same decorator an extension would use
for _module in ("steps", "guidance", "resolution", "precision", "sampler", "deepcache", "cross_attention_cache",
                "token_merging", "transformer_cache", "component_precision", "attention", "memory_layout", "compile",
                "quantization"):
    importlib.import_module(f"{__name__}.{_module}")
