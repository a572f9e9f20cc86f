"""Shared machinery of the knobs that change the denoiser's forward pass (feature caching, token merging).

* ``StepTracker`` knows which iteration of the pipeline's denoising loop is running. diffusers pipelines
  call ``callback_on_step_end`` after every iteration; the tracker's callback advances the step and goes
  back to 0 after the last one, so every pipeline call starts at step 0. (A "step" here is one loop
  iteration = one denoiser call with the classifier-free-guidance batch; Heun-type samplers make two
  per requested step.) The engine chains the callbacks of several knobs into one.
* ``ForwardHook`` is a ``diffusers.hooks.ModelHook`` that replaces a module's forward; ``install`` /
  ``remove_all`` register and remove a family of them by name through ``HookRegistry``, the mechanism
  diffusers' own cache hooks use, so removing them restores the original forward exactly.
* ``LayerCounter`` counts, per denoiser call, how many of the denoiser's convolution and linear layers
  actually ran: the knob-independent proof that a cache skipped work. It is installed only around the
  engine's first warm-up call (``Applied.instrument``) so its own overhead never enters the timings.
* ``is_compiled`` tells whether ``torch.compile`` already wraps a module: the compile knob refuses to compile
  twice, and the attention knob profiles the second call of a compiled denoiser (the first one compiles).

Nothing here imports torch at module level (each function imports it when called), so the knob modules
can build on this one and the registry still imports without torch.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # torch is imported where a function needs it: importing the registry must stay cheap
    import torch

__all__ = ["ForwardHook", "LayerCounter", "StepTracker", "denoiser_config", "denoiser_of", "install",
           "is_compiled", "remove_all", "step_callback_reason"]


def denoiser_of(pipe) -> torch.nn.Module | None:
    """The pipeline's UNet or transformer."""
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def denoiser_config(info) -> dict:
    """The denoiser's ``config.json`` of a model folder (empty when absent)."""
    path = Path(info.path) / info.denoiser / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_compiled(module: torch.nn.Module) -> bool:
    """True when the module, or its forward, is already wrapped by ``torch.compile``."""
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(module, OptimizedModule) or hasattr(module.__dict__.get("forward"), "_torchdynamo_orig_callable")


def step_callback_reason(pipe) -> str | None:
    """Why this pipeline cannot tell a knob which step it is in (no ``callback_on_step_end``), or None."""
    params = inspect.signature(type(pipe).__call__).parameters
    if "callback_on_step_end" not in params:
        return f"{type(pipe).__name__} has no callback_on_step_end, so the knob cannot follow the denoising steps"
    return None


class StepTracker:
    """The current denoising-loop iteration, advanced by ``callback`` (pass it as ``callback_on_step_end``).

    ``on_step_end`` listeners run after each iteration with the finished step index and may return tensors
    to hand back to the pipeline (e.g. ``prompt_embeds``), as ``callback_on_step_end`` allows."""

    def __init__(self) -> None:
        self.step = 0
        self.generations = 0  # pipeline calls that ran to their last step
        self.listeners: list[Callable[[Any, int, dict], dict | None]] = []

    def reset(self) -> None:
        self.step = 0

    def callback(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        out: dict = {}
        for listener in self.listeners:
            out.update(listener(pipe, int(i), callback_kwargs) or {})
        total = getattr(pipe, "_num_timesteps", None)
        if total is not None and int(i) + 1 >= int(total):
            self.step = 0
            self.generations += 1
        else:
            self.step = int(i) + 1
        return out


class ForwardHook:
    """Base of a hook that replaces ``module.forward``: subclasses define ``forward(module, original, *a, **kw)``.

    Built on ``diffusers.hooks.ModelHook`` (created lazily so importing the knob registry stays cheap)."""

    def forward(self, module, original, *args, **kwargs):  # pragma: no cover - overridden
        return original(*args, **kwargs)


def _model_hook(hook: ForwardHook):
    from diffusers.hooks import ModelHook

    class _Bridge(ModelHook):
        def new_forward(self, module, *args, **kwargs):
            return hook.forward(module, self.fn_ref.original_forward, *args, **kwargs)

    return _Bridge()


def install(modules: dict[str, torch.nn.Module], name: str, make: Callable[[str, torch.nn.Module], ForwardHook]
            ) -> Callable[[], None]:
    """Register ``make(key, module)`` as hook ``name`` on every module; returns the function that removes them all."""
    from diffusers.hooks import HookRegistry

    done: list[torch.nn.Module] = []
    try:
        for key, module in modules.items():
            HookRegistry.check_if_exists_or_initialize(module).register_hook(_model_hook(make(key, module)), name)
            done.append(module)
    except BaseException:
        remove_all(done, name)
        raise

    def undo() -> None:
        remove_all(done, name)

    return undo


def remove_all(modules, name: str) -> None:
    for module in modules:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(name, recurse=False)


class LayerCounter:
    """Per denoiser call: how many conv / linear layers ran, out of how many the denoiser has."""

    def __init__(self, denoiser: torch.nn.Module):
        import torch

        self.denoiser = denoiser
        self.layers = [m for m in denoiser.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        self.calls: list[int] = []  # layers run, one entry per denoiser call

    @property
    def total(self) -> int:
        return len(self.layers)

    @contextlib.contextmanager
    def counting(self) -> Iterator["LayerCounter"]:
        self.calls.clear()

        def start(module, args, kwargs=None):
            self.calls.append(0)

        def count(module, args):
            if self.calls:
                self.calls[-1] += 1

        handles = [self.denoiser.register_forward_pre_hook(start)]
        handles += [m.register_forward_pre_hook(count) for m in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def summary(self) -> dict:
        """Fractions of layers run per denoiser call (of the counted pipeline call), for a knob report."""
        if not self.calls or not self.total:
            return {}
        fractions = [round(c / self.total, 4) for c in self.calls]
        return {"layers_total": self.total, "layers_run_per_call": list(self.calls),
                "layers_run_fraction_mean": round(sum(fractions) / len(fractions), 4),
                "denoiser_calls_counted": len(self.calls)}
