"""Per-component precision: run the denoiser, the text encoder(s) and the VAE each in fp32, fp16 or bf16.

The built-in precision knob casts the whole pipeline. Components differ in how much precision they
need: the VAE decoder of SD-class models overflows in fp16 at high resolution (SDXL's VAE is the known
case: diffusers keeps ``force_upcast`` in its config and decodes in fp32), while the text encoder runs
once per prompt and costs little whatever its precision. So a common recipe is a half-precision
denoiser with an fp32 VAE (diffusers docs, "Reduce memory usage" / "Speed up inference"; Podell et al.,
"SDXL", 2023, on the fp16 VAE overflow). ``None`` leaves a component at the run's precision.

Mechanism:

* The dtypes are a **load option** (``component_dtypes``): the engine loads a separate pipeline for
  them through diffusers' per-component ``dtype`` mapping of ``from_pretrained`` (``{"vae":
  torch.float32, "default": torch.float16}``, which also honours each model's
  ``_keep_in_fp32_modules``), so a cached pipeline never carries weights cast by an earlier run.
* At a dtype boundary the pipeline would hand, e.g., fp32 text embeddings to an fp16 UNet and fail
  ("mat1 and mat2 must have the same dtype"): diffusers pipelines make the latents in the text
  encoder's dtype and never cast between components. ``apply`` therefore registers a forward pre-hook
  on each component (the denoiser, every text encoder, and each direct child of the VAE, since
  pipelines call ``vae.decode`` rather than ``vae.forward``) that casts floating-point tensors of rank
  >= 2 (activations, embeddings) to the component's dtype. Timesteps and other rank-0/1 inputs are left
  alone, as the whole-pipeline precision leaves them (bf16 would round timestep 999 to 1000). Outputs
  are not cast back: the latents take the wider dtype of the two sides, as PyTorch's type promotion
  gives it in the scheduler step. Undo removes the hooks; the weights are only ever those loaded.

The hooks count nothing (a counter read inside the denoiser's forward would become a guard and make
``torch.compile`` recompile on every call); the report gives the dtypes of each component's
floating-point parameters, as loaded, and the boundaries that are bridged.

Device support: fp16 and bf16 weights both run on CPU with torch 2.13 (tested on the tiny pipeline:
conv, linear, group norm and SDPA all have CPU half kernels; without native half units they are
usually slower than fp32), so there is no device refusal before loading (``check_spec``); instead
``supports`` runs a few ops in each requested dtype on the loaded pipeline's device and refuses with
PyTorch's error where one fails (a device or build without a kernel for that dtype).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from studio_core.knobs import register
from studio_core.knobs._validate import check_choice
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch

__all__ = ["ComponentPrecisionKnob", "ComponentPrecisionSettings", "component_modules", "dtype_probe_reason",
           "torch_dtype"]

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS = ("fp32", "fp16", "bf16")
COMPONENTS = ("denoiser", "text_encoder", "vae")


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name ("fp32", "fp16", "bf16")."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _precision_name(dtype: torch.dtype) -> str:
    """"fp32" / "fp16" / "bf16", or torch's own name of another dtype."""
    names = {torch_dtype(p): p for p in PRECISIONS}
    return names.get(dtype, str(dtype).replace("torch.", ""))


@dataclass(frozen=True)
class ComponentPrecisionSettings:
    denoiser: Precision | None = None
    text_encoder: Precision | None = None
    vae: Precision | None = None


def component_modules(pipe, component: str) -> dict[str, torch.nn.Module]:
    """The pipeline attributes (name -> module) that make up one component: the denoiser, every text
    encoder (``text_encoder``, ``text_encoder_2``, ...), or the VAE."""
    if component == "denoiser":
        names = ("unet", "transformer", "prior")
    elif component == "text_encoder":
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    else:
        names = ("vae",)
    import torch

    return {n: m for n in names if isinstance(m := getattr(pipe, n, None), torch.nn.Module)}


def _param_dtypes(module: torch.nn.Module) -> list[str]:
    """The dtypes of a module's floating-point parameters, most parameters first."""
    counts: dict[torch.dtype, int] = {}
    for p in module.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return [_precision_name(d) for d in sorted(counts, key=counts.get, reverse=True)]


def _module_dtype(module: torch.nn.Module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


_PROBED: dict[tuple[str, torch.dtype], str | None] = {}


def dtype_probe_reason(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """Why ``dtype`` cannot run a diffusion model's basic ops on ``device`` (PyTorch's error), or None.

    Runs conv2d, group norm, linear, layer norm, SiLU/GELU and scaled-dot-product attention once on tiny
    tensors; the answer is kept per (device, dtype)."""
    import torch

    device = torch.device(device)
    key = (str(device), dtype)
    if key not in _PROBED:
        try:
            x = torch.randn(1, 8, 8, 8, device=device, dtype=dtype)
            conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(device, dtype)
            y = torch.nn.functional.silu(torch.nn.functional.group_norm(conv(x), 4))
            t = y.flatten(2).transpose(1, 2)  # (1, 64, 8) tokens
            lin = torch.nn.Linear(8, 8).to(device, dtype)
            t = torch.nn.functional.gelu(lin(torch.nn.functional.layer_norm(t, (8,))))
            q = t.view(1, 64, 2, 4).transpose(1, 2)
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
            _PROBED[key] = None
        except Exception as exc:  # a missing kernel: say which, in PyTorch's words
            _PROBED[key] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return _PROBED[key]


def _cast_inputs(dtype: torch.dtype):
    """A forward pre-hook (with kwargs) casting floating tensors of rank >= 2 to ``dtype``."""
    import torch

    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2 and value.dtype != dtype:
            return value.to(dtype)
        if isinstance(value, dict):  # e.g. SDXL's added_cond_kwargs
            return {k: cast(v) for k, v in value.items()}
        return value

    def hook(module, args, kwargs):
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    return hook


@register
class ComponentPrecisionKnob(Knob):
    name = "component_precision"
    title = "Component precision"
    description = ("Load the denoiser, text encoder and VAE each in fp32, fp16 or bf16 (blank: the run's "
                   "precision), e.g. a half-precision denoiser with an fp32 VAE.")
    Settings = ComponentPrecisionSettings
    order = 5
    group = "precision & quantization"

    def validate(self, settings: ComponentPrecisionSettings) -> None:
        for name in COMPONENTS:
            value = getattr(settings, name)
            if value is not None:
                check_choice(f"{self.field_name}.{name}", value, PRECISIONS,
                             "fp32, fp16, bf16, or unset (the run's precision)")

    def label(self, settings: ComponentPrecisionSettings) -> str:
        parts = [f"{name.replace('_', ' ')} {p}" for name, p in self.requested(settings).items()]
        return " · ".join(parts) if parts else "component precision (all as the run)"

    def is_baseline(self, settings: ComponentPrecisionSettings) -> bool:
        return all(getattr(settings, n) is None for n in COMPONENTS)

    def requested(self, settings: ComponentPrecisionSettings) -> dict[str, str]:
        return {n: getattr(settings, n) for n in COMPONENTS if getattr(settings, n) is not None}

    def check_model(self, info, settings: ComponentPrecisionSettings) -> str | None:
        if settings.text_encoder is not None:
            try:
                index = json.loads((Path(info.path) / "model_index.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                index = {}
            if not any(isinstance(index.get(n), list) and index[n][0] is not None
                       for n in ("text_encoder", "text_encoder_2", "text_encoder_3")):
                return "this pipeline has no text encoder to set the precision of"
        return None

    def load_options(self, settings: ComponentPrecisionSettings) -> dict:
        parts = tuple(sorted(self.requested(settings).items()))
        return {"component_dtypes": parts} if parts else {}

    def supports(self, pipe, settings: ComponentPrecisionSettings) -> str | None:
        for name, precision in self.requested(settings).items():
            if not component_modules(pipe, name):
                return f"this pipeline has no {name.replace('_', ' ')} to set the precision of"
            module = next(iter(component_modules(pipe, name).values()))
            device = next(module.parameters()).device
            reason = dtype_probe_reason(device, torch_dtype(precision))
            if reason:
                return f"{precision} does not run on {device} with this PyTorch build ({reason})"
        return None

    def apply(self, pipe, settings: ComponentPrecisionSettings) -> Applied:
        handles = []
        targets: list[tuple[str, torch.nn.Module]] = []
        for name in COMPONENTS:
            for attr, module in component_modules(pipe, name).items():
                if name == "vae":  # pipelines call vae.decode / vae.encode, which run its children
                    targets += [(f"{attr}.{c}", child) for c, child in module.named_children()
                                if _module_dtype(child) is not None]
                else:
                    targets.append((attr, module))
        for _label, module in targets:
            dtype = _module_dtype(module)
            if dtype is not None:
                handles.append(module.register_forward_pre_hook(_cast_inputs(dtype), with_kwargs=True))

        def undo() -> None:
            for h in handles:
                h.remove()
            handles.clear()

        def report() -> KnobReport:
            return self._report(pipe, settings)

        return Applied(self.name, undo=undo, report=report)

    def _report(self, pipe, settings: ComponentPrecisionSettings) -> KnobReport:
        requested = self.requested(settings)
        actual: dict[str, dict[str, list[str]]] = {}
        for name in COMPONENTS:
            actual[name] = {attr: _param_dtypes(m) for attr, m in component_modules(pipe, name).items()}
        main = {name: (next(iter(v.values()))[0] if v and next(iter(v.values())) else None)
                for name, v in actual.items()}  # dominant dtype of the component's first module
        mismatched = [f"{n} is {main[n]} (asked for {p})" for n, p in requested.items() if main[n] != p]
        summary = ", ".join(f"{n.replace('_', ' ')} {main[n]}" for n in COMPONENTS if main[n])
        boundaries = [f"{a} {main[a]} -> {b} {main[b]}" for a, b in (("text_encoder", "denoiser"), ("denoiser", "vae"))
                      if main[a] and main[b] and main[a] != main[b]]
        # the components left unset run in the run's precision
        run_dtypes = {main[n] for n in COMPONENTS if n not in requested and main[n]}
        details = {"requested": dict(asdict(settings)), "dtypes": actual, "component_dtype": main,
                   "run_precision": next(iter(run_dtypes)) if len(run_dtypes) == 1 else None,
                   "boundaries_cast": boundaries}
        if not requested:
            return KnobReport(self.name, False, f"{summary}: no component set, all run in the run's precision", details)
        if mismatched:
            return KnobReport(self.name, False, f"{summary}; not as asked: {'; '.join(mismatched)} (the pipeline was "
                                                "not loaded with this knob's load option)", details)
        if run_dtypes and all(p in run_dtypes for p in requested.values()):
            return KnobReport(self.name, False, f"{summary}: the components set already run in the run's precision, "
                                                "nothing differs from the precision knob alone", details)
        cast = f"; inputs cast at {', '.join(boundaries)}" if boundaries else ""
        return KnobReport(self.name, True, summary + cast, details)
