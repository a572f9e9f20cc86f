"""Classifier-free guidance scale (Ho & Salimans 2022); at 1 or below the unconditional pass is skipped."""

from __future__ import annotations

from dataclasses import dataclass

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport


@dataclass(frozen=True)
class GuidanceSettings:
    guidance: float


@register
class GuidanceKnob(Knob):
    name = "guidance"
    title = "Guidance scale"
    description = ("Classifier-free guidance; above 1 every step runs the denoiser on a conditional and an "
                   "unconditional batch, at 1 or below only the conditional one (about half the work).")
    Settings = GuidanceSettings
    builtin_field = "guidance"
    order = 20
    group = "sampling"

    def settings_for(self, spec):
        return GuidanceSettings(float(spec.guidance)) if spec.guidance is not None else None

    def describe(self, settings):
        return settings.guidance

    def apply(self, pipe, settings) -> Applied:
        g = settings.guidance

        def report() -> KnobReport:
            cfg = g > 1
            return KnobReport(self.name, True,
                              f"guidance {g:g}: " + ("conditional + unconditional pass" if cfg else "CFG off, one pass"),
                              {"guidance": g, "cfg": cfg})

        return Applied(self.name, {"guidance_scale": g}, report=report)
