"""The knob protocol: every efficiency setting is one ``Knob`` subclass in its own module.

A knob declares its settings (a dataclass), says whether a model supports them and why not, applies
itself to a loaded pipeline for one run, undoes itself afterwards, and reports what it actually did
(so a knob that changed nothing says so). Built-in knobs register exactly as a new one would:
``@register`` on the class (see ``studio_core/knobs/__init__.py``).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, ContextManager

from studio_core.errors import SpecError

__all__ = ["GROUPS", "OTHER_GROUP", "Applied", "Knob", "KnobReport", "value_text"]

# the groups the Generate tab shows knobs in, in this order; a knob that names none sits in OTHER_GROUP after them
GROUPS = ("sampling", "caching & tokens", "precision & quantization", "compile & memory")
OTHER_GROUP = "other knobs"


@dataclass
class KnobReport:
    """What a knob did in one run: ``active`` is False when it changed nothing."""

    knob: str
    active: bool
    summary: str
    details: dict = field(default_factory=dict)


def value_text(v: Any) -> str:
    """A setting's value as people write it: ``on``/``off`` for flags, ``0.5`` not ``0.50000``, ``default`` for None."""
    if v is None:
        return "default"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("_", " ")


def _nothing() -> None:
    return None


@dataclass
class Applied:
    """A knob in effect: extra pipeline-call arguments, how to undo it, how to report on it.

    ``undo=None`` means the change cannot be undone in place (quantised or compiled weights): the
    engine then drops the pipeline from its cache so the next run loads a clean copy.

    ``call_kwargs`` may hold a ``callback_on_step_end``: the engine chains those of several knobs.
    ``instrument`` (optional) returns a context manager the engine enters around the first warm-up call
    only: counting that would slow the timed repeats (e.g. which layers ran) happens there.
    """

    knob: str
    call_kwargs: dict = field(default_factory=dict)
    undo: Callable[[], None] | None = _nothing
    report: Callable[[], KnobReport] | None = None
    instrument: Callable[[], ContextManager] | None = None


class Knob:
    """Base class; subclasses set the class attributes and override what they need."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type]
    builtin_field: ClassVar[str | None] = None  # the RunSpec field that carries a built-in knob's setting
    order: ClassVar[int] = 100  # apply order; lower first
    group: ClassVar[str] = OTHER_GROUP  # where the Generate tab shows it: one of GROUPS

    @property
    def field_name(self) -> str:
        return self.builtin_field or f"knobs.{self.name}"

    # ---- settings
    def parse(self, raw: Any):
        """Settings from plain data; ``SpecError`` naming ``knobs.<name>.<key>`` on bad input."""
        if isinstance(raw, self.Settings):
            settings = raw
        else:
            if not isinstance(raw, dict):
                raise SpecError(self.field_name, raw, f"a mapping with keys {self.setting_names()}")
            unknown = sorted(set(raw) - set(self.setting_names()))
            if unknown:
                raise SpecError(f"{self.field_name}.{unknown[0]}", raw[unknown[0]],
                                f"settings of {self.name} are {', '.join(self.setting_names())}")
            settings = self.Settings(**raw)
        self.validate(settings)
        return settings

    def setting_names(self) -> list[str]:
        return [f.name for f in fields(self.Settings)]

    def validate(self, settings) -> None:
        """Raise ``SpecError`` for settings that are wrong whatever the model."""

    def settings_for(self, spec):
        """This knob's settings in ``spec``, or None when the run does not use it."""
        raw = spec.knobs.get(self.name)
        return None if raw is None else self.parse(raw)

    def is_baseline(self, settings) -> bool:
        """True when these settings are the unmodified model (so doing nothing is expected, not a flag)."""
        return False

    def describe(self, settings) -> Any:
        return asdict(settings) if hasattr(settings, "__dataclass_fields__") else settings

    def label(self, settings) -> str:
        """A short name of these settings for people ("DeepCache N=3", "ToMe 50%"): how the page, the hovers
        and the CLI tables name the knob. The default is the title without its parenthesis, then every
        setting that differs from its default; knobs override it with their field's usual notation."""
        changed = [f"{f.name.replace('_', ' ')} {value_text(getattr(settings, f.name))}" for f in fields(settings)
                   if f.default is not MISSING and getattr(settings, f.name) != f.default]
        return self.short_title + (" " + ", ".join(changed) if changed else "")

    @property
    def short_title(self) -> str:
        return self.title.split(" (")[0]

    # ---- support
    def check_model(self, info, settings) -> str | None:
        """Why the model (configs only, no weights) cannot take these settings, or None."""
        return None

    def check_spec(self, spec, settings) -> str | None:
        """Why these settings cannot combine with the rest of the resolved ``spec`` (its precision, device,
        other knobs), or None. Called by ``resolve``, so an incompatible combination is refused before any
        work."""
        return None

    def load_options(self, settings) -> dict:
        """Options the pipeline must be loaded with (e.g. ``{"dtype": "fp16"}``)."""
        return {}

    def supports(self, pipe, settings) -> str | None:
        """Why the loaded pipeline cannot take these settings, or None."""
        return None

    # ---- effect
    def apply(self, pipe, settings) -> Applied:
        raise NotImplementedError
