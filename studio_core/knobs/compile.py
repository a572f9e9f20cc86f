"""``torch.compile`` of the denoiser (and optionally the VAE decoder), with compile time and recompiles.

``torch.compile`` (Ansel et al., "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation", ASPLOS 2024) captures the module's forward as FX graphs with
TorchDynamo and compiles them with a backend: TorchInductor generates fused C++/OpenMP kernels on CPU
and Triton kernels on GPU. diffusers recommends compiling the UNet/transformer (docs, "Accelerate
inference of text-to-image diffusion models"); the first call pays for compiling, later calls with the
same shapes reuse the compiled graphs, and a call that breaks a graph's guards (another resolution or
batch size, a changed Python value the graph depends on) recompiles.

Settings: ``mode`` (inductor's presets: ``reduce-overhead`` adds CUDA graphs, ``max-autotune`` also
benchmarks kernel choices for matmuls and convolutions), ``fullgraph`` (one graph or an error instead of
graph breaks), ``dynamic`` (None: static shapes first, dynamic after a shape change; True/False force
it), ``components`` (denoiser, VAE decoder or both) and ``backend`` (``inductor``; ``aot_eager`` and
``eager`` trace the same graphs without generating code: they tell dynamo's overhead and graph breaks
apart from inductor's kernels, and need no C++ compiler).

Mechanism: the module's ``forward`` is replaced by ``torch.compile(module.forward)`` (an instance
attribute; when a diffusers hook of another knob already replaced ``forward``, that hooked forward is
what gets compiled, so the hook's work is traced too). The alternatives were worse here: ``pipe.unet =
torch.compile(pipe.unet)`` puts an ``OptimizedModule`` in the pipeline, which raises ``TypeError`` on
``bool()`` (its ``__len__`` proxies a module without one), so the project's ``pipe.unet or
pipe.transformer`` (the engine's timing probe, ``_hooks.denoiser_of``) fails, and ``isinstance`` checks
of other knobs see the wrapper; ``module.compile()`` compiles ``_call_impl`` and so traces the module's
forward hooks, where the engine's timing probe registers a new hook every pass: a recompile per timed
pass. Compiling the forward keeps the module and its hooks (the engine's probe, the cast hooks of
component precision) in eager Python around the compiled code, and the weights are untouched: undo puts
the previous ``forward`` back and the pipeline is exactly as loaded (no eviction needed). Dynamo's code
cache is kept: a later run that compiles the same module with the same settings reuses the graphs whose
guards still hold, and a run at another resolution shows up as a recompilation with dynamo's reason
("size mismatch at index 2. expected 16, actual 32").

Measurement, from dynamo's own records rather than from wall-clock differences:
``torch._dynamo.utils.get_compilation_metrics()`` holds one record per frame compile with its
``entire_frame_compile_time_s`` (dynamo tracing + AOT autograd + inductor code generation and the C++ /
Triton compile), its ``recompile_reason`` (set when an existing cache entry's guards failed) and any
failure. The report sums the records started after ``apply``; ``compile_ms_first_call`` is the part
spent in the engine's first warm-up call (its ``cold_ms`` = this compile time + one execution), and
``late_compiles`` counts compiles after it, i.e. inside the timed repeats, which would spoil them.
Graph counts and graph breaks are the deltas of ``torch._dynamo.utils.counters`` (``stats.unique_graphs``,
``graph_break``), inductor's on-disk FX graph cache hits/misses likewise (a cache hit makes the compile
time much shorter on a second process). A forward pre-hook on the module (outside the compiled forward) counts
the calls of each compiled module, so a run that reuses earlier graphs is told from one that never ran.

Refusals: ``reduce-overhead`` off CUDA (CUDA graphs; inductor silently skips them on CPU, so the run
would be ``default`` under another name); inductor on CPU without a C++ compiler or Python headers, on
GPU without Triton; compiling the denoiser together with the project's hook-based UNet knobs (DeepCache,
cross-attention cache, token merging), whose Python state makes dynamo recompile at every step until its
recompile limit, after which it runs eagerly (``COMPILE_CONFLICTS``); ``fullgraph=True`` with diffusers'
transformer cache hooks, which break graphs (``FULLGRAPH_CONFLICTS``). All measured with torch 2.13 on
the tiny UNet / tiny Flux pipelines. Compiling only the VAE decoder combines with all of them.
"""

from __future__ import annotations

import contextlib
import functools
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

from studio_core.errors import SpecError
from studio_core.knobs import register
from studio_core.knobs._hooks import is_compiled
from studio_core.knobs._validate import check_bool, check_choice
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch

__all__ = ["COMPILE_CONFLICTS", "CompileKnob", "CompileSettings", "FULLGRAPH_CONFLICTS", "compiled_targets",
           "inductor_reason", "is_compiled"]

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "aot_eager", "eager")
COMPONENTS = ("denoiser", "vae", "denoiser+vae")
_ABSENT = object()

# knobs whose hooks keep Python state in the UNet's forward (step counters, caches, call counts) and
# whose layer-counting instrument hooks every conv/linear layer for the first warm-up call: dynamo guards
# on that state, recompiles at every step, and after torch._dynamo.config.recompile_limit (8) compiles runs
# the rest eagerly (measured with torch 2.13 and the tiny UNet in an engine run: 8 compiles, then eager)
COMPILE_CONFLICTS = {
    "deepcache": ("DeepCache's hooks branch on the step and cache state (Python values), so dynamo recompiles "
                  "the UNet at every denoising step, hits torch._dynamo.config.recompile_limit (8) and runs the "
                  "rest eagerly: the compile cannot pay off (with fullgraph=True the 9th compile is an error)"),
    "cross_attention_cache": ("the cross-attention cache's hooks read the step counter and count calls in Python, "
                              "so dynamo recompiles at every step, hits torch._dynamo.config.recompile_limit (8) and "
                              "runs the rest eagerly (with fullgraph=True the 9th compile is an error)"),
    "token_merging": ("token merging creates a torch.Generator inside the forward (random destinations) and counts "
                      "merges in Python: dynamo breaks the graph there and recompiles per step until its recompile "
                      "limit (with fullgraph=True it fails on the first call)"),
}
# knobs that compile without fullgraph (graph breaks) but not with it
FULLGRAPH_CONFLICTS = {
    "transformer_cache": ("diffusers' cache hooks call functions marked torch.compiler.disable (first_block) and "
                          "branch on tensor values to decide whether to reuse the cache (pyramid_attention_broadcast): "
                          "dynamo cannot put either in one graph, so fullgraph=True fails on the first call"),
}


@dataclass(frozen=True)
class CompileSettings:
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fullgraph: bool = False
    dynamic: bool | None = None
    components: Literal["denoiser", "vae", "denoiser+vae"] = "denoiser"
    backend: Literal["inductor", "aot_eager", "eager"] = "inductor"


@functools.lru_cache(maxsize=None)
def inductor_reason(device: str) -> str | None:
    """Why TorchInductor cannot generate code for ``device`` ("cpu" / "cuda") here, or None."""
    if device == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return ("TorchInductor generates Triton kernels on GPU and Triton is not installed (pip package "
                    "triton); use backend eager or aot_eager")
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:
        return ("TorchInductor compiles C++ kernels on CPU and found no C++ compiler (g++ or clang++ on PATH, "
                "or $CXX): install the Debian package g++ (or build-essential), or use backend eager or aot_eager")
    include = Path(sysconfig.get_path("include"))
    if not (include / "Python.h").exists():
        return (f"TorchInductor's CPU kernels include Python.h, which is not in {include}: install the Python "
                "headers (Debian python3-dev for the system Python), or use backend eager or aot_eager")
    return None


def compiled_targets(pipe, components: str) -> list[tuple[str, torch.nn.Module]]:
    """(label, module) of each module to compile: the denoiser and/or the VAE decoder."""
    import torch

    out = []
    if components in ("denoiser", "denoiser+vae"):
        for attr in ("unet", "transformer"):
            if isinstance(getattr(pipe, attr, None), torch.nn.Module):
                out.append((attr, getattr(pipe, attr)))
                break
    if components in ("vae", "denoiser+vae"):
        decoder = getattr(getattr(pipe, "vae", None), "decoder", None)
        if isinstance(decoder, torch.nn.Module):
            out.append(("vae.decoder", decoder))
    return out


def _counters() -> dict:
    from torch._dynamo.utils import counters

    return {"unique_graphs": counters["stats"]["unique_graphs"], "graph_break": dict(counters["graph_break"]),
            "fx_hit": counters["inductor"]["fxgraph_cache_hit"], "fx_miss": counters["inductor"]["fxgraph_cache_miss"]}


def _records_since(t0: float) -> list:
    """Dynamo's compile records (one per frame compile) started at or after ``t0`` (``time.time()``)."""
    from torch._dynamo.utils import get_compilation_metrics

    return [m for m in get_compilation_metrics() if (m.start_time or 0.0) >= t0]


def _first_line(text: str | None, limit: int = 300) -> str:
    return (text or "").strip().splitlines()[0][:limit] if (text or "").strip() else ""


class _Session:
    """What one application of the knob compiled: compile records, counter deltas, calls per module."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.before = _counters()
        self.calls: dict[str, int] = {}
        self.first_call_records: int | None = None  # records when the engine's first warm-up call ended

    @contextlib.contextmanager
    def first_call(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.first_call_records = len(_records_since(self.t0))

    def summary(self) -> dict:
        recs = _records_since(self.t0)
        after = _counters()
        breaks = {k: v - self.before["graph_break"].get(k, 0) for k, v in after["graph_break"].items()}
        breaks = {k: v for k, v in breaks.items() if v > 0}
        failed = [m for m in recs if m.fail_type]
        limit_hit = any("recompile limit" in (m.fail_reason or "").lower()
                        or "recompile_limit" in (m.fail_reason or "") for m in failed)
        reasons = list(dict.fromkeys(_first_line(m.recompile_reason) for m in recs if m.recompile_reason))
        first = recs[:self.first_call_records] if self.first_call_records is not None else recs
        return {
            "compile_ms": round(sum(m.entire_frame_compile_time_s or 0.0 for m in recs) * 1000, 1),
            "compile_ms_first_call": (round(sum(m.entire_frame_compile_time_s or 0.0 for m in first) * 1000, 1)
                                      if self.first_call_records is not None else None),
            "frame_compiles": len(recs),
            "graphs": after["unique_graphs"] - self.before["unique_graphs"],
            "recompiles": sum(1 for m in recs if m.recompile_reason),
            "recompile_reasons": reasons[:5],
            "graph_breaks": sum(breaks.values()),
            "graph_break_reasons": [_first_line(k, 200) for k, _ in sorted(breaks.items(), key=lambda kv: -kv[1])[:5]],
            "failed_compiles": len(failed),
            "fail_reasons": list(dict.fromkeys(_first_line(m.fail_reason, 200) for m in failed))[:5],
            "recompile_limit_hit": limit_hit,
            "late_compiles": (len(recs) - self.first_call_records) if self.first_call_records is not None else None,
            "inductor_cache_hits": after["fx_hit"] - self.before["fx_hit"],
            "inductor_cache_misses": after["fx_miss"] - self.before["fx_miss"],
            "calls": dict(self.calls),
        }


@register
class CompileKnob(Knob):
    name = "compile"
    title = "torch.compile"
    description = ("Compile the denoiser (optionally the VAE decoder) with torch.compile; the first call pays for "
                   "compiling, the report gives the compile time, graphs, recompiles and graph breaks.")
    Settings = CompileSettings
    order = 90
    group = "compile & memory"

    def validate(self, settings: CompileSettings) -> None:
        f = self.field_name
        check_choice(f"{f}.mode", settings.mode, MODES, ", ".join(MODES))
        check_bool(f"{f}.fullgraph", settings.fullgraph)
        if settings.dynamic is not None and not isinstance(settings.dynamic, bool):
            raise SpecError(f"{f}.dynamic", settings.dynamic, "true, false, or unset (dynamic after a shape change)")
        check_choice(f"{f}.components", settings.components, COMPONENTS, ", ".join(COMPONENTS))
        check_choice(f"{f}.backend", settings.backend, BACKENDS, ", ".join(BACKENDS))
        if settings.backend != "inductor" and settings.mode != "default":
            raise SpecError(f"{f}.mode", settings.mode, f"default with backend {settings.backend} (the modes are "
                                                        "TorchInductor presets)")

    def _device_reason(self, device: str, settings: CompileSettings) -> str | None:
        if settings.mode == "reduce-overhead" and device != "cuda":
            return (f"mode reduce-overhead records CUDA graphs, which need a CUDA device; on {device} inductor skips "
                    "them and the run would be mode default under another name")
        if settings.backend == "inductor":
            return inductor_reason(device)
        return None

    def check_spec(self, spec, settings: CompileSettings) -> str | None:
        from studio_core.measure.environment import resolve_device

        reason = self._device_reason(resolve_device(spec.device).split(":")[0], settings)
        if reason:
            return reason
        for other in sorted(spec.knobs):
            if other in COMPILE_CONFLICTS and settings.components != "vae":
                return f"compiling the denoiser does not work with {other}: {COMPILE_CONFLICTS[other]}"
            if other in FULLGRAPH_CONFLICTS and settings.fullgraph:
                return f"fullgraph=True cannot compile with {other}: {FULLGRAPH_CONFLICTS[other]}"
        return None

    def label(self, settings) -> str:
        extra = [] if settings.mode == "default" else [settings.mode]
        if settings.components != "denoiser":
            extra.append(settings.components)
        if settings.backend != "inductor":
            extra.append(settings.backend)
        if settings.fullgraph:
            extra.append("fullgraph")
        return "compile" + (f" ({', '.join(extra)})" if extra else "")

    def supports(self, pipe, settings: CompileSettings) -> str | None:
        targets = compiled_targets(pipe, settings.components)
        if not targets:
            return f"this pipeline has no {settings.components} module to compile"
        for label, module in targets:
            if is_compiled(module) or module._compiled_call_impl is not None:
                return f"{label} is already compiled"
            param = next(module.parameters(), None)
            device = param.device.type if param is not None else "cpu"
            reason = self._device_reason(device, settings)
            if reason:
                return reason
        return None

    def apply(self, pipe, settings: CompileSettings) -> Applied:
        import torch

        session = _Session()
        swapped: list[tuple[torch.nn.Module, object, object]] = []
        kwargs = {"fullgraph": settings.fullgraph, "dynamic": settings.dynamic, "backend": settings.backend}
        if settings.backend == "inductor" and settings.mode != "default":
            kwargs["mode"] = settings.mode
        try:
            for label, module in compiled_targets(pipe, settings.components):
                previous = module.__dict__.get("forward", _ABSENT)  # e.g. a diffusers hook's forward
                session.calls[label] = 0

                def count(module, args, label=label):  # a module hook: runs eagerly, outside the compiled forward
                    session.calls[label] += 1

                handle = module.register_forward_pre_hook(count)
                swapped.append((module, previous, handle))
                module.forward = torch.compile(module.forward, **kwargs)
        except BaseException:
            _restore(swapped)
            raise

        def undo() -> None:
            _restore(swapped)

        def report() -> KnobReport:
            return self._report(settings, list(session.calls), session.summary())

        return Applied(self.name, undo=undo, report=report, instrument=session.first_call)

    def _report(self, settings: CompileSettings, labels: list[str], s: dict) -> KnobReport:
        what = " + ".join(labels)
        how = f"{settings.backend}" + (f" mode {settings.mode}" if settings.backend == "inductor" else "")
        details = {"mode": settings.mode, "backend": settings.backend, "fullgraph": settings.fullgraph,
                   "dynamic": settings.dynamic, "compiled": labels, **s}
        ran = sum(s["calls"].values())
        if not ran:
            return KnobReport(self.name, False, f"{what} compiled ({how}) but never called", details)
        if not s["frame_compiles"]:
            return KnobReport(self.name, True, f"{what} ({how}): ran graphs compiled by an earlier run in this process "
                                               "(dynamo's cache); no compile in this run", details)
        parts = [f"{what} ({how}): compiled in {s['compile_ms'] / 1000:.1f} s",
                 f"{s['graphs']} graph" + ("" if s["graphs"] == 1 else "s")]
        if s["recompiles"]:
            parts.append(f"{s['recompiles']} recompile" + ("" if s["recompiles"] == 1 else "s")
                         + (f" ({s['recompile_reasons'][0]})" if s["recompile_reasons"] else ""))
        if s["graph_breaks"]:
            parts.append(f"{s['graph_breaks']} graph break" + ("" if s["graph_breaks"] == 1 else "s"))
        if s["failed_compiles"]:
            parts.append(f"{s['failed_compiles']} frame(s) not compiled, ran eagerly")
        if s["recompile_limit_hit"]:
            parts.append("dynamo's recompile limit was hit: later calls ran eagerly")
        if s["late_compiles"]:
            parts.append(f"{s['late_compiles']} compile(s) after the first warm-up call, inside later calls")
        if settings.backend == "inductor" and (s["inductor_cache_hits"] or s["inductor_cache_misses"]):
            parts.append(f"inductor FX cache {s['inductor_cache_hits']} hit / {s['inductor_cache_misses']} miss")
        return KnobReport(self.name, s["graphs"] > 0 or not s["failed_compiles"], "; ".join(parts), details)


def _restore(swapped: list) -> None:
    for module, previous, handle in reversed(swapped):
        handle.remove()
        if previous is _ABSENT:
            module.__dict__.pop("forward", None)
        else:
            module.forward = previous
    swapped.clear()
