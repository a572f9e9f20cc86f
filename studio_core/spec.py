"""The run specification: one typed, validated description of a configuration to measure.

Validation happens in two steps, both before any work starts:

1. ``validate(spec)`` checks each field on its own (ranges, names, types).
2. ``resolve(spec)`` opens the model folder's configs (no weights), refuses a pipeline the studio cannot
   drive, fills the model's defaults (steps and guidance from ``studio_defaults.json`` or the pipeline's own
   ``__call__``, resolution from the model's native size), expands a named prompt set, and checks what
   depends on the model: a step count and resolution it can take (a step count its scheduler can index:
   ``max_steps``), a sampler and knobs it supports, and the total work of the run (``MAX_IMAGE_STEPS``).

What a caller sends is bounded before anything is parsed, expanded or loaded: the ``MAX_*`` caps below
(text length, seeds, images, sweep cells, work) are checked first, and a message echoes only the start of
a long input (``excerpt``). ``docs/bad-inputs.md`` lists what each refusal says.

Every problem raises ``SpecError`` naming the field, the value and what is allowed. Nothing here
imports torch or diffusers, so the UI can build and check specs cheaply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from studio_core.errors import ModelLoadError, SpecError
from studio_core.fingerprint import model_fingerprint
from studio_core.knobs import KNOBS, knobs_in
from studio_core.knobs._validate import check_int, check_number, is_int
from studio_core.knobs.sampler import (
    CONSISTENCY_SCHEDULERS,
    MAX_FLOW_SHIFT,
    MIN_FLOW_SHIFT,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    compatible_names,
    model_kind,
)
from studio_core.measure.adaptive import AUTO, MAX_REPEATS, MAX_WARMUP, plan_for
from studio_core.models import (
    EMBEDDED_MODELS,
    MAX_MODEL_CHARS,
    SUPPORTED_PIPELINES,
    check_pipeline_folder,
    model_defaults_with_sources,
    resolve_model,
    student_info,
    unsupported_reason,
)
from studio_core.prompts import PROMPT_SETS

__all__ = [
    "DEVICES",
    "MAX_GUIDANCE",
    "MAX_IMAGES",
    "MAX_DISTRIBUTION",
    "MAX_IMAGE_STEPS",
    "MIN_DISTRIBUTION",
    "MAX_MODEL_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_STEPS",
    "MAX_SWEEP_CELLS",
    "MAX_TEXT_CHARS",
    "PRECISIONS",
    "REFERENCE_DEFAULT",
    "ModelInfo",
    "RunSpec",
    "check_text",
    "config_hash",
    "defaults_text",
    "excerpt",
    "model_info",
    "resolve",
    "start_fields",
    "scheduler_steps_reason",
    "validate",
]

MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_IMAGES = 256
MAX_PROMPT_CHARS = 1000
# caps on one request, checked before anything is expanded or loaded, so a huge input costs nothing
MAX_TEXT_CHARS = 100_000  # one typed text: the prompts box, the seeds box, a sweep axis's values
MAX_SWEEP_CELLS = 10_000  # configurations in one sweep grid (its axes' product; 10k resolve in about 0.5 s)
MAX_IMAGE_STEPS = 100_000  # denoiser steps x images x (warm-up + repeats) of one run: hours on a small GPU
# a run's distribution set (``measure.emoji_metrics``): enough images for FD/KID to settle (benchmarks/
# distribution_validation.py), at most what the work cap allows at 50 steps
MIN_DISTRIBUTION, MAX_DISTRIBUTION = 50, 2000
EXCERPT_CHARS = 40  # how much of a refused input a message shows
# the reference every run is scored against: a high-step multistep solver, fp32, no knobs
REFERENCE_DEFAULT = {"sampler": "DPM++ 2M", "steps": 200}
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
# config key listing a VAE's encoder levels, by VAE class: each level past the first halves the image
_VAE_LEVELS = {"AutoencoderKL": "block_out_channels", "AutoencoderDC": "encoder_block_out_channels"}


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one measured run. ``None`` means "the model's documented default"."""

    model: str = "emoji-sd"
    prompts: tuple[str, ...] = ()
    prompt_set: str | None = None
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None
    sampler: str = "default"  # "default": the model's own scheduler
    timestep_spacing: str | None = None  # None: the sampler's own
    flow_shift: float | None = None  # flow models' schedule shift; None: the model's own (fixed, or per size)
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int | None = None  # images per pipeline call; None: all in one call
    precision: str = "fp32"
    device: str = "auto"
    knobs: dict[str, dict] = field(default_factory=dict)  # settings of the other registered knobs
    warmup: int = AUTO  # AUTO (0, or "auto"): until two calls agree; else a fixed count (``measure.adaptive``)
    repeats: int = AUTO  # AUTO: until the median's 95% CI is within ±5%; else a fixed count
    distribution: int = 0  # images of the distribution set (FD-emoji, KID, precision/recall); 0: none

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        """Build from plain data (YAML, JSON, widget values); unknown keys are errors, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(unknown[0], data[unknown[0]], f"known fields are {', '.join(sorted(known))}")
        data = dict(data)
        for key in ("prompts", "seeds"):
            if key in data and data[key] is not None:
                value = data[key]
                if isinstance(value, (str, int)):
                    value = [value]
                data[key] = tuple(value)
        if data.get("knobs") is None:
            data.pop("knobs", None)
        for key in ("warmup", "repeats"):  # "auto" is the spelling of AUTO in YAML and JSON
            if isinstance(data.get(key), str) and data[key].strip().lower() == "auto":
                data[key] = AUTO
        return cls(**data)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompts"], d["seeds"] = list(self.prompts), list(self.seeds)
        return d

    @property
    def n_images(self) -> int:
        return len(self.prompts) * len(self.seeds)

    def images(self) -> list[tuple[str, int]]:
        """Every (prompt, seed) pair, prompts outermost: the order images are generated and stored."""
        return [(p, s) for p in self.prompts for s in self.seeds]


def config_hash(spec: RunSpec) -> str:
    """Stable short hash of a resolved spec's full configuration. A field added later is left out while it has
    its default (``distribution`` 0, ``flow_shift`` None), so runs recorded before it existed keep their hash."""
    d = spec.to_dict()
    if not d.get("distribution"):
        d.pop("distribution", None)
    if d.get("flow_shift") is None:
        d.pop("flow_shift", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def start_fields(spec: RunSpec, info: "ModelInfo | None") -> dict:
    """What ``RunStore.start_run`` records of a resolved spec beside its configuration: its hash, the model's
    folder, fingerprint and pipeline class, the knobs as ``name=json`` sorted by name, and the model's family and
    lineage (``models.family_name`` and ``models.lineage_text``; None for a model that is not a student). The
    engine and a sweep's driver (which writes the rows of cells run by workers) record the same."""
    from studio_core.models import family_name, lineage_text

    knobs = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(spec.knobs.items()))
    if info is None:  # a model that no longer resolves: what the spec alone says
        return {"config_hash": config_hash(spec), "knobs_label": knobs}
    student = info.student
    return {"config_hash": config_hash(spec), "model_path": info.path, "model_fingerprint": info.fingerprint,
            "pipeline_class": info.pipeline_class, "knobs_label": knobs,
            "model_family": family_name(student["teacher"] if student else spec.model),
            "lineage": lineage_text(student) if student else None}


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """The start of an input for a message: a refused 1 MB text is named by its first characters and length."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def check_text(field_name: str, text: Any, limit: int = MAX_TEXT_CHARS) -> None:
    """Refuse a text longer than ``limit`` characters, or one that is not valid Unicode (a lone surrogate
    cannot be stored or shown), before it is parsed; the message shows only its start."""
    if not isinstance(text, str):
        return
    if len(text) > limit:
        raise SpecError(field_name, excerpt(text), f"at most {limit:,} characters (this has {len(text):,})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SpecError(field_name, excerpt(text), f"text that is valid Unicode (character {exc.start} is a lone "
                                                   f"surrogate, {text[exc.start]!r})") from None


def _check_int(name: str, v: Any, lo: int, hi: int, none_ok: bool = False) -> None:
    if v is None and none_ok:
        return
    unset = " (or unset for the model default)" if none_ok else ""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:  # named, never printed in full
        v = f"a whole number of {v.bit_length():,} bits"
    elif not isinstance(v, (int, float)):
        v = excerpt(v)
    check_int(name, v, lo, hi, f"a whole number from {lo} to {hi}{unset}")


def validate(spec: RunSpec) -> None:
    """Field-by-field checks that need no model; raises ``SpecError`` at the first problem."""

    if not isinstance(spec.model, str) or not spec.model.strip():
        names = [f"'{name}'" for name in EMBEDDED_MODELS]
        raise SpecError("model", excerpt(spec.model), f"{', '.join(names[:-1])} or {names[-1]} (embedded), a "
                                                      "diffusers pipeline folder, or a cached repo id")
    check_text("model", spec.model, MAX_MODEL_CHARS)
    # 1. prompts (how many is checked before each is read)
    if spec.prompt_set is not None:
        if spec.prompt_set not in PROMPT_SETS:
            raise SpecError("prompt_set", spec.prompt_set, f"one of {', '.join(PROMPT_SETS)}")
        if spec.prompts and list(spec.prompts) != PROMPT_SETS[spec.prompt_set]:  # resolved specs carry both
            raise SpecError("prompts", list(spec.prompts), "empty when prompt_set is given (use one or the other)")
    elif not spec.prompts:
        raise SpecError("prompts", [], "at least one prompt, or a prompt_set")
    if len(spec.prompts) > MAX_IMAGES:
        raise SpecError("prompts", excerpt(list(spec.prompts)), f"at most {MAX_IMAGES} images per run, so at most "
                                                                f"{MAX_IMAGES} prompts ({len(spec.prompts):,} given)")
    for p in spec.prompts:
        if not isinstance(p, str) or not p.strip():
            raise SpecError("prompts", excerpt(p), "non-empty text")
        if len(p) > MAX_PROMPT_CHARS:
            raise SpecError("prompts", excerpt(p), f"at most {MAX_PROMPT_CHARS} characters per prompt "
                            f"(this one has {len(p):,}; the text encoder reads only its first tokens anyway)")
        check_text("prompts", p)
        if any(ord(c) < 32 and c not in "\t" or ord(c) == 127 for c in p):
            raise SpecError("prompts", p[:EXCERPT_CHARS], "text without control characters (NUL, newlines, escapes)")
    # 2. seeds (how many is checked before each is read)
    if not spec.seeds:
        raise SpecError("seeds", [], "at least one seed")
    n_prompts = len(spec.prompts) or len(PROMPT_SETS.get(spec.prompt_set or "", []))
    if max(n_prompts, 1) * len(spec.seeds) > MAX_IMAGES:
        raise SpecError("seeds", excerpt(list(spec.seeds)), f"at most {MAX_IMAGES} images per run (prompts x seeds: "
                                                            f"{n_prompts} x {len(spec.seeds):,})")
    for s in spec.seeds:
        _check_int("seeds", s, 0, 2**63 - 1)
    if len(set(spec.seeds)) != len(spec.seeds):
        raise SpecError("seeds", excerpt(list(spec.seeds)), "distinct seeds")
    # 3. sampling
    _check_int("steps", spec.steps, 1, MAX_STEPS, none_ok=True)
    if spec.sampler != "default" and spec.sampler not in SAMPLERS:
        raise SpecError("sampler", spec.sampler, f"'default' or one of {', '.join(SAMPLERS)}")
    if spec.timestep_spacing is not None and spec.timestep_spacing not in TIMESTEP_SPACINGS:
        raise SpecError("timestep_spacing", spec.timestep_spacing, f"unset or one of {', '.join(TIMESTEP_SPACINGS)}")
    if spec.flow_shift is not None:
        check_number("flow_shift", spec.flow_shift, MIN_FLOW_SHIFT, MAX_FLOW_SHIFT,
                     f"unset (the model's own) or a number from {MIN_FLOW_SHIFT:g} to {MAX_FLOW_SHIFT:g}")
    if spec.guidance is not None:
        check_number("guidance", spec.guidance, 0, MAX_GUIDANCE,
                     f"a number from 0 to {MAX_GUIDANCE:g} (1 or less disables guidance)")
    # 4. shape and execution
    for name in ("height", "width"):
        _check_int(name, getattr(spec, name), 8, 8192, none_ok=True)
    _check_int("batch_size", spec.batch_size, 1, MAX_IMAGES, none_ok=True)
    if spec.precision not in PRECISIONS:
        raise SpecError("precision", spec.precision, f"one of {', '.join(PRECISIONS)}")
    if spec.device not in DEVICES:
        raise SpecError("device", spec.device, f"one of {', '.join(DEVICES)}")
    for name, cap, until in (("warmup", MAX_WARMUP, "until two calls agree"),
                             ("repeats", MAX_REPEATS, "until the median is stable")):
        value = getattr(spec, name)
        if not (type(value) is int and (value == AUTO or 1 <= value <= cap)):
            shown = f"a whole number of {value.bit_length():,} bits" if is_int(value) and value.bit_length() > 128 \
                else (value if isinstance(value, (int, float)) else excerpt(value))
            raise SpecError(name, shown, f"a whole number from 1 to {cap}, or \"auto\" (also 0: {until})")
    d = spec.distribution
    if not (type(d) is int and (d == 0 or MIN_DISTRIBUTION <= d <= MAX_DISTRIBUTION)):
        raise SpecError("distribution", d if isinstance(d, (int, float)) else excerpt(d),
                        f"0 (no distribution metrics) or a whole number of images from {MIN_DISTRIBUTION} "
                        f"to {MAX_DISTRIBUTION}")
    # 5. the other knobs: each validates its own settings
    if not isinstance(spec.knobs, dict):
        raise SpecError("knobs", spec.knobs, "a mapping of knob name to its settings")
    for name, settings in spec.knobs.items():
        if name not in KNOBS or KNOBS[name].builtin_field:
            extra = sorted(k for k, v in KNOBS.items() if not v.builtin_field)
            raise SpecError("knobs", name, f"one of {', '.join(extra) or '(none registered)'}")
        KNOBS[name].parse(settings)


@dataclass(frozen=True)
class ModelInfo:
    """What the configs of a pipeline folder say, read without loading any weights."""

    path: str
    pipeline_class: str
    scheduler_class: str
    compatible_schedulers: tuple[str, ...]
    sample_size: int | None  # native resolution in pixels
    size_multiple: int  # height and width must be multiples of this
    num_train_timesteps: int
    denoiser: str  # "unet" or "transformer"
    time_cond_proj_dim: int | None
    defaults: dict
    fingerprint: str  # the content of every file the loader reads (studio_core.fingerprint)
    prediction_type: str = "epsilon"  # what the denoiser predicts: epsilon, v_prediction, flow or consistency
    defaults_source: dict = field(default_factory=dict)  # default's name -> where it came from
    unsupported: str | None = None  # why the studio cannot drive this pipeline; None when it can
    scheduler_config: dict = field(default_factory=dict)  # scheduler_config.json: what its timesteps depend on
    domain: str | None = None  # studio_defaults.json's "domain" ("emoji": a model the emoji feature network knows)
    student: dict | None = None  # a distilled student's record (``models.student_info``); None for other models

    @property
    def is_embedded(self) -> bool:
        """One of the models this project ships (``EMBEDDED_MODELS``), by its folder."""
        return Path(self.path).resolve() in {folder.resolve() for folder in EMBEDDED_MODELS.values()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _vae_compression(index: dict, vae_cfg: dict) -> tuple[int, str]:
    """Image pixels per latent pixel along a side, and the VAE it comes from; 1 in pixel space (no VAE)."""
    vae = index.get("vae")
    if not (isinstance(vae, list) and vae[0]):
        return 1, "no VAE: pixel space"
    levels = vae_cfg.get(_VAE_LEVELS.get(vae[1], "block_out_channels"))
    if not levels:  # diffusers' pipelines assume 8 where the VAE config does not say
        return 8, f"{vae[1]} (8x assumed)"
    return 2 ** (len(levels) - 1), f"{vae[1]} {2 ** (len(levels) - 1)}x"


def _geometry(index: dict, denoiser: str, den_cfg: dict, vae_cfg: dict) -> tuple[int | None, int, str]:
    """(native size in px, the multiple height and width must be, how the native size was found).

    Native: the denoiser's ``sample_size`` latent pixels (or the size the pipeline hard-codes, Flux's 128)
    times the VAE's compression, what the pipeline computes when called without a size. Multiple: the VAE's
    compression times, for a UNet, its downsamplings, for a transformer, its patch size, and 2 more where
    the pipeline packs 2x2 latent patches into channels (Flux: in_channels = 4 x the VAE's latent channels)."""
    compression, vae_text = _vae_compression(index, vae_cfg)
    if denoiser == "unet":
        multiple = compression * 2 ** (len(den_cfg.get("block_out_channels", [0])) - 1)
    else:
        latent_channels = vae_cfg.get("latent_channels", vae_cfg.get("z_dim"))
        packed = 2 if latent_channels and den_cfg.get("in_channels") == 4 * latent_channels else 1
        multiple = compression * int(den_cfg.get("patch_size", 2) or 1) * packed
    facts = SUPPORTED_PIPELINES.get(index.get("_class_name", ""))
    sample = den_cfg.get("sample_size")
    if isinstance(sample, int):
        return sample * compression, multiple, f"{denoiser} sample_size {sample} x {vae_text}"
    if facts and facts.default_sample_size:
        return (facts.default_sample_size * compression, multiple,
                f"{index['_class_name']} default_sample_size {facts.default_sample_size} x {vae_text}")
    return None, multiple, "unknown: the denoiser config has no sample_size"


def model_info(model: str) -> ModelInfo:
    """Read a pipeline folder's configs; ``SpecError`` on field ``model`` when it is not a pipeline."""

    try:
        path = Path(resolve_model(model))
        index = check_pipeline_folder(path)
        fingerprint = model_fingerprint(path, index)
    except ModelLoadError as exc:
        raise SpecError("model", excerpt(model), f"a diffusers pipeline folder ({exc})") from None
    sched = _read_json(path / "scheduler" / "scheduler_config.json")
    denoiser = "unet" if (path / "unet").is_dir() else "transformer"
    den_cfg = _read_json(path / denoiser / "config.json")
    sample_px, multiple, size_source = _geometry(index, denoiser, den_cfg, _read_json(path / "vae" / "config.json"))
    defaults, sources = model_defaults_with_sources(path)
    for name in ("height", "width"):
        sources.setdefault(name, f"native: {size_source}")
    scheduler_class = sched.get("_class_name", "")
    return ModelInfo(
        path=str(path), pipeline_class=index.get("_class_name", ""), scheduler_class=scheduler_class,
        compatible_schedulers=compatible_names(scheduler_class), sample_size=sample_px, size_multiple=multiple,
        num_train_timesteps=int(sched.get("num_train_timesteps", 1000)), denoiser=denoiser,
        time_cond_proj_dim=den_cfg.get("time_cond_proj_dim"), defaults=defaults,
        fingerprint=fingerprint,
        prediction_type=model_kind(sched, den_cfg.get("time_cond_proj_dim")), defaults_source=sources,
        unsupported=unsupported_reason(index) or (None if sample_px else f"its native size is {size_source}"),
        scheduler_config=sched, domain=_read_json(path / "studio_defaults.json").get("domain"),
        student=student_info(path),
    )


# Schedulers whose "leading" spacing can index past the end of the training schedule (diffusers 0.42.1, where
# it fails mid-run with "IndexError: index 1000 is out of bounds"). The timestep-indexed ones end at timestep
# (steps - 1) * (T // steps) + steps_offset; the multistep solvers divide T by steps + 1, so need fewer than T.
# Sigma schedules (Karras, exponential, beta, flow) interpolate and take any count up to T.
_INDEXED_SCHEDULERS = frozenset({"DDIMScheduler", "DDPMScheduler", "PNDMScheduler"})
_MULTISTEP_SCHEDULERS = frozenset({"DPMSolverMultistepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler"})
_SIGMA_SCHEDULES = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas")


def scheduler_steps_reason(info: ModelInfo, sampler: str, timestep_spacing: str | None, steps: int) -> str | None:
    """Why the scheduler a run would use (the sampler's class over the model's config, as ``from_config``
    builds it) cannot take ``steps`` on this model, or None when it can."""
    config, cls = dict(info.scheduler_config), info.scheduler_class
    if sampler in SAMPLERS:
        cls = SAMPLERS[sampler].cls
        config.update(SAMPLERS[sampler].overrides)
    if cls in CONSISTENCY_SCHEDULERS:  # diffusers 0.42.1 raises in set_timesteps past this schedule's length
        original = int(config.get("original_inference_steps") or 50)
        if steps > original:
            return (f"at most {original} for {'the model default' if sampler == 'default' else sampler} ({cls}): "
                    f"its steps are picked from the {original}-step schedule the model was distilled on "
                    "(original_inference_steps)")
        return None
    own = "linspace" if cls in _MULTISTEP_SCHEDULERS else "leading"  # the class's default spacing
    spacing = timestep_spacing or config.get("timestep_spacing") or own
    if spacing != "leading" or any(config.get(k) for k in _SIGMA_SCHEDULES):
        return None
    total, offset = info.num_train_timesteps, int(config.get("steps_offset") or 0)
    name = f"{'the model default' if sampler == 'default' else sampler} ({cls}, 'leading' timestep spacing)"
    if cls in _MULTISTEP_SCHEDULERS and steps >= total:
        return (f"at most {total - 1} for {name}: it spaces {steps} steps over the model's {total} training "
                "timesteps in steps of 0 (or use timestep_spacing 'trailing')")
    last = (steps - 1) * (total // steps) + offset
    if cls in _INDEXED_SCHEDULERS and last >= total:
        return (f"at most {total - offset} for {name}: {steps} steps end at timestep {last} (steps_offset {offset}), "
                f"past the model's last training timestep {total - 1} (or use timestep_spacing 'trailing')")
    return None


def defaults_text(info: ModelInfo) -> str:
    """The model's defaults and where each came from, for the page, e.g. "28 steps, guidance 7
    (StableDiffusion3Pipeline's defaults); 64x64 px (native: transformer sample_size 8 x AutoencoderKL 8x)"."""
    if info.unsupported:
        return f"no defaults: {info.unsupported}"
    d, src = info.defaults, info.defaults_source
    height, width = d.get("height") or info.sample_size, d.get("width") or info.sample_size
    by_source: dict[str, list[str]] = {}  # "28 steps, guidance 7" share one "(... defaults)"
    for text, key in ((f"{d['num_inference_steps']} steps", "num_inference_steps"),
                      (f"guidance {d['guidance_scale']:g}", "guidance_scale"), (f"{height}x{width} px", "height")):
        source = src[key]
        by_source.setdefault(source.replace(".__call__", "'s defaults"), []).append(text)
    return "; ".join(f"{', '.join(texts)} ({source})" for source, texts in by_source.items())


def resolve(spec: RunSpec, info: ModelInfo | None = None) -> tuple[RunSpec, ModelInfo]:
    """A fully concrete spec (model defaults and prompt set filled in), checked against the model."""

    validate(spec)
    info = info or model_info(spec.model)
    if info.unsupported:
        raise SpecError("model", excerpt(spec.model), info.unsupported)
    d = info.defaults
    native = info.sample_size
    spec = replace(
        spec,
        prompts=tuple(PROMPT_SETS[spec.prompt_set]) if spec.prompt_set else tuple(p.strip() for p in spec.prompts),
        steps=spec.steps if spec.steps is not None else int(d["num_inference_steps"]),
        guidance=float(spec.guidance if spec.guidance is not None else d["guidance_scale"]),
        flow_shift=None if spec.flow_shift is None else float(spec.flow_shift),  # 2 and 2.0: one configuration
        height=spec.height if spec.height is not None else int(d.get("height") or native),
        width=spec.width if spec.width is not None else int(d.get("width") or native),
    )
    if spec.steps > info.num_train_timesteps:
        raise SpecError("steps", spec.steps, f"at most the model's {info.num_train_timesteps} training timesteps")
    reason = scheduler_steps_reason(info, spec.sampler, spec.timestep_spacing, spec.steps)
    if reason:
        raise SpecError("steps", spec.steps, reason)
    plan = plan_for(spec, MAX_IMAGE_STEPS)  # an "auto" count's maximum is lowered to fit; its minimum must
    work = spec.steps * spec.n_images * plan.min_passes
    if work > MAX_IMAGE_STEPS:
        passes = f"{plan.warmup_min} + {plan.repeats_min}" + (" at least (auto)" if AUTO in (spec.warmup, spec.repeats)
                                                              else "")
        raise SpecError("steps", spec.steps, f"at most {MAX_IMAGE_STEPS:,} denoiser steps per run: steps x images x "
                                             f"(warm-up + repeats) is {spec.steps} x {spec.n_images} x "
                                             f"({passes}) = {work:,}")
    if spec.steps * spec.distribution > MAX_IMAGE_STEPS:
        raise SpecError("distribution", spec.distribution, f"at most {MAX_IMAGE_STEPS // spec.steps:,} images at "
                                                           f"{spec.steps} steps ({MAX_IMAGE_STEPS:,} denoiser steps "
                                                           "per distribution set)")
    facts = SUPPORTED_PIPELINES[info.pipeline_class]
    if spec.steps < facts.min_steps:
        raise SpecError("steps", spec.steps, f"at least {facts.min_steps} for {info.pipeline_class}: "
                                             f"{facts.min_steps_reason}")
    if spec.sampler in SAMPLERS and spec.steps < SAMPLERS[spec.sampler].min_steps:
        raise SpecError("steps", spec.steps, f"at least {SAMPLERS[spec.sampler].min_steps} for {spec.sampler} "
                                             "(its Runge-Kutta warm start needs them)")
    for name in ("height", "width"):
        v = getattr(spec, name)
        hi = 4 * native
        if v % info.size_multiple or v > hi:
            raise SpecError(name, v, f"a multiple of {info.size_multiple} up to {hi} px for this model "
                                     f"(native {native} px)")
    for knob, settings in knobs_in(spec):
        reason = knob.check_model(info, settings) or knob.check_spec(spec, settings)
        if reason:
            raise SpecError(knob.field_name, knob.describe(settings), reason)
    return spec, info
