"""Output resolution: cost grows with the number of latent pixels (and attention with its square)."""

from __future__ import annotations

from dataclasses import dataclass

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport


@dataclass(frozen=True)
class ResolutionSettings:
    height: int
    width: int


@register
class ResolutionKnob(Knob):
    name = "resolution"
    title = "Resolution"
    description = "Height x width in pixels; must be a multiple of the model's latent downsampling."
    Settings = ResolutionSettings
    builtin_field = "height"
    order = 30

    def settings_for(self, spec):
        if spec.height is None or spec.width is None:
            return None
        return ResolutionSettings(spec.height, spec.width)

    def describe(self, settings):
        return f"{settings.height}x{settings.width}"

    def apply(self, pipe, settings) -> Applied:
        def report() -> KnobReport:
            return KnobReport(self.name, True, f"{settings.height}x{settings.width} px",
                              {"height": settings.height, "width": settings.width})

        return Applied(self.name, {"height": settings.height, "width": settings.width}, report=report)
