"""Cross-attention caching after a gate step (the T-GATE idea) for UNet pipelines.

Zhang et al., "Cross-Attention Makes Inference Cumbersome in Text-to-Image Diffusion Models" (T-GATE,
2024): cross-attention output converges within the first steps (the "semantics-planning" stage); after
that it can be cached and reused, and since the text then only enters through that cached output,
classifier-free guidance no longer needs its unconditional half, which halves the denoiser's batch.

Settings:

* ``gate_step``: the loop iteration from which cross-attention is no longer computed. At iteration
  ``gate_step - 1`` every cross-attention module keeps its output, averaged over the guidance halves
  (conditional and unconditional) as in the paper; from ``gate_step`` on it returns that output.
* ``drop_cfg``: from the gate step on, run the denoiser on the conditional half only (guidance off).
  Done through ``callback_on_step_end`` by handing the pipeline the conditional half of its prompt
  embeddings (the "dynamic classifier-free guidance" callback of the diffusers docs).

A gate step at or after the last step caches nothing: the report says so and the run is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from studio_core.knobs import register
from studio_core.knobs._hooks import (
    ForwardHook,
    LayerCounter,
    StepTracker,
    denoiser_config,
    denoiser_of,
    install,
    step_callback_reason,
)
from studio_core.knobs._validate import check_bool, check_int
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch

__all__ = ["CrossAttentionCacheKnob", "CrossAttentionCacheSettings", "cross_attention_modules"]

HOOK_NAME = "studio_cross_attention_cache"
# per-step tensors a pipeline batches for guidance, halved when guidance is dropped
_GUIDANCE_BATCHED = ("prompt_embeds", "add_text_embeds", "add_time_ids")


@dataclass(frozen=True)
class CrossAttentionCacheSettings:
    gate_step: int = 10
    drop_cfg: bool = True


def cross_attention_modules(unet) -> dict[str, torch.nn.Module]:
    """Every cross-attention module of a UNet (``Attention`` with ``is_cross_attention``), by name."""
    from diffusers.models.attention_processor import Attention

    return {n: m for n, m in unet.named_modules() if isinstance(m, Attention) and getattr(m, "is_cross_attention", False)}


class _State:
    def __init__(self, tracker: StepTracker, settings: CrossAttentionCacheSettings, pipe):
        self.tracker, self.settings, self.pipe = tracker, settings, pipe
        self.cache: dict[str, torch.Tensor] = {}
        self.computed = self.reused = 0
        self.dropped_at: int | None = None
        self.steps_seen = 0

    def new_call(self) -> None:
        self.cache.clear()
        self.computed = self.reused = 0
        self.dropped_at = None
        self.steps_seen = 0


class _CrossAttentionHook(ForwardHook):
    def __init__(self, state: _State, key: str):
        self.state, self.key = state, key

    def forward(self, module, original, hidden_states, *args, **kwargs):
        st = self.state
        step, gate = st.tracker.step, st.settings.gate_step
        if step >= gate and self.key in st.cache:
            st.reused += 1
            cached = st.cache[self.key]
            if hidden_states.shape[0] != cached.shape[0]:  # guidance still batched: same output for both halves
                cached = cached.repeat(hidden_states.shape[0] // cached.shape[0], 1, 1)
            return cached
        out = original(hidden_states, *args, **kwargs)
        st.computed += 1
        if step == gate - 1:
            cfg = bool(getattr(st.pipe, "do_classifier_free_guidance", False)) and out.shape[0] % 2 == 0
            st.cache[self.key] = out.view(2, out.shape[0] // 2, *out.shape[1:]).mean(0) if cfg else out
        return out


class _UNetHook(ForwardHook):
    def __init__(self, state: _State):
        self.state = state

    def forward(self, module, original, *args, **kwargs):
        if self.state.tracker.step == 0:
            self.state.new_call()
        self.state.steps_seen += 1
        return original(*args, **kwargs)


@register
class CrossAttentionCacheKnob(Knob):
    name = "cross_attention_cache"
    title = "Cross-attention caching (T-GATE)"
    description = ("From the gate step on, reuse each cross-attention output and (optionally) drop the "
                   "unconditional guidance half (Zhang et al., T-GATE 2024).")
    Settings = CrossAttentionCacheSettings
    order = 61
    group = "caching & tokens"

    def validate(self, settings: CrossAttentionCacheSettings) -> None:
        check_int(f"{self.field_name}.gate_step", settings.gate_step, 1, 1000, "a whole number of steps from 1 to 1000")
        check_bool(f"{self.field_name}.drop_cfg", settings.drop_cfg)

    def label(self, settings) -> str:
        return f"T-GATE from step {settings.gate_step}" + ("" if settings.drop_cfg else ", keeps CFG")

    def check_model(self, info, settings) -> str | None:
        cfg = denoiser_config(info)
        cls = cfg.get("_class_name")
        if info.denoiser != "unet" or cls != "UNet2DConditionModel":
            return (f"cross-attention caching hooks the cross-attention of a UNet2DConditionModel; this model's "
                    f"denoiser is {cls or info.denoiser}")
        if not any("CrossAttn" in t for t in cfg.get("down_block_types", []) + cfg.get("up_block_types", [])):
            return "this UNet has no cross-attention blocks"
        return None

    def supports(self, pipe, settings) -> str | None:
        from diffusers import UNet2DConditionModel

        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, UNet2DConditionModel):
            return f"needs a UNet2DConditionModel; this pipeline's denoiser is {type(denoiser_of(pipe)).__name__}"
        if not cross_attention_modules(unet):
            return "this UNet has no cross-attention modules"
        if settings.drop_cfg and "prompt_embeds" not in getattr(pipe, "_callback_tensor_inputs", ()):
            return (f"{type(pipe).__name__} does not hand prompt_embeds to callback_on_step_end, so guidance cannot "
                    "be dropped after the gate (set drop_cfg to false)")
        return step_callback_reason(pipe)

    def apply(self, pipe, settings: CrossAttentionCacheSettings) -> Applied:
        unet = pipe.unet
        tracker = StepTracker()
        state = _State(tracker, settings, pipe)
        modules = cross_attention_modules(unet)
        # one install: the UNet's step hook and every cross-attention's, removed together
        remove_hooks = install({"unet": unet, **modules}, HOOK_NAME,
                               lambda key, m: _UNetHook(state) if m is unet else _CrossAttentionHook(state, key))
        counter = LayerCounter(unet)
        halved = [n for n in _GUIDANCE_BATCHED if n in getattr(pipe, "_callback_tensor_inputs", ())]

        def at_step_end(p, i: int, callback_kwargs: dict) -> dict:
            if not settings.drop_cfg or i != settings.gate_step - 1 or not getattr(p, "do_classifier_free_guidance", False):
                return {}
            state.dropped_at = settings.gate_step
            p._guidance_scale = 1.0  # the pipeline sets it again at its next call
            return {n: callback_kwargs[n].chunk(2)[1] for n in halved if callback_kwargs.get(n) is not None}

        tracker.listeners.append(at_step_end)

        def undo() -> None:
            remove_hooks()
            state.cache.clear()

        def report() -> KnobReport:
            total = state.steps_seen
            gated = max(0, total - settings.gate_step)
            if state.reused:
                summary = (f"gate at step {settings.gate_step}: {len(modules)} cross-attention modules reused their "
                           f"output in {gated} of {total} steps ({state.reused} calls cached, {state.computed} "
                           "computed)")
                summary += (f"; guidance dropped from step {state.dropped_at} (conditional half only)"
                            if state.dropped_at is not None else "; guidance kept")
            else:
                summary = (f"gate at step {settings.gate_step} of {total}: no step after the gate, nothing cached")
            layers = counter.summary()
            if layers.get("layers_run_fraction_mean") is not None and state.reused:
                summary += f"; {layers['layers_run_fraction_mean']:.0%} of conv/linear layers ran on average"
            details = {"gate_step": settings.gate_step, "steps": total, "steps_after_gate": gated,
                       "cross_attention_modules": len(modules), "calls_computed": state.computed,
                       "calls_cached": state.reused, "guidance_dropped_at": state.dropped_at, **layers}
            return KnobReport(self.name, state.reused > 0, summary, details)

        return Applied(self.name, {"callback_on_step_end": tracker.callback,
                                   "callback_on_step_end_tensor_inputs": halved},
                       undo=undo, report=report, instrument=counter.counting)
