"""Transformer feature caching through diffusers' own cache hooks (``CacheMixin.enable_cache``).

Adjacent denoising steps of a diffusion transformer compute nearly the same features, so part of the
work of one step can be reused (or extrapolated) from earlier steps. diffusers ships five such caches as
hooks on the transformer's blocks or attention layers; this knob switches one of them on for a run with
``transformer.enable_cache(config)`` and off again with ``disable_cache()``:

* ``first_block`` (First Block Cache; Cheng, ParaAttention 2025, after TeaCache: Liu et al., "Timestep
  Embedding Tells: It's Time to Cache for Video Diffusion Model", CVPR 2025): the first block always runs;
  when its output residual changed by less than ``threshold`` (relative mean absolute difference) since the
  last full step, every other block is skipped and their cached residual is added instead.
* ``pyramid_attention_broadcast`` (PAB; Zhao et al., "Real-Time Video Generation with Pyramid Attention
  Broadcast", ICLR 2025): inside the timestep window ``skip_timestep_min < t < skip_timestep_max`` each
  attention layer is computed once every ``block_skip_range`` calls and its output broadcast in between.
* ``faster`` (FasterCache; Lv et al., "FasterCache: Training-Free Video Diffusion Model Acceleration with
  High Quality", ICLR 2025): like PAB inside its window, but a skipped attention output is extrapolated from
  the last two computed ones, ``o_t + w * (o_t - o_{t-1})`` with ``attention_weight`` w. Its second half,
  CFG-Cache (approximating the unconditional branch of a batched CFG call in frequency space), is switched
  off (diffusers' ``is_guidance_distilled=True``): Flux and most transformer pipelines run the conditional
  and unconditional passes as separate calls, which CFG-Cache would mis-split.
* ``taylorseer`` (TaylorSeer; Liu et al., "From Reusing to Forecasting: Accelerating Diffusion Models with
  TaylorSeers", ICCV 2025): attention outputs are computed for the first ``disable_cache_before_step`` calls
  and then once every ``cache_interval``; in between they are predicted by a Taylor expansion of order
  ``max_order`` from finite differences of the computed ones.
* ``mag`` (MagCache; Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache", 2025): the
  ratio of residual magnitudes between consecutive steps is a stable, model-specific curve (``mag_ratios``);
  after the first ``retention_ratio`` of the steps, the whole block stack is skipped (cached residual added)
  while the accumulated error ``sum |1 - prod ratios|`` stays under ``threshold``, at most ``max_skip_steps``
  in a row.

Every setting left unset (None) takes the method's own diffusers default (``DIFFUSERS_DEFAULTS``); a setting
that does not belong to the chosen method is an error, not silently ignored.

MagCache's ratios: diffusers 0.42.1 refuses ``MagCacheConfig`` without ``mag_ratios`` (or ``calibrate=True``,
which never skips and only prints the ratios); it ships ratios for FLUX.1-dev only (``FLUX_MAG_RATIOS``, 28
steps). Left unset, this knob uses the ratios shipped in the model folder (``mag_ratios.json``, written by
``_mag_ratios.write_mag_ratios`` over several prompts and seeds) when they were measured on its weights with the
run's scheduler, and otherwise calibrates them: before the run, one untimed pipeline call without caching (fixed
prompt and seed, the model's default resolution and guidance, ``calibration_steps`` = the model's default step
count unless set) measures them with diffusers' calibration formula (mean over tokens of ``|r_t| / |r_{t-1}|``
for the residual ``r`` of the block stack), kept per model, scheduler, step count and resolution for the rest of
the process. ``mag_ratios`` may also name the source ("shipped", "calibrate", "flux1" for diffusers' FLUX.1-dev
ones) or give the numbers. The run's knob report says which ratios ran, and when diffusers interpolated them
(nearest) to another step count (``_mag_ratios.py``).

Guidance as two calls per step (FluxPipeline's true CFG, as emoji-flux runs): the pipeline names them
``cache_context("cond")`` / ``("uncond")``. First Block Cache, TaylorSeer and MagCache key their state on that
name; PAB and FasterCache keep one state per hook, so the knob gives them one per context
(``_cache_contexts.per_context_states``): otherwise the unconditional call would reuse the attention output the
conditional call just computed, and guidance would quietly fade.

Proof that the cache fired: ``LayerCounter`` counts the transformer's linear layers that ran in each denoiser
call of the first warm-up call. A call that ran fewer than the full count reused the cache (a *hit*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, get_args

from studio_core.errors import ModelLoadError, SpecError
from studio_core.knobs import register
from studio_core.knobs._cache_contexts import per_context_states
from studio_core.knobs._hooks import LayerCounter, denoiser_config, denoiser_of, install
from studio_core.knobs._mag_ratios import (
    SHIPPED_FILE,
    MagSteps,
    calibrate_mag_ratios,
    parse_ratios,
    ratios_for,
    ratios_source,
    read_shipped,
    shipped_ratios,
    transformer_blocks,
)
from studio_core.knobs._validate import check_choice, check_int, check_number
from studio_core.knobs.base import Applied, Knob, KnobReport

__all__ = ["CACHE_TRANSFORMERS", "DIFFUSERS_DEFAULTS", "METHODS", "TransformerCacheKnob", "TransformerCacheSettings",
           "calibrate_mag_ratios"]

Method = Literal["first_block", "faster", "pyramid_attention_broadcast", "taylorseer", "mag"]
METHODS: tuple[str, ...] = get_args(Method)
CONFIGS = {"first_block": "FirstBlockCacheConfig", "faster": "FasterCacheConfig",
           "pyramid_attention_broadcast": "PyramidAttentionBroadcastConfig", "taylorseer": "TaylorSeerCacheConfig",
           "mag": "MagCacheConfig"}
BLOCK_METHODS = ("first_block", "mag")  # hook whole transformer blocks (the others hook attention layers)

# which settings each method reads (anything else set for it is an error)
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "first_block": ("threshold",),
    "pyramid_attention_broadcast": ("block_skip_range", "skip_timestep_min", "skip_timestep_max"),
    "faster": ("block_skip_range", "skip_timestep_min", "skip_timestep_max", "attention_weight"),
    "taylorseer": ("cache_interval", "disable_cache_before_step", "max_order"),
    "mag": ("threshold", "max_skip_steps", "retention_ratio", "mag_ratios", "calibration_steps"),
}

# diffusers 0.42.1's defaults of those settings (tests check them against the config classes); PAB has no
# block-skip default of its own (it warns and uses 2)
DIFFUSERS_DEFAULTS: dict[str, dict[str, object]] = {
    "first_block": {"threshold": 0.05},
    "pyramid_attention_broadcast": {"block_skip_range": 2, "skip_timestep_min": 100, "skip_timestep_max": 800},
    "faster": {"block_skip_range": 2, "skip_timestep_min": -1, "skip_timestep_max": 681, "attention_weight": 0.5},
    "taylorseer": {"cache_interval": 5, "disable_cache_before_step": 3, "max_order": 1},
    "mag": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2},
}

# diffusers 0.42.1's transformer classes with CacheMixin -> whether diffusers has block metadata
# (``TransformerBlockRegistry``) for the blocks of its module, which the block caches (first_block, mag) need;
# read from the model's config without importing diffusers, and checked against it by the tests
CACHE_TRANSFORMERS: dict[str, bool] = {
    "AceStepTransformer1DModel": False, "AllegroTransformer3DModel": False, "BriaTransformer2DModel": True,
    "ChromaTransformer2DModel": False, "ChronoEditTransformer3DModel": False, "CogVideoXTransformer3DModel": True,
    "CogView4Transformer2DModel": True, "Cosmos3OmniTransformer": True, "Flux2Transformer2DModel": True,
    "FluxTransformer2DModel": True, "GlmImageTransformer2DModel": False, "HeliosTransformer3DModel": False,
    "HunyuanImageTransformer2DModel": True, "HunyuanVideo15Transformer3DModel": False,
    "HunyuanVideoFramepackTransformer3DModel": True, "HunyuanVideoTransformer3DModel": True,
    "Kandinsky5Transformer3DModel": True, "Kandinsky6Transformer3DModel": False, "LTX2VideoTransformer3DModel": False,
    "LTXVideoTransformer3DModel": True, "LatteTransformer3DModel": True, "LongCatImageTransformer2DModel": False,
    "MiniMaxH3Transformer3DModel": False, "MochiTransformer3DModel": True, "MotifVideoTransformer3DModel": True,
    "NucleusMoEImageTransformer2DModel": False, "OvisImageTransformer2DModel": False,
    "QwenImage21Transformer2DModel": False, "QwenImageControlNetModel": True, "QwenImageMultiControlNetModel": True,
    "QwenImageTransformer2DModel": True, "SanaWMLTX2RefinerTransformer3DModel": False,
    "SkyReelsV2Transformer3DModel": False, "WanAnimateTransformer3DModel": False, "WanTransformer3DModel": True,
    "WanVACETransformer3DModel": True,
}
STEPS_HOOK = "studio_transformer_cache_steps"  # MagCache's step count, set before each denoiser call


@dataclass(frozen=True)
class TransformerCacheSettings:
    method: Method = "first_block"
    threshold: float | None = None  # first_block, mag
    block_skip_range: int | None = None  # pyramid_attention_broadcast, faster
    skip_timestep_min: float | None = None  # pyramid_attention_broadcast, faster (0-1000 training scale)
    skip_timestep_max: float | None = None
    attention_weight: float | None = None  # faster
    cache_interval: int | None = None  # taylorseer
    disable_cache_before_step: int | None = None
    max_order: int | None = None
    max_skip_steps: int | None = None  # mag
    retention_ratio: float | None = None
    mag_ratios: str | None = None  # mag: None = shipped or calibrated, "shipped", "calibrate", "flux1", or numbers
    calibration_steps: int | None = None


def effective(settings: TransformerCacheSettings) -> dict[str, object]:
    """The method's settings with diffusers' defaults filled in for the unset ones."""
    out = dict(DIFFUSERS_DEFAULTS.get(settings.method, {}))
    for name in METHOD_FIELDS[settings.method]:
        value = getattr(settings, name)
        if value is not None:
            out[name] = value
    return out


# ------------------------------------------------------------------------------------------ model checks
def _unregistered(classes) -> list[str]:
    """Names of the block classes diffusers has no ``TransformerBlockRegistry`` metadata for."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    missing = []
    for cls in classes:
        try:
            TransformerBlockRegistry.get(cls)
        except ValueError:
            if cls.__name__ not in missing:
                missing.append(cls.__name__)
    return missing


def _attention_layers(transformer, method: str) -> list[str]:
    """Names of the attention layers the method's hooks would attach to (diffusers' own matching rules)."""
    import re

    from diffusers.hooks._common import _ATTENTION_CLASSES

    if method == "pyramid_attention_broadcast":
        from diffusers.hooks._common import _SPATIAL_TRANSFORMER_BLOCK_IDENTIFIERS as pab

        return [n for n, m in transformer.named_modules() if isinstance(m, _ATTENTION_CLASSES)
                and not getattr(m, "is_cross_attention", False) and any(re.search(p, n) for p in pab)]
    if method == "faster":
        from diffusers.hooks.faster_cache import _SPATIAL_ATTENTION_BLOCK_IDENTIFIERS as fc

        return [n for n, m in transformer.named_modules() if isinstance(m, _ATTENTION_CLASSES)
                and not getattr(m, "is_cross_attention", False) and any(re.search(p, n) for p in fc)]
    from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS as ts

    return [n for n, _m in transformer.named_modules() if any(re.fullmatch(p, n) for p in ts)]


def _single_state_hooks(transformer) -> list:
    """PAB's and FasterCache's hooks on the transformer and its layers: one ``state`` each, not one per context."""
    from diffusers.hooks.faster_cache import FasterCacheBlockHook, FasterCacheDenoiserHook
    from diffusers.hooks.pyramid_attention_broadcast import PyramidAttentionBroadcastHook

    kinds = (FasterCacheBlockHook, FasterCacheDenoiserHook, PyramidAttentionBroadcastHook)
    return [hook for module in transformer.modules() if getattr(module, "_diffusers_hook", None) is not None
            for hook in module._diffusers_hook.hooks.values() if isinstance(hook, kinds)]


def _uses_cache_context(pipe) -> bool:
    """Whether the pipeline names its denoiser calls (``transformer.cache_context``), as stateful hooks need."""
    import inspect

    try:
        return "cache_context" in inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):  # no source to read: assume it does
        return True


# ------------------------------------------------------------------------------------------ the knob
@register
class TransformerCacheKnob(Knob):
    name = "transformer_cache"
    title = "Transformer cache (diffusers hooks)"
    description = ("Reuse transformer features between denoising steps with one of diffusers' cache hooks: First "
                   "Block Cache, FasterCache, Pyramid Attention Broadcast, TaylorSeer or MagCache.")
    Settings = TransformerCacheSettings
    order = 63
    group = "caching & tokens"

    # ---- settings
    def validate(self, settings: TransformerCacheSettings) -> None:
        f = self.field_name
        check_choice(f"{f}.method", settings.method, METHODS)
        used = METHOD_FIELDS[settings.method]
        for fld in fields(settings):
            value = getattr(settings, fld.name)
            if fld.name != "method" and value is not None and fld.name not in used:
                owners = [m for m, names in METHOD_FIELDS.items() if fld.name in names]
                raise SpecError(f"{f}.{fld.name}", value, f"unset for method {settings.method} (it applies to "
                                                          f"{' and '.join(owners)} only)")

        def number(name: str, lo: float, hi: float, what: str) -> None:
            if getattr(settings, name) is not None:  # unset: the method's diffusers default
                check_number(f"{f}.{name}", getattr(settings, name), lo, hi, what)

        def whole(name: str, lo: int, hi: int, what: str) -> None:
            if getattr(settings, name) is not None:
                check_int(f"{f}.{name}", getattr(settings, name), lo, hi, what)

        number("threshold", 0, 100, "a number from 0 (never reuse) to 100")
        whole("block_skip_range", 1, 50, "a whole number from 1 (compute every call, no caching) to 50")
        for name in ("skip_timestep_min", "skip_timestep_max"):
            number(name, -1, 1000, "a timestep from -1 to 1000 (the 0-1000 training scale)")
        if settings.method in ("faster", "pyramid_attention_broadcast"):
            eff = effective(settings)
            if eff["skip_timestep_min"] >= eff["skip_timestep_max"]:
                raise SpecError(f"{f}.skip_timestep_max", eff["skip_timestep_max"],
                                f"a timestep above skip_timestep_min ({eff['skip_timestep_min']})")
        number("attention_weight", 0, 1, "a weight from 0 (reuse the last output) to 1")
        whole("cache_interval", 1, 50, "a whole number from 1 (compute every call) to 50")
        whole("disable_cache_before_step", 1, 1000, "a whole number from 1 (TaylorSeer needs one computed step "
                                                    "before it can predict)")
        whole("max_order", 0, 4, "a Taylor order from 0 (plain reuse) to 4")
        whole("max_skip_steps", 1, 50, "a whole number of consecutive skipped steps from 1 to 50")
        number("retention_ratio", 0, 1, "a fraction of the steps from 0 to 1")
        whole("calibration_steps", 2, 1000, "a whole number of steps from 2 to 1000")
        if settings.mag_ratios is not None:
            try:
                if not isinstance(settings.mag_ratios, (str, list, tuple)):
                    raise ValueError
                parse_ratios(settings.mag_ratios)
            except (ValueError, TypeError):
                raise SpecError(f"{f}.mag_ratios", settings.mag_ratios,
                                "unset (the model's shipped ratios, else calibrate on it), 'shipped', 'calibrate', "
                                "'flux1' (diffusers' FLUX.1-dev ratios), or positive numbers separated by commas"
                                ) from None

    def describe(self, settings: TransformerCacheSettings):
        return {"method": settings.method, **{k: v for k, v in (
            (fld.name, getattr(settings, fld.name)) for fld in fields(settings)) if v is not None and k != "method"}}

    def label(self, settings: TransformerCacheSettings) -> str:
        e = effective(settings)
        short = {"first_block": f"FBCache {e.get('threshold', 0):g}", "faster": "FasterCache",
                 "pyramid_attention_broadcast": f"PAB every {e.get('block_skip_range')}",
                 "taylorseer": f"TaylorSeer order {e.get('max_order')}", "mag": f"MagCache {e.get('threshold', 0):g}"}
        return short[settings.method]

    def _label(self, settings: TransformerCacheSettings, ratios_kind: str | None = None) -> str:
        e = effective(settings)
        if settings.method == "first_block":
            return f"first_block threshold {e['threshold']:g}"
        if settings.method in ("pyramid_attention_broadcast", "faster"):
            name = "PAB" if settings.method == "pyramid_attention_broadcast" else "FasterCache"
            extra = f", weight {e['attention_weight']:g}" if settings.method == "faster" else ""
            return (f"{name} attention every {e['block_skip_range']} calls for "
                    f"{e['skip_timestep_min']:g} < t < {e['skip_timestep_max']:g}{extra}")
        if settings.method == "taylorseer":
            return (f"TaylorSeer order {e['max_order']}, full every {e['cache_interval']} calls after "
                    f"{e['disable_cache_before_step']}")
        source = {"shipped": "the model's shipped", "calibrated": "calibrated on this model", "flux1": "FLUX.1-dev's",
                  "given": "given"}.get(ratios_kind or "", "the model's")
        return (f"mag threshold {e['threshold']:g}, at most {e['max_skip_steps']} skips in a row "
                f"({source} ratios)")

    # ---- support
    def check_model(self, info, settings: TransformerCacheSettings) -> str | None:
        cls_name = denoiser_config(info).get("_class_name")
        if info.denoiser == "unet":
            return ("diffusers' cache hooks apply to transformer denoisers (CacheMixin); this model's denoiser is "
                    f"{cls_name or 'a UNet'} — use DeepCache or cross-attention caching")
        if not cls_name:
            return "this model's denoiser class (none in its config) is not a diffusers model"
        if cls_name not in CACHE_TRANSFORMERS:
            return f"{cls_name} has no CacheMixin, so diffusers' cache hooks cannot be enabled on it"
        # the loaded model's own blocks are checked exactly in ``supports``
        if settings.method in BLOCK_METHODS and not CACHE_TRANSFORMERS[cls_name]:
            return (f"{settings.method} caches whole transformer blocks, and diffusers has no block metadata "
                    f"for {cls_name}'s blocks")
        if settings.method == "mag" and ratios_source(settings.mag_ratios) == "flux1" \
                and cls_name != "FluxTransformer2DModel":
            return f"mag_ratios 'flux1' were measured on FLUX.1-dev; this model's transformer is {cls_name}"
        if settings.method == "mag" and ratios_source(settings.mag_ratios) in ("default", "shipped"):
            try:  # a malformed file is an error, not a silent fall-back to calibrating
                shipped = read_shipped(info.path)
            except ModelLoadError as exc:
                return str(exc)
            if shipped is None and settings.mag_ratios is not None:
                return (f"mag_ratios 'shipped' needs the model folder's {SHIPPED_FILE}, which it does not have "
                        "(leave mag_ratios unset to calibrate them on this model)")
        return None

    def supports(self, pipe, settings: TransformerCacheSettings) -> str | None:
        from diffusers.models.cache_utils import CacheMixin

        den = denoiser_of(pipe)
        if getattr(pipe, "unet", None) is not None or den is None:
            return ("diffusers' cache hooks apply to transformer denoisers (CacheMixin); this pipeline's denoiser is "
                    f"{type(den).__name__} — use DeepCache or cross-attention caching")
        if not isinstance(den, CacheMixin):
            return f"{type(den).__name__} has no CacheMixin, so diffusers' cache hooks cannot be enabled on it"
        if den.is_cache_enabled:
            return f"{type(den).__name__} already has a cache enabled ({type(den._cache_config).__name__})"
        m = settings.method
        if m in BLOCK_METHODS:
            blocks = transformer_blocks(den)
            if len(blocks) < 2:
                return f"{m} needs at least two transformer blocks; {type(den).__name__} has {len(blocks)}"
            missing = _unregistered(type(b) for _name, b in blocks)
            if missing:
                return f"diffusers has no block metadata for {', '.join(missing)}, which {m} needs"
        else:
            if not _attention_layers(den, m):
                return f"{m} found no self-attention layer of {type(den).__name__} to hook"
        if m in ("pyramid_attention_broadcast", "faster") and not hasattr(type(pipe), "current_timestep"):
            return f"{type(pipe).__name__} does not expose current_timestep, which {m} needs"
        if m in ("first_block", "taylorseer") and not _uses_cache_context(pipe):
            return f"{type(pipe).__name__} does not name its denoiser calls (cache_context), which {m}'s state needs"
        if m == "mag" and ratios_source(settings.mag_ratios) == "shipped":
            _data, why_not = shipped_ratios(pipe, settings.calibration_steps)
            if why_not:
                return f"mag_ratios 'shipped' cannot be used: {why_not}"
        return None

    # ---- effect
    def _config(self, pipe, settings: TransformerCacheSettings, first_call: dict, ratios):
        import diffusers.hooks as dh

        e = effective(settings)
        m = settings.method
        if m == "first_block":
            return dh.FirstBlockCacheConfig(threshold=float(e["threshold"]))
        if m == "pyramid_attention_broadcast":
            return dh.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=int(e["block_skip_range"]),
                spatial_attention_timestep_skip_range=(e["skip_timestep_min"], e["skip_timestep_max"]),
                current_timestep_callback=lambda: pipe.current_timestep)
        if m == "faster":
            weight = float(e["attention_weight"])

            def timestep():  # never "inside the window" on a pipeline call's first denoiser call: nothing is
                hook = first_call.get("hook")  # cached yet (diffusers would index an empty cache)
                return math.inf if hook is None or hook.state.iteration == 0 else pipe.current_timestep

            return dh.FasterCacheConfig(
                spatial_attention_block_skip_range=int(e["block_skip_range"]),
                spatial_attention_timestep_skip_range=(e["skip_timestep_min"], e["skip_timestep_max"]),
                attention_weight_callback=lambda _module: weight, is_guidance_distilled=True,
                current_timestep_callback=timestep)
        if m == "taylorseer":
            return dh.TaylorSeerCacheConfig(cache_interval=int(e["cache_interval"]),
                                            disable_cache_before_step=int(e["disable_cache_before_step"]),
                                            max_order=int(e["max_order"]))
        return dh.MagCacheConfig(threshold=float(e["threshold"]), max_skip_steps=int(e["max_skip_steps"]),
                                 retention_ratio=float(e["retention_ratio"]), num_inference_steps=len(ratios),
                                 mag_ratios=list(ratios))

    def apply(self, pipe, settings: TransformerCacheSettings) -> Applied:
        import logging

        transformer = pipe.transformer
        first_call: dict = {}  # FasterCache's denoiser-level hook, whose call count tells the first call
        ratios, mag_info = ((), {})
        if settings.method == "mag":
            ratios, mag_info = ratios_for(pipe, settings.mag_ratios, settings.calibration_steps)
        config = self._config(pipe, settings, first_call, ratios)
        had_registry = {id(m) for m in transformer.modules() if hasattr(m, "_diffusers_hook")}
        had_forward = {id(m) for m in transformer.modules() if "forward" in m.__dict__}
        quiet = logging.getLogger("diffusers.hooks.faster_cache")  # its "experimental" notice on every enable
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            transformer.enable_cache(config)
        finally:
            quiet.setLevel(level)
        if settings.method == "faster":
            from diffusers.hooks.faster_cache import _FASTER_CACHE_DENOISER_HOOK

            first_call["hook"] = transformer._diffusers_hook.get_hook(_FASTER_CACHE_DENOISER_HOOK)
        undos = []  # the knob's own hooks, removed before diffusers' cache
        try:
            if settings.method == "mag":
                undos.append(install({"transformer": transformer}, STEPS_HOOK,
                                     lambda key, m: MagSteps(pipe, config, ratios)))
            if settings.method in ("faster", "pyramid_attention_broadcast"):
                undos.append(per_context_states(transformer, _single_state_hooks(transformer)))
        except BaseException:
            for remove in reversed(undos):
                remove()
            transformer.disable_cache()
            raise
        counter = LayerCounter(transformer)

        def undo() -> None:
            for remove in reversed(undos):
                remove()
            transformer.disable_cache()
            # restore: drop the forward wrappers the hooks left behind and the registries enable_cache created
            for module in transformer.modules():
                registry = getattr(module, "_diffusers_hook", None)
                if registry is None or registry.hooks:
                    continue
                if id(module) not in had_forward:
                    module.__dict__.pop("forward", None)
                if id(module) not in had_registry:
                    del module._diffusers_hook

        def report() -> KnobReport:
            return self._report(settings, counter, pipe, mag_info, ratios)

        return Applied(self.name, undo=undo, report=report, instrument=counter.counting)

    def _report(self, settings, counter: LayerCounter, pipe, mag_info: dict, ratios) -> KnobReport:
        label = self._label(settings, mag_info.get("ratios_kind"))
        details: dict = {"method": settings.method, "config": CONFIGS[settings.method], "settings": effective(settings)}
        if settings.method == "mag":
            details.update(mag_info, mag_ratios=[round(r, 5) for r in ratios])
        calls = list(counter.calls)
        if not calls:
            return KnobReport(self.name, False, f"{label}: no denoiser call was counted", details)
        full = max(calls)
        marks = "".join("F" if c == full else "C" for c in calls)  # F: full call, C: reused the cache
        hits = marks.count("C")
        layers = counter.summary()
        kinds = {type(m).__name__ for m in counter.layers}
        what = "linear layers" if kinds == {"Linear"} else "conv/linear layers"
        frac = layers["layers_run_fraction_mean"]
        steps = getattr(pipe, "_num_timesteps", None)
        details.update(denoiser_calls=len(calls), cache_hits=hits, recomputed=len(calls) - hits, call_marks=marks,
                       layers_full_call=full, **layers)
        if steps and len(calls) > steps:
            details["calls_per_step"] = round(len(calls) / steps, 3)
            details["note"] = ("several denoiser calls per step (guidance as separate cond / uncond calls): each "
                               "cache context keeps its own cache state")
        interpolated = ""
        if settings.method == "mag" and steps and int(steps) != len(ratios):
            details["mag_ratios_interpolated"] = {"from": len(ratios), "to": int(steps), "how": "nearest (diffusers)"}
            interpolated = f"; ratios interpolated (nearest) from {len(ratios)} to {int(steps)} steps"
        if hits:
            summary = (f"{label}: {hits} of {len(calls)} denoiser calls reused the cache; {frac:.0%} of {what} "
                       f"ran on average{interpolated}")
        else:
            summary = f"{label}: no denoiser call reused the cache (all {len(calls)} ran every layer){interpolated}"
        return KnobReport(self.name, hits > 0, summary, details)
