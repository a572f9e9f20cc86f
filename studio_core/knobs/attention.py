"""Which PyTorch scaled-dot-product-attention kernel the denoiser's attention runs on.

``torch.nn.functional.scaled_dot_product_attention`` (SDPA) picks one of several kernels per call:

* ``math``: the reference composition (matmul, softmax, matmul), which materialises the full attention
  matrix; it runs everywhere, in any dtype.
* ``flash``: FlashAttention-2 (Dao, "FlashAttention-2: Faster Attention with Better Parallelism and
  Work Partitioning", 2023), tiled so the attention matrix never leaves on-chip memory. On CUDA it takes
  fp16/bf16 only (compute capability >= 8.0); on CPU PyTorch has its own flash-style tiled kernel
  (``_scaled_dot_product_flash_attention_for_cpu``), which is also the CPU default and takes any float.
* ``efficient``: the memory-efficient kernel of xFormers (Rabe & Staats, "Self-attention Does Not Need
  O(n^2) Memory", 2021; Lefaudeux et al., xFormers), CUDA only, fp32 included.
* ``cudnn``: cuDNN's fused attention (CUDA, fp16/bf16, recent GPUs).

diffusers' UNets call SDPA through ``AttnProcessor2_0``, and transformer models through the attention
dispatcher's default ``native`` backend, which also calls SDPA. So one mechanism covers both: a hook on
the denoiser (``diffusers.hooks.HookRegistry``, see ``_hooks.py``) runs its forward inside
``torch.nn.attention.sdpa_kernel([backend])``, which allows that kernel only: PyTorch raises "No viable
backend" rather than falling back, so a call that succeeds ran the chosen kernel. (diffusers'
``ModelMixin.set_attention_backend`` does the same for dispatcher-based models only, not for UNets.)
Removing the hook restores the original forward exactly. The context is traced by ``torch.compile``,
so the knob composes with the compile knob.

Verification: the profiler records one denoiser call of the engine's first warm-up (the second call
when there are several, since the first may be compiling) and the report counts the SDPA operators
that ran: ``aten::scaled_dot_product_attention`` calls and the kernel ops under them
(``aten::_scaled_dot_product_flash_attention[_for_cpu]``, ``..._efficient_attention``,
``..._cudnn_attention``, ``..._attention_math``). A model whose attention does not call SDPA (an older
processor, xFormers) shows no call and the knob reports that it did nothing.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Literal

from studio_core.knobs import register
from studio_core.knobs._hooks import ForwardHook, denoiser_of, install, is_compiled
from studio_core.knobs._validate import check_choice
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch
    from torch.nn.attention import SDPBackend

__all__ = ["AttentionBackendKnob", "AttentionBackendSettings", "attention_shapes", "sdpa_probe_reason"]

HOOK_NAME = "studio_attention_backend"
BACKENDS = ("math", "efficient", "flash", "cudnn")
_SDP_NAMES = {"math": "MATH", "efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION",
              "cudnn": "CUDNN_ATTENTION"}
# profiler op name -> kernel
_KERNEL_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}
_CALL_OP = "aten::scaled_dot_product_attention"


@dataclass(frozen=True)
class AttentionBackendSettings:
    backend: Literal["math", "efficient", "flash", "cudnn"] = "math"


def _sdp_backend(name: str) -> SDPBackend:
    from torch.nn.attention import SDPBackend

    return getattr(SDPBackend, _SDP_NAMES[name])


def attention_shapes(denoiser: torch.nn.Module) -> list[tuple[int, int]]:
    """Distinct (heads, head_dim) of the denoiser's attention modules (diffusers ``Attention`` and the
    dispatcher-based ``AttentionModuleMixin``: anything with ``heads`` and a ``to_q`` Linear)."""
    import torch

    shapes = set()
    for m in denoiser.modules():
        heads, to_q = getattr(m, "heads", None), getattr(m, "to_q", None)
        if isinstance(heads, int) and heads > 0 and isinstance(to_q, torch.nn.Linear):
            shapes.add((heads, to_q.out_features // heads))
    return sorted(shapes)


@functools.lru_cache(maxsize=64)
def sdpa_probe_reason(backend: str, device: str, dtype: torch.dtype, heads: int, head_dim: int) -> str | None:
    """Why SDPA with only ``backend`` allowed fails on (device, dtype, heads, head_dim), in PyTorch's
    words, or None. One tiny call; PyTorch warns the reason for each kernel it rules out."""
    import warnings

    import torch
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(1, heads, 16, head_dim, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([_sdp_backend(backend)]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return None
        except RuntimeError as exc:
            why = [str(w.message).splitlines()[0] for w in caught if "because" in str(w.message)]
            detail = "; ".join(dict.fromkeys(why)) or str(exc).splitlines()[0]
            return f"{detail} ({dtype}, head dim {head_dim}, on {device})".replace("torch.", "")


class _KernelHook(ForwardHook):
    def __init__(self, backend: str):
        from torch.nn.attention import sdpa_kernel

        self.sdpa_kernel, self.backends = sdpa_kernel, [_sdp_backend(backend)]

    def forward(self, module, original, *args, **kwargs):
        with self.sdpa_kernel(self.backends):
            return original(*args, **kwargs)


class _Observer:
    """Profiles one denoiser call of the first warm-up and counts the SDPA operators in it: the first call,
    or the second when the denoiser is compiled (the first one compiles, and tracing dispatches ops too)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.ops: dict[str, int] = {}
        self.profiled_call: int | None = None
        self.observed = False

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        outer = denoiser_of(self.pipe)  # module hooks run eagerly, around a compiled forward too
        target = 2 if is_compiled(outer) else 1
        calls, prof = 0, None

        def pre(module, args):
            nonlocal calls, prof
            calls += 1
            if calls == target:
                prof = profile(activities=[ProfilerActivity.CPU])
                prof.__enter__()

        def post(module, args, output):
            nonlocal prof
            if prof is not None:
                done, prof = prof, None
                done.__exit__(None, None, None)
                self._collect(done, calls)

        handles = [outer.register_forward_pre_hook(pre), outer.register_forward_hook(post)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            if prof is not None:  # the call raised
                prof.__exit__(None, None, None)

    def _collect(self, prof, call: int) -> None:
        ops: dict[str, int] = {}
        for event in prof.events():
            if event.name == _CALL_OP or event.name in _KERNEL_OPS:
                ops[event.name] = ops.get(event.name, 0) + 1
        self.ops, self.profiled_call, self.observed = ops, call, True


@register
class AttentionBackendKnob(Knob):
    name = "attention_backend"
    title = "Attention kernel (SDPA backend)"
    description = ("Run the denoiser's scaled-dot-product attention on one PyTorch kernel: math, memory-efficient, "
                   "FlashAttention or cuDNN; the report says which kernel ran.")
    Settings = AttentionBackendSettings
    order = 80
    group = "compile & memory"

    def validate(self, settings: AttentionBackendSettings) -> None:
        check_choice(f"{self.field_name}.backend", settings.backend, BACKENDS, ", ".join(BACKENDS))

    def check_spec(self, spec, settings: AttentionBackendSettings) -> str | None:
        b = settings.backend
        if b == "math":  # runs everywhere, in any dtype: no need to ask which device this is
            return None
        from studio_core.measure.environment import resolve_device

        device = resolve_device(spec.device).split(":")[0]
        if device == "cpu" and b in ("efficient", "cudnn"):
            return (f"PyTorch has no CPU kernel for the {b} SDPA backend; on CPU SDPA runs flash (PyTorch's tiled "
                    "CPU kernel, the default) or math")
        if device == "cuda" and b in ("flash", "cudnn"):
            denoiser = (spec.knobs.get("component_precision") or {}).get("denoiser") or spec.precision
            if denoiser == "fp32":
                return (f"the {b} attention kernel on CUDA takes fp16 or bf16 only and the denoiser runs in fp32 "
                        "(set precision fp16/bf16, or use backend efficient or math)")
        return None

    def label(self, settings) -> str:
        return f"SDPA {settings.backend}"

    def supports(self, pipe, settings: AttentionBackendSettings) -> str | None:
        denoiser = denoiser_of(pipe)
        if denoiser is None:
            return "this pipeline has no denoiser"
        shapes = attention_shapes(denoiser)
        if not shapes:
            return f"the denoiser ({type(denoiser).__name__}) has no attention layers"
        param = next(denoiser.parameters())
        for heads, head_dim in shapes:
            reason = sdpa_probe_reason(settings.backend, str(param.device), param.dtype, heads, head_dim)
            if reason:
                return f"the {settings.backend} SDPA kernel cannot run here: {reason}"
        return None

    def apply(self, pipe, settings: AttentionBackendSettings) -> Applied:
        denoiser = denoiser_of(pipe)
        undo = install({"denoiser": denoiser}, HOOK_NAME, lambda key, m: _KernelHook(settings.backend))
        observer = _Observer(pipe)

        def report() -> KnobReport:
            return self._report(settings, observer)

        return Applied(self.name, undo=undo, report=report, instrument=observer.watching)

    def _report(self, settings: AttentionBackendSettings, observer: _Observer) -> KnobReport:
        b = settings.backend
        ops = dict(observer.ops)
        kernels: dict[str, int] = {}
        for op, n in ops.items():
            if op in _KERNEL_OPS:
                kernels[_KERNEL_OPS[op]] = kernels.get(_KERNEL_OPS[op], 0) + n
        calls = ops.get(_CALL_OP, 0)
        details = {"backend": b, "sdpa_calls": calls, "kernels": kernels, "ops": ops,
                   "profiled_denoiser_call": observer.profiled_call}
        if not observer.observed:
            return KnobReport(self.name, True, f"SDPA restricted to {b} (not verified: no denoiser call was profiled)",
                              details)
        where = f"denoiser call {observer.profiled_call} of the first warm-up"
        if kernels.get(b):
            others = {k: v for k, v in kernels.items() if k != b}
            summary = f"{b} kernel ran {kernels[b]} time(s) in {where}"
            if others:
                summary += f"; also {', '.join(f'{k} x{v}' for k, v in others.items())}"
            return KnobReport(self.name, True, summary, details)
        if calls == 0 and not kernels:
            return KnobReport(self.name, False, f"no scaled_dot_product_attention call in {where}: the denoiser's "
                                                "attention does not go through PyTorch SDPA (or a compiled graph "
                                                "fused it away), so the kernel choice changed nothing visible", details)
        return KnobReport(self.name, False, f"SDPA ran {calls} time(s) in {where} but no {b} kernel op was seen "
                                            f"(kernels: {kernels or 'none'})", details)
