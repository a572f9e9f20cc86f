"""Number of denoising steps: the first knob anyone turns (latency is about linear in it)."""

from __future__ import annotations

from dataclasses import dataclass

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport


@dataclass(frozen=True)
class StepsSettings:
    steps: int


@register
class StepsKnob(Knob):
    name = "steps"
    title = "Steps"
    description = "Denoising steps of the sampler; second-order samplers call the denoiser about twice per step."
    Settings = StepsSettings
    builtin_field = "steps"
    order = 10
    group = "sampling"

    def settings_for(self, spec):
        return StepsSettings(spec.steps) if spec.steps is not None else None

    def describe(self, settings):
        return settings.steps

    def apply(self, pipe, settings) -> Applied:
        def report() -> KnobReport:
            ts = getattr(pipe.scheduler, "timesteps", None)
            n = int(len(ts)) if ts is not None else None
            return KnobReport(self.name, True, f"{settings.steps} steps ({n} scheduler timesteps)",
                              {"steps": settings.steps, "scheduler_timesteps": n})

        return Applied(self.name, {"num_inference_steps": settings.steps}, report=report)
