"""DeepCache for ``UNet2DConditionModel``: reuse the UNet's deep features between steps.

Ma, Fang & Wang, "DeepCache: Accelerating Diffusion Models for Free" (CVPR 2024). Adjacent denoising
steps produce nearly the same high-level features, so the deep part of the UNet (every down layer below
the kept skip branch, the mid block and the matching up layers) runs only on *full* steps and its output
is cached; the steps in between run only the shallow layers above the kept skip branch and take the deep
features from the cache. The paper reports 2.3x on SD 1.5 at 50 steps (N=3... 5) for a CLIP-score drop
of 0.05.

Settings:

* ``interval`` N: one full step every N steps (N=1 caches nothing and reproduces the uncached output).
* ``branch``: which skip branch stays live, counting the UNet's down layers (resnet + attention) from
  the shallowest, 0. A deeper branch recomputes more of the UNet: slower, closer to the original.
* ``schedule``: ``uniform`` (full at steps 0, N, 2N, ...) or ``non-uniform``: the same number of full
  steps, denser around ``center`` (fraction of the steps) with exponent ``power`` (the paper's quadratic
  sampling; it found the middle of sampling most sensitive).

Mechanism, in the style of diffusers' hooks (``diffusers.hooks.HookRegistry``): a hook replaces the
forward of each skipped module (whole deep down blocks, the mid block, whole deep up blocks, and the
layers of the boundary blocks below the branch). On a full step each one runs and keeps its output; on
a cached step it returns the kept output without computing. A "step" is one iteration of the pipeline's
denoising loop, followed through ``callback_on_step_end``. Removing the hooks restores the original
forward exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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
from studio_core.knobs._validate import check_choice, check_int, check_number
from studio_core.knobs.base import Applied, Knob, KnobReport

__all__ = ["DeepCacheKnob", "DeepCacheSettings", "down_layers", "full_steps", "skipped_modules"]

HOOK_NAME = "studio_deepcache"


@dataclass(frozen=True)
class DeepCacheSettings:
    interval: int = 3
    branch: int = 0
    schedule: Literal["uniform", "non-uniform"] = "uniform"
    center: float = 0.3
    power: float = 1.4


def full_steps(total: int, interval: int, schedule: str = "uniform", center: float = 0.3,
               power: float = 1.4) -> list[int]:
    """Loop iterations (0-based, out of ``total``) that run the whole UNet and refresh the cache."""
    if total <= 0:
        return []
    if interval <= 1:
        return list(range(total))
    if schedule == "uniform":
        return list(range(0, total, interval))
    k = math.ceil(total / interval)
    c = center * (total - 1)
    p = power
    while True:  # lower the exponent until k distinct steps fit (p = 1 is uniform spacing)
        lo, hi = -(c ** (1 / p)), (total - 1 - c) ** (1 / p)
        us = [lo + (hi - lo) * j / (k - 1) for j in range(k)] if k > 1 else [lo]
        steps = sorted({min(total - 1, max(0, round(c + math.copysign(abs(u) ** p, u)))) for u in us} | {0})
        if len(steps) >= k or p <= 1.0:
            return steps
        p = max(1.0, p - 0.05)


def down_layers(unet) -> list[tuple[int, int]]:
    """(block, layer) of every down layer of a UNet, shallowest first: the skip branches DeepCache can keep."""
    return [(b, j) for b, block in enumerate(unet.down_blocks) for j in range(len(block.resnets))]


def skipped_modules(unet, branch: int) -> dict[str, object]:
    """The modules that do not run on a cached step when skip branch ``branch`` is kept.

    Down path: layers after the branch's layer in its block, that block's downsampler, every deeper
    block. Mid block. Up path: every up block deeper than the boundary block, and in the boundary block
    the layers whose skip input comes from a skipped down layer (up layer k of a block with L down layers
    takes the skip of down layer L-1-k; the last one takes the previous block's downsampler / conv_in)."""
    b, l = down_layers(unet)[branch]
    mods: dict[str, object] = {}
    down = unet.down_blocks[b]
    for j in range(l + 1, len(down.resnets)):
        mods[f"down_blocks.{b}.resnets.{j}"] = down.resnets[j]
        if getattr(down, "attentions", None) is not None and j < len(down.attentions):
            mods[f"down_blocks.{b}.attentions.{j}"] = down.attentions[j]
    if getattr(down, "downsamplers", None) is not None:
        for i, ds in enumerate(down.downsamplers):
            mods[f"down_blocks.{b}.downsamplers.{i}"] = ds
    for i in range(b + 1, len(unet.down_blocks)):
        mods[f"down_blocks.{i}"] = unet.down_blocks[i]
    if unet.mid_block is not None:
        mods["mid_block"] = unet.mid_block
    n = len(unet.up_blocks)
    u = n - 1 - b
    for i in range(u):
        mods[f"up_blocks.{i}"] = unet.up_blocks[i]
    up, n_down = unet.up_blocks[u], len(down.resnets)
    for k in range(len(up.resnets)):
        if k < n_down - 1 - l:
            mods[f"up_blocks.{u}.resnets.{k}"] = up.resnets[k]
            if getattr(up, "attentions", None) is not None and k < len(up.attentions):
                mods[f"up_blocks.{u}.attentions.{k}"] = up.attentions[k]
    return mods


class _State:
    def __init__(self, tracker: StepTracker, settings: DeepCacheSettings):
        self.tracker = tracker
        self.settings = settings
        self.full: tuple[int, set[int]] | None = None  # (steps in the loop, full steps) of a non-uniform schedule
        self.interval = settings.interval
        self.cache: dict[str, object] = {}
        self.cache_batch: int | None = None  # batch size the cached features were computed at
        self.log: dict[int, str] = {}  # step -> "F" (full) or "C" (cached), current pipeline call
        self.last_log: dict[int, str] = {}  # of the last finished pipeline call
        self.module_skips = 0

    def is_full(self, step: int, total: int | None) -> bool:
        if step == 0 or not self.cache:
            return True
        s = self.settings
        if s.schedule == "uniform" or total is None:
            return step % self.interval == 0
        if self.full is None or self.full[0] != total:
            self.full = (total, set(full_steps(total, s.interval, s.schedule, s.center, s.power)))
        return step in self.full[1]


class _UNetHook(ForwardHook):
    """Decides, once per UNet call, whether this step is full or cached."""

    def __init__(self, state: _State, pipe):
        self.state, self.pipe = state, pipe

    def forward(self, module, original, *args, **kwargs):
        st = self.state
        step = st.tracker.step
        if step == 0 and st.log:  # a new pipeline call: keep the last one's log
            st.last_log, st.log = st.log, {}
            st.cache.clear()
        sample = args[0] if args else kwargs.get("sample")
        if sample is not None and sample.shape[0] != st.cache_batch:  # batch changed (e.g. guidance dropped)
            st.cache.clear()
            st.cache_batch = sample.shape[0]
        full = st.is_full(step, getattr(self.pipe, "_num_timesteps", None))
        st.log[step] = "F" if full else "C"
        return original(*args, **kwargs)


class _SkipHook(ForwardHook):
    def __init__(self, state: _State, key: str):
        self.state, self.key = state, key

    def forward(self, module, original, *args, **kwargs):
        st = self.state
        if st.log.get(st.tracker.step) == "C" and self.key in st.cache:
            st.module_skips += 1
            return st.cache[self.key]
        out = original(*args, **kwargs)
        st.cache[self.key] = out
        return out


@register
class DeepCacheKnob(Knob):
    name = "deepcache"
    title = "DeepCache"
    description = ("Reuse the UNet's deep features for N-1 of every N steps; only the layers above the kept "
                   "skip branch run in between (Ma et al., CVPR 2024).")
    Settings = DeepCacheSettings
    order = 60
    group = "caching & tokens"

    def validate(self, settings: DeepCacheSettings) -> None:
        f = self.field_name
        check_int(f"{f}.interval", settings.interval, 1, 50, "a whole number from 1 (no caching) to 50")
        check_int(f"{f}.branch", settings.branch, 0, math.inf, "a whole number from 0 (the shallowest skip branch)")
        check_choice(f"{f}.schedule", settings.schedule, ("uniform", "non-uniform"), "uniform or non-uniform")
        check_number(f"{f}.center", settings.center, 0.0, 1.0, "a fraction of the steps from 0 to 1")
        check_number(f"{f}.power", settings.power, 1.0, 4.0, "a number from 1 (uniform spacing) to 4")

    def label(self, settings) -> str:
        extra = [f"branch {settings.branch}"] if settings.branch else []
        if settings.schedule != "uniform":
            extra.append(f"non-uniform (centre {settings.center:g}, power {settings.power:g})")
        return f"DeepCache N={settings.interval}" + (" " + ", ".join(extra) if extra else "")

    def is_baseline(self, settings) -> bool:
        return False  # N=1 asks for DeepCache and caches nothing: flagged as "did nothing"

    def check_model(self, info, settings) -> str | None:
        cfg = denoiser_config(info)
        cls = cfg.get("_class_name")
        if info.denoiser != "unet" or cls != "UNet2DConditionModel":
            return (f"DeepCache caches the deep features of a UNet2DConditionModel; this model's denoiser is "
                    f"{cls or info.denoiser} (for transformers use the transformer cache knob)")
        lpb, blocks = cfg.get("layers_per_block", 2), len(cfg.get("down_block_types", ()))
        n = sum(lpb) if isinstance(lpb, list) else int(lpb) * blocks
        if settings.branch >= n:
            return f"branch {settings.branch} does not exist: this UNet has skip branches 0 to {n - 1}"
        return None

    def supports(self, pipe, settings) -> str | None:
        from diffusers import UNet2DConditionModel

        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, UNet2DConditionModel):
            return f"DeepCache needs a UNet2DConditionModel; this pipeline's denoiser is {type(denoiser_of(pipe)).__name__}"
        n = len(down_layers(unet))
        if settings.branch >= n:
            return f"branch {settings.branch} does not exist: this UNet has skip branches 0 to {n - 1}"
        return step_callback_reason(pipe)

    def apply(self, pipe, settings: DeepCacheSettings) -> Applied:
        unet = pipe.unet
        tracker = StepTracker()
        state = _State(tracker, settings)
        skipped = skipped_modules(unet, settings.branch)
        # one install: the UNet's step hook and every skipped module's, removed together
        remove_hooks = install({"unet": unet, **skipped}, HOOK_NAME,
                               lambda key, m: _UNetHook(state, pipe) if m is unet else _SkipHook(state, key))
        counter = LayerCounter(unet)
        b, l = down_layers(unet)[settings.branch]

        def undo() -> None:
            remove_hooks()
            state.cache.clear()

        def report() -> KnobReport:
            log = state.log or state.last_log
            marks = "".join(log[k] for k in sorted(log))
            hits, full = marks.count("C"), marks.count("F")
            layers = counter.summary()
            sched = f"{settings.schedule} N={settings.interval}"
            if hits:
                frac = layers.get("layers_run_fraction_mean")
                summary = (f"{sched}, branch {settings.branch} (down block {b}, layer {l}): {hits} of {len(marks)} "
                           f"steps reused the cache, {full} recomputed the whole UNet"
                           + (f"; {frac:.0%} of conv/linear layers ran on average" if frac is not None else ""))
            else:
                summary = f"{sched}: no step reused the cache ({full} of {len(marks)} steps ran the whole UNet)"
            details = {"steps": len(marks), "cache_hits": hits, "full_steps": full, "schedule_marks": marks,
                       "full_step_indices": [k for k in sorted(log) if log[k] == "F"],
                       "branch_block": b, "branch_layer": l, "skipped_modules": sorted(skipped), **layers}
            return KnobReport(self.name, hits > 0, summary, details)

        return Applied(self.name, {"callback_on_step_end": tracker.callback}, undo=undo, report=report,
                       instrument=counter.counting)
