"""Widgets generated from the knob registry, and widget values -> run spec / sweep dicts.

Every setting the Generate tab shows comes from ``studio_core.knobs.KNOBS``: one ``Setting`` per field
of each knob's ``Settings`` dataclass. Built-in knobs map their settings onto run-spec fields of the
same name (``steps``, ``height``/``width``, ``sampler``/``timestep_spacing`` ...); every other knob
goes under ``spec["knobs"][name]`` and is off until the user ticks "use". So a newly registered knob
appears in the UI (and as a sweep axis) without UI code. The parsing functions are pure, so they are
unit-tested without a browser. The gradio components themselves are made at the end
(``setting_widget``, ``knob_availability``), from the same ``Setting``s, and laid out by
``knob_groups`` / ``setting_rows`` with an ``active_summary`` line.
"""

from __future__ import annotations

import re
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Mapping, Sequence

import gradio as gr

from studio_core.errors import SpecError
from studio_core.knobs import KNOBS, Knob
from studio_core.knobs.base import GROUPS
from studio_core.knobs.sampler import SAMPLERS, TIMESTEP_SPACINGS
from studio_core.spec import DEVICES, MAX_IMAGES, MAX_MODEL_CHARS, PRECISIONS, check_text, excerpt
from studio_core.study.labels import axis_label
from studio_core.study.sweep import OFF

__all__ = [
    "AXIS_EXTRA",
    "GENERATE_FIELDS",
    "NO_PROMPT_SET",
    "Setting",
    "active_summary",
    "axis_choices",
    "axis_hint",
    "build_spec",
    "build_sweep",
    "choice_label",
    "coerce",
    "group_label",
    "is_core",
    "knob_availability",
    "knob_groups",
    "knob_settings",
    "parse_axis_values",
    "parse_prompts",
    "parse_seeds",
    "registry_knobs",
    "setting_rows",
    "setting_widget",
    "split_values",
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
# words of setting names written as people write them in widget labels ("VAE slicing", "Drop CFG")
ACRONYMS = {"vae": "VAE", "cfg": "CFG"}
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
    ``knobs.<knob>.<setting>`` of the other knobs (the page names them by ``labels.axis_label``)."""
    axes: dict[str, tuple[type, bool]] = {}
    for knob in registry_knobs(knobs):
        for s in knob_settings(knob):
            axes[s.axis] = (s.kind, s.optional)
    axes.update(AXIS_EXTRA)
    return axes


def axis_hint(axis: str, knobs: Mapping[str, Knob] | None = None) -> str:
    """What values a sweep axis takes, for the values box; a knob's axis also takes ``off`` (no knob)."""
    for knob in registry_knobs(knobs):
        for s in knob_settings(knob):
            if s.axis == axis:
                none = "; none = the model's or knob's own" if s.optional else ""
                off = f"; off = without {knob.short_title} (the baseline in the same grid)" if not s.builtin else ""
                if s.choices:
                    return "any of: " + ", ".join(map(str, s.choices)) + none + off
                return {int: "whole numbers, e.g. 10, 20", float: "numbers, e.g. 1, 3, 7.5",
                        bool: "true, false"}.get(s.kind, "text values") + none + off
    if axis == "seeds":
        return "one seed per column, e.g. 0, 1, 2"
    if axis == "batch_size":
        return "images per pipeline call, e.g. 1, 4; none = all at once"
    return ""


# ------------------------------------------------------------------------------------------ parsing
def parse_prompts(text: str | None) -> list[str]:
    """One prompt per non-blank line; the text's length is checked before it is split."""
    check_text("prompts", text)
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
    except ValueError:  # also a number of over 4,300 digits (Python's own limit)
        raise SpecError(field_name, excerpt(str(text).strip()), "whole numbers separated by commas or spaces") from None


def parse_seeds(text: str | int | float | None) -> list[int]:
    """Seeds from ``"0, 1 2"`` (commas or spaces), or ``"0-3"`` for a range (both ends included).

    The text's length is checked first, and the count before each range is expanded, so no input makes more
    than ``MAX_IMAGES`` seeds (a run has at most that many images) or a message longer than a line."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    if isinstance(text, (int, float)):
        return [_int(text, "seeds")]
    check_text("seeds", text)
    seeds: list[int] = []
    for part in text.replace(",", " ").split():
        lo, dash, hi = part.partition("-")
        if dash and lo:
            a, b = _int(lo, "seeds"), _int(hi, "seeds")
            if b < a:
                raise SpecError("seeds", excerpt(part), "a range low-high with low <= high")
            count = b - a + 1  # arithmetic only: the range is made once it is known to fit
        else:
            a, count = _int(part, "seeds"), 1
        if len(seeds) + count > MAX_IMAGES:
            raise SpecError("seeds", excerpt(text), f"at most {MAX_IMAGES} seeds (a run has at most {MAX_IMAGES} "
                                                    f"images); {excerpt(part, 20)} would make {len(seeds) + count:,}")
        seeds.extend(range(a, a + count))
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
    None (the model's or the knob's own value) where the setting allows it, and on a knob's axis ``off``
    is that knob left out (``sweep.OFF``; a flag of a knob is then written true / false)."""
    check_text(f"grid.{axis}", text)
    parts = [p.strip() for p in (text or "").split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise SpecError(f"grid.{axis}", excerpt(text), "comma-separated values, e.g. 10, 20")
    out = []
    for p in parts:
        if axis.startswith("knobs.") and p.lower() == OFF:
            out.append(OFF)
        elif optional and p.lower() == "none":
            out.append(None)
        elif kind is int:
            out.append(_int(p, f"grid.{axis}"))
        elif kind is float:
            try:
                out.append(float(p))
            except ValueError:
                raise SpecError(f"grid.{axis}", excerpt(p), "numbers separated by commas") from None
        elif kind is bool:
            if p.lower() not in ("true", "false", "1", "0", "on", "off", "yes", "no"):
                raise SpecError(f"grid.{axis}", excerpt(p), "true or false")
            out.append(p.lower() in ("true", "1", "on", "yes"))
        else:
            out.append(p)
    if len(set(map(repr, out))) != len(out):
        raise SpecError(f"grid.{axis}", excerpt(text), "distinct values")
    return out


# ------------------------------------------------------------------------------------------ specs
GENERATE_FIELDS = ("model", "prompts", "prompt_set", "seeds", "warmup", "repeats", "device", "batch_size",
                   "distribution")


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
               device: str = "auto", batch_size: Any = None, distribution: Any = 0,
               knobs: Mapping[str, Knob] | None = None) -> dict:
    """The run-spec dict of the Generate tab's widgets.

    ``values`` maps each setting's ``axis`` to its widget value; ``enabled`` maps each non-built-in
    knob to its "use" checkbox. Raises ``SpecError`` for values that cannot even be typed.
    """
    check_text("model", model, MAX_MODEL_CHARS)
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
    spec["warmup"] = _int(warmup if warmup not in (None, "") else 0, "warmup")  # 0: auto (measure.adaptive)
    spec["repeats"] = _int(repeats if repeats not in (None, "") else 0, "repeats")
    spec["device"] = device or "auto"
    spec["batch_size"] = None if batch_size in (None, "", 0) else _int(batch_size, "batch_size")
    if distribution not in (None, "", 0):  # left out when off, so the spec reads as it always did
        spec["distribution"] = _int(distribution, "distribution")
    if spec["device"] not in DEVICES:
        raise SpecError("device", device, f"one of {', '.join(DEVICES)}")
    return spec


def build_sweep(base: dict, axes: list[tuple[str | None, str]], *, name: str = "", question: str = "",
                reference: dict | None = None, knobs: Mapping[str, Knob] | None = None) -> dict:
    """A sweep dict (as ``studio_core.sweep.sweep_from_dict`` takes) from a base spec and 1-3 axes.

    ``axes`` is ``[(axis or None, "comma, separated, values"), ...]`` in X, Y, Z order; the grid runs
    the first given axis outermost. An axis value overrides the base (and a knob axis turns its knob on,
    except in its ``off`` cells).
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
    # unset fields (None, no knobs) are the run spec's own defaults: left out, the preset reads shorter
    base = {k: v for k, v in base.items() if k not in grid and v is not None and v != {}}
    if "seeds" in grid:
        base.pop("seeds", None)
    # a knob axis means that knob is on: drop the same setting from the base, keep its other settings
    for axis in grid:
        if axis.startswith("knobs."):
            _, knob, setting = axis.split(".")
            base.setdefault("knobs", {}).setdefault(knob, {}).pop(setting, None)
    data = {"name": name.strip() or "ui sweep: " + " x ".join(map(axis_label, grid)), "question": question.strip(),
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


def choice_label(value: Any) -> str:
    """A dropdown choice as people read it: ``int8_weight_only`` -> "int8 weight-only", ``denoiser+vae`` ->
    "denoiser + vae" (the value sent stays the identifier)."""
    text = str(value).replace("_weight_only", " weight-only").replace("_", " ")
    return re.sub(r"(?<=\w)\+(?=\w)", " + ", text)  # not the "++" of "DPM++"


def setting_widget(knob: Knob, s: Setting, defaults: dict) -> gr.components.Component:
    """The widget of one setting: a dropdown for choices (with a blank "default" when optional: the knob's
    own value), a checkbox for a flag, a number box; ``defaults`` are the model's values of the built-in
    settings. Choices read as words ("int8 weight-only"); dropdowns are wide enough to show them."""
    if s.name == knob.name or len(knob.Settings.__dataclass_fields__) == 1:
        label = knob.title
    else:  # an optional knob's settings sit under its own "use ..." box: the setting's name is enough
        words = [ACRONYMS.get(w.lower(), w) for w in s.title.split()]
        label = f"{knob.title}: {' '.join(words)}" if s.builtin else " ".join([words[0][:1].upper() + words[0][1:],
                                                                                *words[1:]])
    own = f"{knob.short_title.lower()}'s own" if s.builtin else "default"
    value = defaults.get(s.name, s.default) if s.builtin else s.default
    eid = "setting-" + s.axis.replace(".", "-")
    if s.choices:
        choices = [("model default", c) if (knob.name, s.name, c) == ("sampler", "sampler", "default")
                   else (choice_label(c), c) for c in s.choices]
        if s.optional:
            choices = [(own, "")] + choices
            value = "" if value is None else value
        longest = max(len(text) for text, _ in choices)  # wide enough for its longest value, rows wrap for it
        return gr.Dropdown(choices, value=value if value is not None else choices[0][1], label=label, elem_id=eid,
                           min_width=max(150, 8 * longest + 60))
    if s.kind is bool and s.optional:  # three states: unset, true, false
        return gr.Dropdown([(own, ""), ("on", "true"), ("off", "false")], label=label, elem_id=eid,
                           value="" if value is None else str(bool(value)).lower(), min_width=150)
    if s.kind is bool:
        return gr.Checkbox(value=bool(value), label=label, elem_id=eid, min_width=110)
    # blank = the knob's own value (or, for a built-in float such as a flow model's shift, the model's own):
    # a gr.Number has no blank, it sends 0
    if s.kind in (int, float) and s.optional and (not s.builtin or s.kind is float):
        return gr.Textbox(value="" if value is None else str(value), label=label, elem_id=eid,
                          placeholder="model's own" if s.builtin else "default", min_width=110)
    if s.kind in (int, float):
        return gr.Number(value=value, label=label, precision=0 if s.kind is int else None, elem_id=eid,
                         step=1 if s.kind is int else 0.5, placeholder="model default" if s.builtin else None,
                         min_width=110)
    return gr.Textbox(value=value or "", label=label, elem_id=eid, min_width=110)


# ------------------------------------------------------------------------------------------ the form's shape
def is_core(s: Setting) -> bool:
    """Whether a setting sits in the Generate tab's always-open line above the knob groups: the built-in
    ones the model gives a default (steps, guidance, size), which every run sets."""
    return s.builtin and s.name in MODEL_DEFAULT_KEYS


def knob_groups(knobs: Sequence[Knob]) -> list[tuple[str, list[Knob]]]:
    """(group, knobs) in ``GROUPS`` order, then any other group in the order first met: the Generate tab's
    closed accordions. Built-in knobs whose settings are all core are left out (they sit above)."""
    by_group: dict[str, list[Knob]] = {g: [] for g in GROUPS}
    for knob in knobs:
        if all(is_core(s) for s in knob_settings(knob)):
            continue
        by_group.setdefault(knob.group, []).append(knob)
    return [(g, ks) for g, ks in by_group.items() if ks]


def _short_name(knob: Knob) -> str:
    """A knob's shortest common name: the acronym in its title's parenthesis ("ToMe", "T-GATE"), else its
    title before any parenthesis or slash ("Memory layout")."""
    inner = knob.title.partition(" (")[2].rstrip(")")
    if inner and " " not in inner and len(inner) <= 8:
        return inner
    return knob.short_title.split(" / ")[0]


def group_label(group: str, knobs: Sequence[Knob]) -> str:
    """An accordion's title: the group and what is inside ("Caching & tokens: DeepCache · T-GATE · ToMe ...")."""
    return f"{group[:1].upper()}{group[1:]}: " + " · ".join(_short_name(k) for k in knobs)


def setting_rows(settings: Sequence[Setting], per_row: int = 3) -> list[list[Setting]]:
    """Settings in rows of at most ``per_row``, so a dropdown has the room to show its value."""
    return [list(settings[i:i + per_row]) for i in range(0, len(settings), per_row)]


def active_summary(values: Mapping[str, Any], enabled: Mapping[str, bool],
                   knobs: Mapping[str, Knob] | None = None) -> str:
    """One line naming what the form changes from the model's own pipeline, in apply order: a built-in
    knob's non-core values unless they are its baseline (the model's sampler, fp32), each ticked knob by
    its ``Knob.label`` ("**Active:** DPM++ 2M · DeepCache N=3 · ToMe 50%"), or that nothing is changed.
    Values still being typed that do not parse are named by the knob's title, never an error."""
    parts = []
    for knob in registry_knobs(knobs):
        settings = [s for s in knob_settings(knob) if not is_core(s)]
        if knob.builtin_field:
            shown = {s.name: v for s in settings if (v := values.get(s.axis)) not in (None, "", "default")}
            try:
                baseline = knob.is_baseline(knob.parse({s.name: coerce(s, values.get(s.axis)) for s in settings}))
            except Exception:
                baseline = False
            if shown and not baseline:
                parts.append(", ".join(choice_label(v) if s == knob.name else f"{choice_label(v)} {choice_label(s)}"
                                       for s, v in shown.items()))
        elif enabled.get(knob.name):
            try:
                typed = {s.name: coerce(s, values.get(s.axis)) for s in settings}
                parts.append(knob.label(knob.parse({k: v for k, v in typed.items() if v is not None})))
            except Exception:
                parts.append(knob.short_title)
    if not parts:
        return "**Active:** none: the model's own sampler in fp32, no knob ticked"
    return "**Active:** " + " · ".join(parts)
