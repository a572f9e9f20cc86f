"""Weight and activation precision: fp32 (the baseline), fp16 or bf16, set when the pipeline loads."""

from __future__ import annotations

from dataclasses import dataclass

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class PrecisionSettings:
    precision: str


@register
class PrecisionKnob(Knob):
    name = "precision"
    title = "Precision"
    description = ("fp32 is the baseline; fp16/bf16 halve weight memory and use tensor cores on GPU. On CPU "
                   "without native half-precision units they are usually slower.")
    Settings = PrecisionSettings
    builtin_field = "precision"
    order = 0
    group = "precision & quantization"

    def settings_for(self, spec):
        return PrecisionSettings(spec.precision)

    def describe(self, settings):
        return settings.precision

    def is_baseline(self, settings) -> bool:
        return settings.precision == "fp32"

    def load_options(self, settings) -> dict:
        return {"dtype": settings.precision}

    def apply(self, pipe, settings) -> Applied:
        def report() -> KnobReport:
            denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
            actual = str(next(denoiser.parameters()).dtype).replace("torch.", "")
            active = settings.precision != "fp32"
            ok = actual == DTYPES[settings.precision]
            summary = f"denoiser weights in {actual}" + ("" if ok else f" (asked for {settings.precision})")
            return KnobReport(self.name, active and ok, summary, {"requested": settings.precision, "actual": actual})

        return Applied(self.name, report=report)
