"""Weight quantization of the pipeline's Linear layers with torchao or bitsandbytes.

Storing weights in 8 bits (or fewer) instead of 16/32 cuts the memory a model needs and, where the
hardware has low-precision matrix units, the time of its matrix multiplications. Diffusion models
quantize well down to 8 bits: Li et al., "Q-Diffusion: Quantizing Diffusion Models" (ICCV 2023) keep
Stable Diffusion's quality with 8-bit weights and activations post-training, with calibration; the
schemes here are the calibration-free ones the libraries apply to a loaded model in one call.

Schemes (``scheme``):

* ``int8_weight_only``: int8 weights with one scale per output row; activations stay in the model's
  dtype and the int8 weight is cast to it inside every matmul (torchao ``Int8WeightOnlyConfig``).
* ``int8_dynamic``: int8 weights and int8 activations quantized per token at run time; the matmul
  runs int8 x int8 -> int32 (``torch._int_mm``) and is rescaled (``Int8DynamicActivationInt8WeightConfig``).
* ``fp8_weight_only``: float8 e4m3 weights with per-row scales, dequantized for every matmul: a memory
  saving only, no fp8 arithmetic, so it runs anywhere (``Float8WeightOnlyConfig``).
* ``fp8_dynamic``: float8 weights and activations (per-tensor scales), fp8 matmul (``torch._scaled_mm``)
  on GPUs with compute capability >= 8.9 (``Float8DynamicActivationFloat8WeightConfig``); Micikevicius
  et al., "FP8 Formats for Deep Learning" (2022).
* ``int4_weight_only``: int4 weights in groups of ``group_size`` input features with the tinygemm kernel
  (``Int4WeightOnlyConfig``, tile-packed format: CUDA, bf16).
* ``bnb_8bit``: bitsandbytes ``Linear8bitLt``, Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication
  for Transformers at Scale" (NeurIPS 2022): int8 weights, activation columns with outliers (|x| > 6)
  multiplied in 16 bits.
* ``bnb_4bit``: bitsandbytes ``Linear4bit`` with NF4 weights in blocks of 64, Dettmers et al., "QLoRA"
  (NeurIPS 2023).

torchao (https://docs.pytorch.org/ao/stable/) is applied with ``torchao.quantization.quantize_`` directly
on the loaded pipeline's modules: it swaps each Linear's weight for a quantized tensor subclass
(``Int8Tensor``, ``Float8Tensor``, ...) and leaves the modules in place, so it composes with the engine's
pipeline cache and with the hooks of the other knobs. diffusers' ``TorchAoConfig`` /
``PipelineQuantizationConfig`` do the same at ``from_pretrained`` time, which would need the engine to
load a separate pipeline per scheme. bitsandbytes has no such API for loaded weights, so its Linear
modules replace ``nn.Linear`` (weights quantized when moved to the device). Only Linear layers are
quantized (torchao's configs target them); convolutions stay in the model's dtype and are counted in the
report. ``min_features`` keeps small layers (either side below it) in full precision; torchao itself
skips weights whose shape its kernel cannot take (int4: input features not a multiple of the group size;
fp8 dynamic: sides not multiples of 16), and the report counts both kinds of skipped layers. The swapping
itself, and counting the bytes quantized weights really hold, is ``_quantized_weights.py``.

What runs where (checked with torch 2.13.0+cpu, torchao 0.18.0, bitsandbytes 0.50.2): on CPU,
``int8_weight_only``, ``int8_dynamic`` and ``fp8_weight_only`` run with fp32, fp16 and bf16 weights, and
so do both bitsandbytes schemes (bitsandbytes has shipped a CPU backend since 0.46) when the optional
package is installed. ``fp8_dynamic`` (torchao asserts compute capability >= 8.9) and ``int4_weight_only``
(no CPU kernel) are refused. ``check_spec`` refuses what is known before loading (missing or old
library, device, compute capability, int4's bf16); ``supports`` then quantizes and runs one 256x256
Linear on the loaded pipeline's device and dtype and refuses with the library's own error if that fails.

Quantization replaces weights in place and cannot be undone without a copy of the originals, so the
knob returns ``undo=None``: the engine drops the quantized pipeline from its cache and the next run loads
a clean one from disk. Keeping a copy to restore instead would hold the unquantized weights in memory
during the run (on the GPU, or in host RAM for a big model) and spoil the memory the run measures.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from studio_core.knobs import register
from studio_core.knobs._hooks import denoiser_of
from studio_core.knobs._quantized_weights import (
    BNB_4BIT_BLOCK,
    is_quantized,
    quantize_linears,
    quantized_linear,
    restore_linears,
    tensor_bytes,
    weight_bytes,
)
from studio_core.knobs._validate import check_choice, check_int
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch

__all__ = ["QuantizationKnob", "QuantizationSettings", "SCHEMES", "component_modules", "tensor_bytes",
           "weight_bytes"]

SCHEMES = ("int8_weight_only", "int8_dynamic", "fp8_weight_only", "fp8_dynamic", "int4_weight_only",
           "bnb_8bit", "bnb_4bit")
COMPONENTS = ("denoiser", "denoiser+text_encoder", "all")
GROUP_SIZES = (32, 64, 128, 256)
TORCHAO_MIN = "0.18.0"  # the pinned version: the Int8Tensor / Float8Tensor configs this knob is written for
_DEVICE_BOUND = ("fp8_dynamic", "int4_weight_only")  # the schemes whose refusals depend on the device

# what each scheme stores and multiplies, for the report
_COMPUTE = {
    "int8_weight_only": "int8 weights (per-row scales) cast to {dtype} inside each matmul",
    "int8_dynamic": "int8 weights and per-token int8 activations, int8 x int8 -> int32 matmul",
    "fp8_weight_only": "float8 e4m3 weights (per-row scales) dequantized to {dtype} for each matmul "
                       "(memory only, no fp8 arithmetic)",
    "fp8_dynamic": "float8 e4m3 weights and activations (per-tensor scales), fp8 matmul",
    "int4_weight_only": "int4 weights in groups of {group} (tinygemm), bf16 activations",
    "bnb_8bit": "LLM.int8(): int8 weights, outlier activation columns (|x| > 6) in 16 bits",
    "bnb_4bit": f"NF4 weights in blocks of {BNB_4BIT_BLOCK}, dequantized to {{dtype}} per matmul",
}


@dataclass(frozen=True)
class QuantizationSettings:
    scheme: Literal["int8_weight_only", "int8_dynamic", "fp8_weight_only", "fp8_dynamic", "int4_weight_only",
                    "bnb_8bit", "bnb_4bit"] = "int8_weight_only"
    components: Literal["denoiser", "denoiser+text_encoder", "all"] = "denoiser"
    min_features: int = 0  # Linear layers with fewer input or output features stay unquantized
    group_size: Literal[32, 64, 128, 256] = 64  # int4_weight_only only: input features per scale


# ------------------------------------------------------------------------------------------ what is quantized
def component_modules(pipe, components: str) -> dict[str, torch.nn.Module]:
    """The pipeline's modules a ``components`` setting covers, by component name."""
    import torch

    den = denoiser_of(pipe)
    out = {name: m for name, m in pipe.components.items() if m is den}
    if components in ("denoiser+text_encoder", "all"):
        out.update({name: m for name, m in pipe.components.items()
                    if name.startswith("text_encoder") and isinstance(m, torch.nn.Module)})
    if components == "all":
        out.update({name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)})
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


# ------------------------------------------------------------------------------------------ support
def _capability(device: str) -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of a visible CUDA device, or None."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    d = torch.device(device)
    return torch.cuda.get_device_name(d), torch.cuda.get_device_capability(d)


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _package_reason(scheme: str) -> str | None:
    """Why the library of ``scheme`` cannot be used (not installed, too old), from metadata only."""
    if scheme.startswith("bnb_"):
        if importlib.util.find_spec("bitsandbytes") is None:
            return ("bitsandbytes is not installed; it is an optional dependency: "
                    "pip install -r requirements-gpu.txt")
        return None
    try:
        found = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return f"torchao is not installed (pip install -r requirements.txt pins torchao=={TORCHAO_MIN})"
    if _version_tuple(found) < _version_tuple(TORCHAO_MIN):
        return (f"torchao {found} is older than {TORCHAO_MIN}, whose quantize_ configs (Int8Tensor, Float8Tensor) "
                f"this knob uses (pip install torchao=={TORCHAO_MIN})")
    return None


def _hardware_reason(scheme: str, device: str, dtype: str) -> str | None:
    """Why ``scheme`` cannot run on this device with weights in ``dtype`` (fp32/fp16/bf16), or None."""
    cap = _capability(device)
    if cap is None and device.startswith("cuda"):
        return None  # no CUDA device visible: the engine refuses the device itself
    cc = f"{cap[1][0]}.{cap[1][1]}" if cap else None
    if scheme == "fp8_dynamic":
        if cap is None:
            return ("fp8 dynamic quantization multiplies in float8 (torch._scaled_mm), which needs a CUDA GPU with "
                    "compute capability >= 8.9 (Ada, Hopper or newer); this run is on CPU (fp8_weight_only "
                    "stores float8 weights without fp8 arithmetic and runs here)")
        if cap[1] < (8, 9):
            return (f"fp8 dynamic quantization needs compute capability >= 8.9 (Ada, Hopper or newer); "
                    f"{cap[0]} has {cc}")
    if scheme == "int4_weight_only":
        if cap is None:
            return ("int4 weight-only needs CUDA: torchao's int4 kernels (tinygemm tile-packed, mslk) have no CPU "
                    "path in this version; this run is on CPU")
        if cap[1] < (8, 0):
            return f"int4 weight-only (tinygemm kernel) needs compute capability >= 8.0; {cap[0]} has {cc}"
        if dtype != "bf16":
            return f"int4 weight-only (tinygemm kernel) needs bf16 weights; set precision to bf16 (this run is {dtype})"
    return None


def _precisions(spec, components: str) -> list[str]:
    """The precisions the quantized components load in: the run's, unless the component precision knob
    sets a component's own."""
    raw = spec.knobs.get("component_precision") or {}
    get = raw.get if isinstance(raw, dict) else (lambda k, d=None: getattr(raw, k, d))
    roles = {"denoiser": ["denoiser"], "denoiser+text_encoder": ["denoiser", "text_encoder"],
             "all": ["denoiser", "text_encoder", "vae"]}[components]
    return sorted({get(role, None) or spec.precision for role in roles})


@functools.lru_cache(maxsize=None)
def _torchao_import_reason() -> str | None:
    """Why torchao cannot be imported here, or None (its CUDA extensions failing on a CPU build is fine)."""
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)  # the CPU build cannot load its CUDA-only extensions and says so per file
    try:
        import torchao.quantization  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure is the reason
        return f"torchao failed to import: {type(exc).__name__}: {exc}"
    finally:
        log.setLevel(level)
    return None


@functools.lru_cache(maxsize=None)
def _trial_reason(scheme: str, device: str, dtype: torch.dtype, group_size: int) -> str | None:
    """Quantize one 256x256 Linear and run it: the library's own refusal on this device and dtype, or None."""
    import torch

    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(0)
        layer = torch.nn.Sequential(torch.nn.Linear(256, 256)).to(device=device, dtype=dtype)
        x = torch.randn(32, 256).to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            quantize_linears(layer, scheme, lambda m: True, group_size)
            if not is_quantized(getattr(layer[0], "weight", None)):
                return f"{scheme} left a 256x256 Linear unquantized on {device} ({_dtype_name(dtype)})"
            y = layer(x)
        if not torch.isfinite(y).all():
            return f"{scheme} produced non-finite values on {device} ({_dtype_name(dtype)})"
    except Exception as exc:  # noqa: BLE001 - the library's message is the reason
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{scheme} failed a trial on {device} ({_dtype_name(dtype)}): {type(exc).__name__}: {msg}"
    return None


def _skip_reason(layer: torch.nn.Linear, settings: QuantizationSettings) -> str:
    """Why a Linear layer was left unquantized."""
    import torch

    scheme, out_f, in_f = settings.scheme, layer.out_features, layer.in_features
    if min(in_f, out_f) < settings.min_features:
        return f"smaller than min_features={settings.min_features}"
    if scheme.startswith("bnb_") and type(layer) is not torch.nn.Linear:
        return f"{type(layer).__name__} is not a plain nn.Linear (bitsandbytes replaces those only)"
    if scheme == "int4_weight_only" and in_f % settings.group_size:
        return f"{in_f} input features are not a multiple of group_size {settings.group_size}"
    if scheme == "fp8_dynamic" and (in_f % 16 or out_f % 16):
        return f"{out_f}x{in_f} weight: fp8 matmul needs both sides multiples of 16"
    return f"{scheme} left this {out_f}x{in_f} weight unquantized"


# ------------------------------------------------------------------------------------------ the knob
@register
class QuantizationKnob(Knob):
    name = "quantization"
    title = "Quantization (torchao / bitsandbytes)"
    description = ("Store the Linear layers' weights in int8, float8 or int4 (torchao quantize_) or with "
                   "bitsandbytes (LLM.int8(), NF4): less weight memory, faster matmuls where the hardware has "
                   "low-precision units. Irreversible in place: the pipeline is reloaded after the run.")
    Settings = QuantizationSettings
    order = 70
    group = "precision & quantization"

    def validate(self, settings: QuantizationSettings) -> None:
        f = self.field_name
        check_choice(f"{f}.scheme", settings.scheme, SCHEMES)
        check_choice(f"{f}.components", settings.components, COMPONENTS)
        check_int(f"{f}.min_features", settings.min_features, 0, 1_000_000,
                  "a whole number of features from 0 (quantize every Linear layer)")
        group_sizes = f"one of {', '.join(map(str, GROUP_SIZES))} (int4 weight-only)"
        check_int(f"{f}.group_size", settings.group_size, min(GROUP_SIZES), max(GROUP_SIZES), group_sizes)
        check_choice(f"{f}.group_size", settings.group_size, GROUP_SIZES, group_sizes)

    def label(self, settings: QuantizationSettings) -> str:
        scheme = settings.scheme.replace("_weight_only", " weight-only").replace("_dynamic", " dynamic")
        scheme = scheme.replace("bnb_", "bitsandbytes ")
        components = settings.components.replace("+", " + ").replace("_", " ")
        extra = [] if settings.components == "denoiser" else [components]
        if settings.scheme == "int4_weight_only" and settings.group_size != 64:
            extra.append(f"group {settings.group_size}")
        return scheme + (f" ({', '.join(extra)})" if extra else "")

    def check_model(self, info, settings: QuantizationSettings) -> str | None:
        if settings.components == "denoiser":
            return None
        try:
            index = json.loads((Path(info.path) / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        has_te = any(k.startswith("text_encoder") and isinstance(v, list) and v[0] is not None
                     for k, v in index.items())
        if settings.components == "denoiser+text_encoder" and not has_te:
            return "this model has no text encoder; use components 'denoiser' or 'all'"
        return None

    def check_spec(self, spec, settings: QuantizationSettings) -> str | None:
        reason = _package_reason(settings.scheme)
        if reason or settings.scheme not in _DEVICE_BOUND:
            return reason
        from studio_core.measure.environment import resolve_device

        device = resolve_device(spec.device)
        for precision in _precisions(spec, settings.components):
            reason = reason or _hardware_reason(settings.scheme, device, precision)
        return reason

    def supports(self, pipe, settings: QuantizationSettings) -> str | None:
        import torch

        scheme = settings.scheme
        reason = _package_reason(scheme)
        if reason:
            return reason
        if not scheme.startswith("bnb_"):
            reason = _torchao_import_reason()
            if reason:
                return reason
        modules = component_modules(pipe, settings.components)
        if not modules:
            return f"this pipeline has no {settings.components} module to quantize"
        for name, m in modules.items():
            for layer in m.modules():
                if quantized_linear(layer):
                    return (f"{name} is already quantized ({type(layer).__name__} with a "
                            f"{type(layer.weight).__name__} weight); load a clean pipeline")
        # every (device, dtype) the Linear weights are in: the static rules, then a trial of the library itself
        # (e.g. bitsandbytes without a backend for this device)
        places = sorted({(str(layer.weight.device), layer.weight.dtype) for m in modules.values()
                         for layer in m.modules() if isinstance(layer, torch.nn.Linear)}, key=str)
        for device, dtype in places:
            reason = (_hardware_reason(scheme, device, _dtype_name(dtype))
                      or _trial_reason(scheme, device, dtype, settings.group_size))
            if reason:
                return reason
        return None

    def apply(self, pipe, settings: QuantizationSettings) -> Applied:
        import torch

        scheme, min_f = settings.scheme, settings.min_features
        modules = component_modules(pipe, settings.components)
        before = {name: weight_bytes(m) for name, m in modules.items()}
        linears: dict[torch.nn.Linear, tuple] = {}  # every Linear and its original weights, for a failed quantize
        parents: list[tuple] = []
        counts = {"linear_total": 0, "conv_total": 0}
        for cname, m in modules.items():
            for fqn, layer in m.named_modules():
                if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                    counts["conv_total"] += 1
                if isinstance(layer, torch.nn.Linear):
                    counts["linear_total"] += 1
                    linears[layer] = (layer.weight, layer.bias)
            if scheme.startswith("bnb_"):
                parents += [(p, n, c) for p in m.modules() for n, c in p.named_children()
                            if isinstance(c, torch.nn.Linear)]
        names = {layer: f"{cname}.{fqn}" for cname, m in modules.items() for fqn, layer in m.named_modules()}
        wanted = lambda layer: min(layer.in_features, layer.out_features) >= min_f  # noqa: E731
        dtype = next(next(iter(modules.values())).parameters()).dtype  # the denoiser's, for the report
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                for m in modules.values():
                    quantize_linears(m, scheme, wanted, settings.group_size)
        except BaseException:
            restore_linears(linears, parents)
            raise
        quantize_ms = (time.perf_counter() - t0) * 1000
        # what became of each Linear: torchao swaps weights, bitsandbytes swaps modules
        swapped = {id(c) for p, n, c in parents if getattr(p, n) is not c}
        quantized, skipped = [], {}
        for layer in linears:
            if id(layer) in swapped or is_quantized(layer.weight):
                quantized.append(names[layer])
            else:
                skipped[names[layer]] = _skip_reason(layer, settings)
        small = [n for n, r in skipped.items() if r.startswith("smaller than")]
        unsupported = [n for n in skipped if n not in set(small)]
        after = {name: weight_bytes(m) for name, m in modules.items()}
        linears.clear()
        parents.clear()  # drop the originals: the quantized pipeline holds only its new weights

        b, a = sum(before.values()), sum(after.values())
        lib = "bitsandbytes" if scheme.startswith("bnb_") else "torchao"
        try:
            version = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - imported above
            version = "?"
        dname = _dtype_name(dtype)
        compute = _COMPUTE[scheme].format(dtype=dname, group=settings.group_size)
        details = {
            "scheme": scheme, "library": f"{lib} {version}", "components": sorted(modules), "compute": compute,
            "linear_total": counts["linear_total"], "linear_quantized": len(quantized),
            "linear_skipped": len(skipped), "linear_skipped_small": len(small),
            "linear_skipped_unsupported": len(unsupported), "skipped_layers": dict(list(skipped.items())[:50]),
            "conv_unquantized": counts["conv_total"], "weight_bytes_before": b, "weight_bytes_after": a,
            "weight_bytes_by_component": {n: {"before": before[n], "after": after[n]} for n in modules},
            "quantize_ms": round(quantize_ms, 3),
        }

        def report() -> KnobReport:
            comps = "+".join(sorted(modules))
            if not quantized:
                why = (f"all {counts['linear_total']} Linear layers were skipped ("
                       + ", ".join(filter(None, [f"{len(small)} smaller than min_features={min_f}" if small else "",
                                                 f"{len(unsupported)} that {scheme} cannot take"
                                                 if unsupported else ""])) + ")"
                       if counts["linear_total"] else "there is no Linear layer")
                return KnobReport(self.name, False, f"{scheme} on {comps}: nothing quantized: {why}", details)
            summary = (f"{scheme} ({lib} {version}) on {comps}: {len(quantized)} of {counts['linear_total']} Linear "
                       f"layers quantized" + (f", {len(skipped)} skipped" if skipped else "")
                       + (f", {counts['conv_total']} conv layers not quantized" if counts["conv_total"] else "")
                       + f"; weights {b / 2**20:.2f} -> {a / 2**20:.2f} MiB ({a / b:.2f}x)")
            return KnobReport(self.name, True, summary, details)

        return Applied(self.name, undo=None, report=report)
