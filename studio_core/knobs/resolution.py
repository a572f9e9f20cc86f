"""Output resolution: cost grows with the number of latent pixels (and attention with its square).

The size asked for is the size computed. PixArt and Sana pipelines "bin" the request by default
(``use_resolution_binning=True``): they generate at the nearest entry of an aspect-ratio table for the
model's native size and resize the image back, so a 128x128 run would really time 256x256 or 512x512.
Where a pipeline's ``__call__`` takes ``use_resolution_binning``, this knob passes False, and its report
says what binning would have computed.
"""

from __future__ import annotations

import inspect
import sys
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
    description = ("Height x width in pixels, a multiple of the model's VAE compression x patch size; computed as "
                   "asked (PixArt's and Sana's resolution binning is turned off).")
    Settings = ResolutionSettings
    builtin_field = "height"
    order = 30
    group = "sampling"

    def settings_for(self, spec):
        if spec.height is None or spec.width is None:
            return None
        return ResolutionSettings(spec.height, spec.width)

    def describe(self, settings):
        return f"{settings.height}x{settings.width}"

    def apply(self, pipe, settings) -> Applied:
        kwargs = {"height": settings.height, "width": settings.width}
        details: dict = dict(kwargs)
        summary = f"{settings.height}x{settings.width} px"
        if "use_resolution_binning" in inspect.signature(pipe.__call__).parameters:
            kwargs["use_resolution_binning"] = False
            binned = _binned_size(pipe, settings.height, settings.width)
            details.update(resolution_binning=False, binned_size=binned)
            would = f"would have computed {binned[0]}x{binned[1]}" if binned else "has no table for this model"
            summary += f"; resolution binning off ({type(pipe).__name__} {would})"

        def report() -> KnobReport:
            return KnobReport(self.name, True, summary, details)

        return Applied(self.name, kwargs, report=report)


def _binned_size(pipe, height: int, width: int) -> tuple[int, int] | None:
    """The size the pipeline's resolution binning would compute: the nearest aspect ratio in its table for the
    model's native size (``ASPECT_RATIO_<native px>_BIN`` of the pipeline's module, the table its ``__call__``
    picks by the transformer's ``sample_size``), or None when the module has no such table."""
    native = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    table = getattr(sys.modules[type(pipe).__module__], f"ASPECT_RATIO_{native}_BIN", None)
    if table is None:
        return None
    h, w = pipe.image_processor.classify_height_width_bin(height, width, ratios=table)
    return int(h), int(w)
