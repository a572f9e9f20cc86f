"""MagCache's magnitude ratios for the transformer cache knob: given, diffusers' FLUX.1-dev ones, or calibrated.

Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache" (2025): the ratio of the residual
magnitudes of consecutive denoising steps is a stable, model-specific curve, from which MagCache decides
which steps may reuse the cached residual. diffusers 0.42.1 ships that curve for FLUX.1-dev only
(``FLUX_MAG_RATIOS``) and measures it only to print it (``MagCacheConfig(calibrate=True)``); here one
uncached pipeline call measures it with the same formula, and the result is kept per model folder,
scheduler, step count, resolution and dtype for the rest of the process. ``MagSteps`` points MagCache at
the step count of each pipeline call (diffusers interpolates the ratios, nearest, to it).
"""

from __future__ import annotations

import math
from pathlib import Path

from studio_core.errors import ModelLoadError
from studio_core.fingerprint import model_fingerprint
from studio_core.knobs._hooks import ForwardHook
from studio_core.models import check_pipeline_folder, model_defaults

__all__ = ["MAG_CALIBRATION_PROMPT", "MAG_CALIBRATION_SEED", "MagSteps", "calibrate_mag_ratios", "model_key",
           "parse_ratios", "ratios_for", "ratios_source", "transformer_blocks"]

MAG_CALIBRATION_PROMPT = "a photo of a cat"
MAG_CALIBRATION_SEED = 0
_MAG_RATIOS: dict[tuple, tuple[float, ...]] = {}  # calibrated ratios, kept per model / scheduler / steps / size

def ratios_source(value) -> str:
    """Where MagCache's ratios come from: "calibrate" (unset), "flux1" (diffusers' FLUX.1-dev ones) or "given"."""
    if value is None:
        return "calibrate"
    if isinstance(value, str) and value.strip().lower() in ("flux1", "calibrate"):
        return value.strip().lower()
    return "given"


def parse_ratios(value) -> tuple[float, ...] | None:
    """``mag_ratios`` as numbers: None for "calibrate" / "flux1", a tuple for explicit ratios; ValueError if bad."""
    if ratios_source(value) != "given":
        return None
    parts = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    ratios = tuple(float(p) for p in parts)
    if not ratios or not all(math.isfinite(r) and r > 0 for r in ratios):
        raise ValueError("ratios must be positive numbers")
    return ratios



def transformer_blocks(transformer) -> list[tuple[str, object]]:
    """(name, block) of every transformer block diffusers' block caches hook, in their order."""
    import torch

    try:
        from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS as names
    except ImportError:  # pragma: no cover - older layout
        names = ("blocks", "transformer_blocks", "single_transformer_blocks", "layers")
    return [(f"{name}.{i}", block) for name, child in transformer.named_children()
            if name in names and isinstance(child, torch.nn.ModuleList) for i, block in enumerate(child)]



def _residual(out, inp):
    """The block stack's residual, as diffusers' MagCache computes it (image tokens at the end)."""
    if out.shape == inp.shape:
        return out - inp
    if out.ndim == 3 and inp.ndim == 3 and out.shape[2] == inp.shape[2]:
        return out[:, -inp.shape[1]:] - inp
    return out


def calibrate_mag_ratios(pipe, steps: int, height: int | None = None, width: int | None = None,
                         guidance: float | None = None) -> tuple[float, ...]:
    """One uncached pipeline call that measures MagCache's magnitude ratios, one per denoiser call.

    The ratio of call t is ``mean_tokens(|r_t| / |r_{t-1}|)`` (1 for the first call), where ``r`` is the output
    of the last block minus the input of the first: the formula of diffusers' ``MagCacheConfig(calibrate=True)``
    (which only prints its result)."""
    import inspect

    import torch
    from diffusers.hooks._helpers import TransformerBlockRegistry

    transformer = pipe.transformer
    blocks = transformer_blocks(transformer)
    head, tail = blocks[0][1], blocks[-1][1]
    head_meta, tail_meta = TransformerBlockRegistry.get(type(head)), TransformerBlockRegistry.get(type(tail))
    ratios: list[float] = []
    state: dict = {"in": None, "prev": None}

    def before(module, args, kwargs):
        state["in"] = head_meta._get_parameter_from_args_kwargs(head_meta.hidden_states_argument_name, args, kwargs)

    def after(module, args, kwargs, output):
        out = output[tail_meta.return_hidden_states_index] if isinstance(output, tuple) else output
        res = _residual(out, state["in"]).float()
        prev = state["prev"]
        ratios.append(1.0 if prev is None else
                      float((torch.linalg.norm(res, dim=-1) / (torch.linalg.norm(prev, dim=-1) + 1e-8)).mean()))
        state["prev"] = res

    params = inspect.signature(type(pipe).__call__).parameters
    kwargs = {"num_inference_steps": steps, "height": height, "width": width, "guidance_scale": guidance,
              "output_type": "latent", "generator": torch.Generator().manual_seed(MAG_CALIBRATION_SEED)}
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k in params}
    handles = [head.register_forward_pre_hook(before, with_kwargs=True),
               tail.register_forward_hook(after, with_kwargs=True)]
    try:
        pipe(MAG_CALIBRATION_PROMPT, **kwargs)
    finally:
        for h in handles:
            h.remove()
    loop = getattr(pipe, "_num_timesteps", None) or steps
    if len(ratios) != loop:
        raise RuntimeError(f"MagCache calibration saw {len(ratios)} denoiser calls in {loop} denoising steps; "
                           "its ratios need exactly one call per step")
    return tuple(ratios)


def model_key(pipe) -> tuple[str, str, dict]:
    """(path, fingerprint, the model's documented defaults) of the folder the pipeline was loaded from; the
    fingerprint is the content of every weights, config and tokenizer file the loader reads (``fingerprint``), so
    a retrained model in the same folder is calibrated again (the scheduler is part of the calibration key on
    its own)."""
    path = str(getattr(pipe, "name_or_path", "") or "")
    try:
        check_pipeline_folder(path)
    except (ModelLoadError, OSError, ValueError):  # built in memory: key on the object
        return path or f"pipeline@{id(pipe)}", str(id(pipe.transformer)), {}
    folder = Path(path)
    return str(folder.resolve()), model_fingerprint(folder, check_pipeline_folder(folder)), model_defaults(folder)


def ratios_for(pipe, mag_ratios, calibration_steps: int | None = None) -> tuple[tuple[float, ...], dict]:
    """The ratios for a run and where they came from (calibrating once per model, if needed): ``mag_ratios`` is
    the knob's setting (None: calibrate, "flux1", or numbers), ``calibration_steps`` None: the model's default."""
    source = ratios_source(mag_ratios)
    if source == "flux1":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return tuple(float(r) for r in FLUX_MAG_RATIOS), {"ratios_source": "diffusers FLUX_MAG_RATIOS (FLUX.1-dev)"}
    given = parse_ratios(mag_ratios)
    if given is not None:
        return given, {"ratios_source": "given"}
    path, fingerprint, defaults = model_key(pipe)
    steps = int(calibration_steps or defaults.get("num_inference_steps") or 28)
    height, width = defaults.get("height"), defaults.get("width")
    sched = pipe.scheduler
    key = (path, fingerprint, type(sched).__name__, repr(sorted(dict(sched.config).items())), steps, height,
           width, str(pipe.transformer.dtype))
    reused = key in _MAG_RATIOS
    if not reused:
        _MAG_RATIOS[key] = calibrate_mag_ratios(pipe, steps, height, width, defaults.get("guidance_scale"))
    info = {"ratios_source": "calibrated on this model", "calibration_reused": reused,
            "calibration": {"steps": steps, "height": height, "width": width, "prompt": MAG_CALIBRATION_PROMPT,
                            "seed": MAG_CALIBRATION_SEED, "scheduler": type(sched).__name__}}
    return _MAG_RATIOS[key], info


class MagSteps(ForwardHook):
    """Before each denoiser call: point MagCache at the run's step count (its ratios interpolated to it)."""

    def __init__(self, pipe, config, ratios):
        self.pipe, self.config, self.ratios = pipe, config, ratios

    def forward(self, module, original, *args, **kwargs):
        n = getattr(self.pipe, "_num_timesteps", None)
        if n and int(n) != self.config.num_inference_steps:
            import torch
            from diffusers.hooks.mag_cache import nearest_interp

            self.config.num_inference_steps = int(n)
            self.config.mag_ratios = nearest_interp(torch.tensor(self.ratios), int(n))
        return original(*args, **kwargs)
