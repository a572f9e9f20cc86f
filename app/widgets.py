"""Widgets generated from the knob registry, and widget values -> run spec / sweep dicts.

Every setting the Generate tab shows comes from ``studio_core.knobs.KNOBS``: one ``Setting`` per field
of each knob's ``Settings`` dataclass. Built-in knobs map their settings onto run-spec fields of the
same name (``steps``, ``height``/``width``, ``sampler``/``timestep_spacing`` ...); every other knob
goes under ``spec["knobs"][name]`` and is off until the user ticks "use". So a newly registered knob
appears in the UI (and as a sweep axis) without UI code. The parsing functions are pure, so they are
unit-tested without a browser. The gradio components themselves are made at the end
(``setting_widget``, ``widget_lines``, ``knob_availability``), from the same ``Setting``s.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Mapping, Sequence

import gradio as gr

from studio_core.errors import SpecError
from studio_core.knobs import KNOBS, Knob
from studio_core.knobs.sampler import SAMPLERS, TIMESTEP_SPACINGS
from studio_core.spec import DEVICES, PRECISIONS

__all__ = [
    "AXIS_EXTRA",
    "GENERATE_FIELDS",
    "NO_PROMPT_SET",
    "Setting",
    "axis_choices",
    "axis_hint",
    "build_spec",
    "build_sweep",
    "coerce",
    "knob_availability",
    "knob_settings",
    "parse_axis_values",
    "parse_prompts",
    "parse_seeds",
    "registry_knobs",
    "setting_widget",
    "split_values",
    "widget_lines",
]

NO_PROMPT_SET = "(my prompts)"
# choices the built-in knobs' Settings types cannot say themselves (they are plain ``str``)
BUILTIN_CHOICES: dict[tuple[str, str], tuple] = {
    ("precision", "precision"): PRECISIONS,
    ("sampler", "sampler"): ("default", *SAMPLERS),
    ("sampler", "timestep_spacing"): TIMESTEP_SPACINGS,
}
# model default (studio_defaults.json key) of each built-in numeric setting
MODEL_DEFAULT_KEYS = {"steps": "num_inference_steps", "guidance": "guidance_scale", "height": "height",
                      "width": "width"}
# sweep axes that are run-spec fields but not knob settings
AXIS_EXTRA: dict[str, tuple[type, bool]] = {"seeds": (int, False), "batch_size": (int, True)}


@dataclass(frozen=True)
class Setting:
    """One field of one knob's Settings dataclass, as a widget and as a sweep axis."""

    knob: str
    name: str
    title: str
    kind: type  # int, float, str or bool
    optional: bool  # None allowed (shown as a blank / "(... own)" choice)
    choices: tuple | None
    default: Any
    builtin: bool

    @property
    def axis(self) -> str:
        """The run-spec field (built-in knobs) or ``knobs.<knob>.<setting>`` path of this setting."""
        return self.name if self.builtin else f"knobs.{self.knob}.{self.name}"


def _kind(annotation) -> tuple[type, bool, tuple | None]:
    """(base type, optional, Literal choices) of a Settings field annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else str
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), optional, tuple(choices)
    if annotation in (bool, int, float, str):
        return annotation, optional, None
    return str, optional, None


def knob_settings(knob: Knob) -> list[Setting]:
    """The settings of one registered knob, typed from its Settings dataclass."""
    try:
        hints = typing.get_type_hints(knob.Settings)
    except Exception:  # an annotation that cannot be evaluated: read the plain names
        hints = {f.name: {"int": int, "float": float, "bool": bool}.get(str(f.type), str)
                 for f in fields(knob.Settings)}
    out = []
    for f in fields(knob.Settings):
        kind, optional, choices = _kind(hints.get(f.name, str))
        choices = f.metadata.get("choices", choices) if f.metadata else choices
        choices = BUILTIN_CHOICES.get((knob.name, f.name), choices)
        default = f.default if f.default is not MISSING else None
        title = f.metadata.get("title") if f.metadata else None
        out.append(Setting(knob.name, f.name, title or f.name.replace("_", " "), kind, optional,
                           tuple(choices) if choices else None, default, bool(knob.builtin_field)))
    return out


def registry_knobs(knobs: Mapping[str, Knob] | None = None) -> list[Knob]:
    """Registered knobs in apply order (built-in ones first when orders tie)."""
    knobs = KNOBS if knobs is None else knobs
    return sorted(knobs.values(), key=lambda k: (k.order, not k.builtin_field, k.name))


def axis_choices(knobs: Mapping[str, Knob] | None = None) -> dict[str, tuple[type, bool]]:
    """Every sweep axis -> (value type, None allowed): built-in spec fields, seeds, and
    ``knobs.<knob>.<setting>`` of the other knobs."""
    axes: dict[str, tuple[type, bool]] = {}
    for knob in registry_knobs(knobs):
        for s in knob_settings(knob):
            axes[s.axis] = (s.kind, s.optional)
    axes.update(AXIS_EXTRA)
    return axes


def axis_hint(axis: str, knobs: Mapping[str, Knob] | None = None) -> str:
    """What values a sweep axis takes, for the values box."""
    for knob in registry_knobs(knobs):
        for s in knob_settings(knob):
            if s.axis == axis:
                none = "; none = the model's or knob's own" if s.optional else ""
                if s.choices:
                    return "any of: " + ", ".join(map(str, s.choices)) + none
                return {int: "whole numbers, e.g. 10, 20", float: "numbers, e.g. 1, 3, 7.5",
                        bool: "true, false"}.get(s.kind, "text values") + none
    if axis == "seeds":
        return "one seed per column, e.g. 0, 1, 2"
    if axis == "batch_size":
        return "images per pipeline call, e.g. 1, 4; none = all at once"
    return ""


# ------------------------------------------------------------------------------------------ parsing
def parse_prompts(text: str | None) -> list[str]:
    """One prompt per non-blank line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _int(text: Any, field_name: str) -> int:
    if isinstance(text, bool):
        raise SpecError(field_name, text, "whole numbers")
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        if not text.is_integer():
            raise SpecError(field_name, text, "whole numbers")
        return int(text)
    try:
        return int(str(text).strip())
    except ValueError:
        raise SpecError(field_name, str(text).strip(), "whole numbers separated by commas or spaces") from None


def parse_seeds(text: str | int | float | None) -> list[int]:
    """Seeds from ``"0, 1 2"`` (commas or spaces), or ``"0-3"`` for a range (both ends included)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    if isinstance(text, (int, float)):
        return [_int(text, "seeds")]
    seeds: list[int] = []
    for part in text.replace(",", " ").split():
        lo, dash, hi = part.partition("-")
        if dash and lo:
            a, b = _int(lo, "seeds"), _int(hi, "seeds")
            if b < a or b - a > 256:
                raise SpecError("seeds", part, "a range low-high with at most 257 seeds")
            seeds.extend(range(a, b + 1))
        else:
            seeds.append(_int(part, "seeds"))
    return seeds


def coerce(setting: Setting, value: Any) -> Any:
    """A widget's value as the setting's type; blank means None (the model's default / the knob's own)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if setting.kind is int:
        return _int(value, setting.axis)
    if setting.kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SpecError(setting.axis, value, "a number") from None
    if setting.kind is bool:
        if isinstance(value, str):
            if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise SpecError(setting.axis, value, "true or false")
            return value.strip().lower() in ("true", "1", "yes", "on")
        return bool(value)
    return str(value).strip()


def parse_axis_values(axis: str, text: str, kind: type, optional: bool = False) -> list:
    """Comma-separated values of one sweep axis, typed (``"10, 20"`` -> ``[10, 20]``); ``none`` is
    None (the model's or the knob's own value) where the setting allows it."""
    parts = [p.strip() for p in (text or "").split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise SpecError(f"grid.{axis}", text, "comma-separated values, e.g. 10, 20")
    out = []
    for p in parts:
        if optional and p.lower() == "none":
            out.append(None)
        elif kind is int:
            out.append(_int(p, f"grid.{axis}"))
        elif kind is float:
            try:
                out.append(float(p))
            except ValueError:
                raise SpecError(f"grid.{axis}", p, "numbers separated by commas") from None
        elif kind is bool:
            if p.lower() not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
                raise SpecError(f"grid.{axis}", p, "true or false")
            out.append(p.lower() in ("true", "1", "on", "yes"))
        else:
            out.append(p)
    if len(set(map(repr, out))) != len(out):
        raise SpecError(f"grid.{axis}", text, "distinct values")
    return out


# ------------------------------------------------------------------------------------------ specs
GENERATE_FIELDS = ("model", "prompts", "prompt_set", "seeds", "warmup", "repeats", "device", "batch_size")


def split_values(values: Sequence, settings: Sequence[Setting], knob_names: Sequence[str]) -> dict:
    """The Generate tab's flat widget values, in order ``GENERATE_FIELDS``, then one per setting, then one
    "use" checkbox per non-built-in knob, as keyword arguments of ``build_spec``."""
    n, m = len(GENERATE_FIELDS), len(settings)
    if len(values) != n + m + len(knob_names):
        raise ValueError(f"expected {n + m + len(knob_names)} widget values, got {len(values)}")
    out = dict(zip(GENERATE_FIELDS, values[:n]))
    out["values"] = {s.axis: v for s, v in zip(settings, values[n:n + m])}
    out["enabled"] = dict(zip(knob_names, values[n + m:]))
    return out


def build_spec(model: str, prompts_text: str, prompt_set: str | None, seeds_text: str,
               values: Mapping[str, Any], enabled: Mapping[str, bool], *, warmup: Any = 1, repeats: Any = 3,
               device: str = "auto", batch_size: Any = None,
               knobs: Mapping[str, Knob] | None = None) -> dict:
    """The run-spec dict of the Generate tab's widgets.

    ``values`` maps each setting's ``axis`` to its widget value; ``enabled`` maps each non-built-in
    knob to its "use" checkbox. Raises ``SpecError`` for values that cannot even be typed.
    """
    spec: dict[str, Any] = {"model": (model or "").strip()}
    if prompt_set and prompt_set != NO_PROMPT_SET:
        spec["prompt_set"] = prompt_set
    else:
        spec["prompts"] = parse_prompts(prompts_text)
    spec["seeds"] = parse_seeds(seeds_text)
    spec_knobs: dict[str, dict] = {}
    for knob in registry_knobs(knobs):
        settings = knob_settings(knob)
        if knob.builtin_field:
            for s in settings:
                value = coerce(s, values.get(s.axis))
                if s.name == "sampler" and value is None:
                    value = "default"
                if s.name == "precision" and value is None:
                    value = "fp32"
                spec[s.name] = value
        elif enabled.get(knob.name):
            spec_knobs[knob.name] = {s.name: coerce(s, values.get(s.axis)) for s in settings}
    spec["knobs"] = spec_knobs
    spec["warmup"] = _int(warmup if warmup not in (None, "") else 1, "warmup")
    spec["repeats"] = _int(repeats if repeats not in (None, "") else 3, "repeats")
    spec["device"] = device or "auto"
    spec["batch_size"] = None if batch_size in (None, "", 0) else _int(batch_size, "batch_size")
    if spec["device"] not in DEVICES:
        raise SpecError("device", device, f"one of {', '.join(DEVICES)}")
    return spec


def build_sweep(base: dict, axes: list[tuple[str | None, str]], *, name: str = "", question: str = "",
                reference: dict | None = None, knobs: Mapping[str, Knob] | None = None) -> dict:
    """A sweep dict (as ``studio_core.sweep.sweep_from_dict`` takes) from a base spec and 1-3 axes.

    ``axes`` is ``[(axis or None, "comma, separated, values"), ...]`` in X, Y, Z order; the grid runs
    the first given axis outermost. An axis value overrides the base (and a knob axis turns its knob on).
    """
    kinds = axis_choices(knobs)
    grid: dict[str, list] = {}
    for axis, text in axes:
        if not axis:
            continue
        if axis not in kinds:
            raise SpecError("axis", axis, f"one of {', '.join(kinds)}")
        if axis in grid:
            raise SpecError("axis", axis, "each axis at most once")
        grid[axis] = parse_axis_values(axis, text, *kinds[axis])
    if not grid:
        raise SpecError("axis", None, "at least one axis with values (X)")
    base = {k: v for k, v in base.items() if k not in grid}
    if "seeds" in grid:
        base.pop("seeds", None)
    # a knob axis means that knob is on: drop the same setting from the base, keep its other settings
    for axis in grid:
        if axis.startswith("knobs."):
            _, knob, setting = axis.split(".")
            base.setdefault("knobs", {}).setdefault(knob, {}).pop(setting, None)
    data = {"name": name.strip() or "ui sweep: " + " x ".join(grid), "question": question.strip(),
            "base": base, "grid": grid}
    if reference:
        data["reference"] = dict(reference)
    return data


# ------------------------------------------------------------------------------------------ components
def knob_availability(knob: Knob, info) -> dict:
    """The "use" checkbox of an optional knob for this model: greyed out (and unticked) with the reason
    when ``check_model`` refuses the knob's default settings."""
    try:
        reason = knob.check_model(info, knob.Settings())
    except TypeError:  # settings without defaults: nothing to check before the user fills them in
        reason = None
    if reason:
        return gr.update(interactive=False, value=False, info=f"Not available for this model: {reason}")
    return gr.update(interactive=True, info=knob.description)


def setting_widget(knob: Knob, s: Setting, defaults: dict) -> gr.components.Component:
    """The widget of one setting: a dropdown for choices (with a blank "(... own)" when optional), a
    checkbox for a flag, a number box; ``defaults`` are the model's values of the built-in settings."""
    if s.name == knob.name or len(knob.Settings.__dataclass_fields__) == 1:
        label = knob.title
    else:  # an optional knob's settings sit under its own "use ..." box: the setting's name is enough
        label = f"{knob.title}: {s.title}" if s.builtin else s.title.capitalize()
    own = f"({knob.title.split(' (')[0].lower()}'s own)"
    value = defaults.get(s.name, s.default) if s.builtin else s.default
    eid = "setting-" + s.axis.replace(".", "-")
    if s.choices:
        choices = [("default (the model's own)", c) if (knob.name, s.name, c) == ("sampler", "sampler", "default")
                   else c for c in s.choices]
        if s.optional:
            choices = [(own, "")] + choices
            value = "" if value is None else value
        first = choices[0][1] if isinstance(choices[0], tuple) else choices[0]
        return gr.Dropdown(choices, value=value if value is not None else first, label=label, elem_id=eid,
                           min_width=110)
    if s.kind is bool and s.optional:  # three states: unset, true, false
        return gr.Dropdown([(own, ""), ("true", "true"), ("false", "false")], label=label, elem_id=eid,
                           value="" if value is None else str(bool(value)).lower(), min_width=110)
    if s.kind is bool:
        return gr.Checkbox(value=bool(value), label=label, elem_id=eid, min_width=110)
    if s.kind in (int, float) and s.optional and not s.builtin:  # blank = the knob's own value
        return gr.Textbox(value="" if value is None else str(value), label=label, elem_id=eid,
                          placeholder="default", min_width=110)
    if s.kind in (int, float):
        return gr.Number(value=value, label=label, precision=0 if s.kind is int else None, elem_id=eid,
                         step=1 if s.kind is int else 0.5, placeholder="model default" if s.builtin else None,
                         min_width=110)
    return gr.Textbox(value=value or "", label=label, elem_id=eid, min_width=110)


def widget_lines(knobs: list[Knob], per_line: int = 3) -> list[list]:
    """Knobs grouped into widget lines: consecutive one-setting knobs together (up to ``per_line``)."""
    lines: list[list] = []
    for knob in knobs:
        single = len(knob_settings(knob)) == 1
        if single and lines and len(lines[-1]) < per_line and all(
                len(knob_settings(k)) == 1 for k in lines[-1]):
            lines[-1].append(knob)
        else:
            lines.append([knob])
    return lines
