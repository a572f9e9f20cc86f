"""MagCache's magnitude ratios for the transformer cache knob: shipped with the model, calibrated, given, or
diffusers' FLUX.1-dev ones.

Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache" (2025): the ratio of the residual
magnitudes of consecutive denoising steps is a stable, model-specific curve, from which MagCache decides
which steps may reuse the cached residual. diffusers 0.42.1 ships that curve for FLUX.1-dev only
(``FLUX_MAG_RATIOS``) and measures it only to print it (``MagCacheConfig(calibrate=True)``). Here:

* **shipped**: a model folder may carry its curve in ``mag_ratios.json`` (``write_mag_ratios``: the mean over
  several prompts and seeds, since one prompt is noisy). Unless the knob names another source, a run uses it
  when it was measured on the folder's weights with the run's scheduler; diffusers interpolates it (nearest)
  to the run's step count.
* **calibrated**: otherwise one uncached pipeline call (one prompt, one seed) measures it with diffusers'
  formula, kept per model folder, scheduler, step count, resolution and dtype for the rest of the process.

Both measure it as runs generate: ``pipeline_call_kwargs`` turns the model's guidance into the pipeline's own
form (true CFG for emoji-flux, two denoiser calls per step). The curve is measured per cache context and the
conditional one is used, as diffusers advises for pipelines that run CFG as two calls; MagCache keeps a state
per context, so both branches follow it. ``MagSteps`` points MagCache at the step count of each pipeline call.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from studio_core.errors import KnobUnsupported, ModelLoadError
from studio_core.fingerprint import model_fingerprint
from studio_core.knobs._cache_contexts import DEFAULT_CONTEXT, watch_contexts
from studio_core.knobs._hooks import ForwardHook
from studio_core.models import check_pipeline_folder, load_pipeline, model_defaults, resolve_model
from studio_core.prompts import PROMPT_SETS

__all__ = ["MAG_CALIBRATION_PROMPT", "MAG_CALIBRATION_SEED", "SHIPPED_FILE", "MagSteps", "calibrate_mag_ratios",
           "measure_mag_ratios", "model_key", "parse_ratios", "ratios_for", "ratios_source", "read_shipped",
           "scheduler_identity", "shipped_ratios", "transformer_blocks", "write_mag_ratios"]

MAG_CALIBRATION_PROMPT = "a photo of a cat"
MAG_CALIBRATION_SEED = 0
SHIPPED_FILE = "mag_ratios.json"
SHIPPED_PROMPT_SET = "emoji-8"  # write_mag_ratios' default prompts, each with every seed of SHIPPED_SEEDS
SHIPPED_SEEDS = (0, 1)
NAMED_SOURCES = ("calibrate", "flux1", "shipped")
_MAG_RATIOS: dict[tuple, tuple[float, ...]] = {}  # calibrated ratios, kept per model / scheduler / steps / size


def ratios_source(value) -> str:
    """Where MagCache's ratios come from: "default" (unset: shipped when usable, else calibrated), "calibrate",
    "flux1" (diffusers' FLUX.1-dev ones), "shipped" (the model folder's ``mag_ratios.json``) or "given"."""
    if value is None:
        return "default"
    if isinstance(value, str) and value.strip().lower() in NAMED_SOURCES:
        return value.strip().lower()
    return "given"


def parse_ratios(value) -> tuple[float, ...] | None:
    """``mag_ratios`` as numbers: None for a named source, a tuple for explicit ratios; ValueError if bad."""
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


# ------------------------------------------------------------------------------------------ measuring
def _residual(out, inp):
    """The block stack's residual, as diffusers' MagCache computes it (image tokens at the end)."""
    if out.shape == inp.shape:
        return out - inp
    if out.ndim == 3 and inp.ndim == 3 and out.shape[2] == inp.shape[2]:
        return out[:, -inp.shape[1]:] - inp
    return out


def measure_mag_ratios(pipe, steps: int, pairs, height: int | None = None, width: int | None = None,
                       guidance: float | None = None) -> dict[str, tuple[float, ...]]:
    """One uncached pipeline call over ``pairs`` ((prompt, seed), one image each) that measures MagCache's
    magnitude ratios per cache context ("cond", "uncond"; "inference" where the pipeline names none).

    The ratio of step t is ``mean(|r_t| / |r_{t-1}|)`` over the tokens of every image (1 for the first step),
    where ``r`` is the output of the last block minus the input of the first: the formula of diffusers'
    ``MagCacheConfig(calibrate=True)``, which only prints its result. Every image has as many tokens, so this
    is the mean over the images of their own ratios."""
    import inspect

    import torch
    from diffusers.hooks._helpers import TransformerBlockRegistry

    from studio_core.measure.generation import pipeline_call_kwargs

    pairs = list(pairs)
    if not pairs:
        raise ValueError("no (prompt, seed) pairs to calibrate MagCache's ratios on")
    transformer = pipe.transformer
    blocks = transformer_blocks(transformer)
    head, tail = blocks[0][1], blocks[-1][1]
    head_meta, tail_meta = TransformerBlockRegistry.get(type(head)), TransformerBlockRegistry.get(type(tail))
    context = {"name": DEFAULT_CONTEXT}
    inputs: dict[str, object] = {}
    previous: dict[str, object] = {}
    ratios: dict[str, list[float]] = {}

    def enter(name: str) -> None:
        context["name"] = name

    def before(module, args, kwargs):
        inputs[context["name"]] = head_meta._get_parameter_from_args_kwargs(
            head_meta.hidden_states_argument_name, args, kwargs)

    def after(module, args, kwargs, output):
        name = context["name"]
        out = output[tail_meta.return_hidden_states_index] if isinstance(output, tuple) else output
        res = _residual(out, inputs[name]).float()
        prev = previous.get(name)
        ratios.setdefault(name, []).append(
            1.0 if prev is None else float((torch.linalg.norm(res, dim=-1)
                                            / (torch.linalg.norm(prev, dim=-1) + 1e-8)).mean()))
        previous[name] = res

    params = inspect.signature(type(pipe).__call__).parameters
    generators = [torch.Generator().manual_seed(int(seed)) for _, seed in pairs]
    kwargs = {"num_inference_steps": steps, "height": height, "width": width, "guidance_scale": guidance,
              "output_type": "latent", "generator": generators if len(pairs) > 1 else generators[0]}
    kwargs = pipeline_call_kwargs(pipe, {k: v for k, v in kwargs.items() if v is not None and k in params})
    handles = [head.register_forward_pre_hook(before, with_kwargs=True),
               tail.register_forward_hook(after, with_kwargs=True)]
    unwatch = watch_contexts(transformer, enter)
    try:
        pipe([p for p, _ in pairs], **kwargs)
    finally:
        unwatch()
        for h in handles:
            h.remove()
    loop = getattr(pipe, "_num_timesteps", None) or steps
    for name, values in ratios.items():
        if len(values) != loop:
            raise RuntimeError(f"MagCache calibration saw {len(values)} denoiser calls in context {name!r} in {loop} "
                               "denoising steps; its ratios need exactly one call per step and context")
    return {name: tuple(values) for name, values in ratios.items()}


def _conditional(by_context: dict[str, tuple[float, ...]]) -> tuple[float, ...]:
    """The conditional branch's ratios (the only branch of a pipeline that names none)."""
    return by_context.get("cond") or next(iter(by_context.values()))


def calibrate_mag_ratios(pipe, steps: int, height: int | None = None, width: int | None = None,
                         guidance: float | None = None, pairs=((MAG_CALIBRATION_PROMPT, MAG_CALIBRATION_SEED),)
                         ) -> tuple[float, ...]:
    """MagCache's ratios of the conditional branch, one per denoising step (``measure_mag_ratios``)."""
    return _conditional(measure_mag_ratios(pipe, steps, pairs, height, width, guidance))


def scheduler_identity(scheduler) -> dict:
    """The scheduler's class and configuration as JSON gives them back (private keys left out): what the
    ratios depend on besides the weights."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return {"class": type(scheduler).__name__, "config": json.loads(json.dumps(config, sort_keys=True, default=str))}


# ------------------------------------------------------------------------------------------ the shipped file
_REQUIRED = {"ratios": (list, "a list"), "steps": (int, "a whole number"), "scheduler": (str, "a string"),
             "scheduler_config": (dict, "an object"), "model_fingerprint": (str, "a string")}


def read_shipped(folder: str | Path) -> dict | None:
    """The folder's ``mag_ratios.json``, checked; None when it has none. ``ModelLoadError`` naming the file and
    what is wrong when it is malformed (never silently ignored: the knob would calibrate instead)."""
    path = Path(folder) / SHIPPED_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON ({exc}); rewrite it with write_mag_ratios") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object with the ratios and how they were measured")
    for key, (kind, what) in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ModelLoadError(f"{path}: '{key}' must be {what} (found {json.dumps(data.get(key))[:40]})")
    ratios = data["ratios"]
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0
               for r in ratios):
        raise ModelLoadError(f"{path}: 'ratios' must be positive numbers")
    if len(ratios) != data["steps"] or data["steps"] < 2:
        raise ModelLoadError(f"{path}: 'ratios' has {len(ratios)} values for 'steps' {data['steps']}; it needs one "
                             "per step, at least 2")
    return data


def shipped_ratios(pipe, calibration_steps: int | None = None) -> tuple[dict | None, str | None]:
    """The pipeline's folder's shipped ratios and, when they do not fit this pipeline, why not: measured on
    other weights, with another scheduler (a sampler swapped in), or for other steps than ``calibration_steps``.
    ``(None, reason)`` when there is no file."""
    path, fingerprint, _defaults = model_key(pipe)
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        return None, "the pipeline was not loaded from a model folder"
    data = read_shipped(folder)
    if data is None:
        return None, f"{folder} has no {SHIPPED_FILE}"
    if data["model_fingerprint"] != fingerprint:
        return data, (f"{SHIPPED_FILE} was measured on other weights (fingerprint {data['model_fingerprint']}; the "
                      f"folder's is {fingerprint})")
    run = scheduler_identity(pipe.scheduler)
    if data["scheduler"] != run["class"]:
        return data, f"{SHIPPED_FILE} was measured with {data['scheduler']}; this run uses {run['class']}"
    differ = sorted(k for k in set(run["config"]) | set(data["scheduler_config"])
                    if run["config"].get(k) != data["scheduler_config"].get(k))
    if differ:
        return data, (f"{SHIPPED_FILE} was measured with another {run['class']} configuration "
                      f"({', '.join(differ[:4])} differ)")
    if calibration_steps is not None and int(calibration_steps) != data["steps"]:
        return data, f"calibration_steps {calibration_steps} asked; {SHIPPED_FILE} holds ratios for {data['steps']}"
    return data, None


def write_mag_ratios(model_dir: str | Path, *, prompts=None, seeds=SHIPPED_SEEDS, steps: int | None = None,
                     device: str = "cpu", made_by: str | None = None) -> Path:
    """Measure MagCache's ratios of a model folder and ship them in it as ``mag_ratios.json``; returns its path.

    Uncached, fp32, the model's own scheduler, steps, size and guidance (``studio_defaults.json``); the conditional
    branch's ratios averaged over ``prompts`` (default: the emoji-8 captions) x ``seeds``. ``made_by`` is the
    command recorded as having made the file (default: this call)."""
    import diffusers
    import torch

    folder = Path(resolve_model(model_dir))
    check_pipeline_folder(folder)
    defaults = model_defaults(folder)
    steps = int(steps or defaults["num_inference_steps"])
    prompts = list(prompts or PROMPT_SETS[SHIPPED_PROMPT_SET])
    seeds = [int(s) for s in seeds]
    pipe = load_pipeline(folder, device=device)
    pairs = [(p, s) for p in prompts for s in seeds]
    by_context = measure_mag_ratios(pipe, steps, pairs, defaults.get("height"), defaults.get("width"),
                                    defaults.get("guidance_scale"))
    identity = scheduler_identity(pipe.scheduler)
    data = {
        "ratios": [round(r, 6) for r in _conditional(by_context)],
        "steps": steps, "height": defaults.get("height"), "width": defaults.get("width"),
        "guidance_scale": defaults.get("guidance_scale"), "scheduler": identity["class"],
        "scheduler_config": identity["config"], "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        "device": device, "prompts": prompts, "seeds": seeds,
        "method": ("mean over the prompts x seeds of mean_tokens(|r_t| / |r_{t-1}|), r = last block output - first "
                   "block input, uncached; the conditional branch's curve (diffusers' advice for pipelines that run "
                   "CFG as two calls)"),
        "ratios_by_context": {name: [round(r, 6) for r in values] for name, values in by_context.items()},
        "model_fingerprint": model_fingerprint(folder, check_pipeline_folder(folder)),
        "torch": str(torch.__version__), "diffusers": str(diffusers.__version__),
        "made_by": made_by or ("python -c \"from studio_core.knobs._mag_ratios import write_mag_ratios; "
                               f"write_mag_ratios('{model_dir}')\""),
    }
    path = folder / SHIPPED_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ the knob's ratios
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
    """The ratios for a run and where they came from: ``mag_ratios`` is the knob's setting (None: shipped when they
    fit the run, else calibrated once per model; or a named source, or numbers), ``calibration_steps`` None: the
    shipped file's steps or the model's default. ``KnobUnsupported`` when "shipped" ratios cannot be used."""
    source = ratios_source(mag_ratios)
    if source == "flux1":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return tuple(float(r) for r in FLUX_MAG_RATIOS), {"ratios_source": "diffusers FLUX_MAG_RATIOS (FLUX.1-dev)",
                                                         "ratios_kind": "flux1"}
    given = parse_ratios(mag_ratios)
    if given is not None:
        return given, {"ratios_source": "given", "ratios_kind": "given"}
    skipped = None
    if source in ("default", "shipped"):
        data, why_not = shipped_ratios(pipe, calibration_steps)
        if data is not None and why_not is None:
            facts = {k: data.get(k) for k in ("steps", "height", "width", "guidance_scale", "scheduler", "dtype",
                                              "seeds", "made_by")}
            return tuple(float(r) for r in data["ratios"]), {
                "ratios_source": f"shipped with the model ({SHIPPED_FILE})", "ratios_kind": "shipped",
                "shipped": {**facts, "prompts": len(data.get("prompts") or [])}}
        if source == "shipped":
            raise KnobUnsupported(f"mag_ratios 'shipped' cannot be used: {why_not}")
        skipped = why_not if data is not None else None  # a file that does not fit: say why it was not used
    path, fingerprint, defaults = model_key(pipe)
    steps = int(calibration_steps or defaults.get("num_inference_steps") or 28)
    height, width = defaults.get("height"), defaults.get("width")
    sched = pipe.scheduler
    key = (path, fingerprint, type(sched).__name__, repr(sorted(dict(sched.config).items())), steps, height,
           width, str(pipe.transformer.dtype))
    reused = key in _MAG_RATIOS
    if not reused:
        _MAG_RATIOS[key] = calibrate_mag_ratios(pipe, steps, height, width, defaults.get("guidance_scale"))
    info = {"ratios_source": "calibrated on this model", "ratios_kind": "calibrated", "calibration_reused": reused,
            "calibration": {"steps": steps, "height": height, "width": width, "prompt": MAG_CALIBRATION_PROMPT,
                            "seed": MAG_CALIBRATION_SEED, "scheduler": type(sched).__name__}}
    if skipped:
        info["shipped_not_used"] = skipped
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
