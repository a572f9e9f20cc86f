"""Samplers: diffusers schedulers under the names the community uses (A1111 / diffusers docs).

A sampler is swapped, not rebuilt: ``cls.from_config(pipe.scheduler.config, **overrides)`` keeps the
model's training schedule (betas, prediction type) and changes only how it is integrated.

Which schedulers can stand in for a model's own, and which take a ``timestep_spacing``, are diffusers
0.42.1's facts written out here (``SCHEDULER_COMPATIBLES``, ``TIMESTEP_SPACING_SCHEDULERS``), so that
reading a model's configs needs no diffusers import; ``tests/test_knob_imports.py`` checks both tables
against the installed diffusers, so an upgrade that changes them fails a test instead of drifting.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from studio_core.knobs import register
from studio_core.knobs.base import Applied, Knob, KnobReport, value_text

__all__ = ["SAMPLERS", "SCHEDULER_COMPATIBLES", "SamplerKnob", "TIMESTEP_SPACINGS", "TIMESTEP_SPACING_SCHEDULERS",
           "compatible_names"]


@dataclass(frozen=True)
class SamplerDef:
    """One named sampler: the diffusers class, config overrides, and facts a reader needs."""

    cls: str
    overrides: tuple[tuple[str, object], ...] = ()
    stochastic: bool = False  # injects fresh noise each step: same seed, different image from the ODE
    order: int = 1  # denoiser calls per step (2 for Heun / DPM2)
    paper: str = ""
    min_steps: int = 1


def _d(cls, *, stochastic=False, order=1, paper="", min_steps=1, **overrides) -> SamplerDef:
    return SamplerDef(cls, tuple(overrides.items()), stochastic, order, paper, min_steps)


SAMPLERS: dict[str, SamplerDef] = {
    "DDIM": _d("DDIMScheduler", paper="Song et al. 2021, DDIM"),
    "DDPM": _d("DDPMScheduler", stochastic=True, paper="Ho et al. 2020, DDPM"),
    "PNDM": _d("PNDMScheduler", skip_prk_steps=False, min_steps=4,  # its Runge-Kutta warm start spans 4 steps
                paper="Liu et al. 2022, PNDM (Runge-Kutta warm start)"),
    "PLMS": _d("PNDMScheduler", skip_prk_steps=True, paper="Liu et al. 2022, PNDM linear multistep"),
    "LMS": _d("LMSDiscreteScheduler", paper="Karras et al. 2022 sigmas, linear multistep"),
    "LMS Karras": _d("LMSDiscreteScheduler", use_karras_sigmas=True, paper="Karras et al. 2022"),
    "Euler": _d("EulerDiscreteScheduler", paper="Karras et al. 2022, Algorithm 2 (Euler)"),
    "Euler a": _d("EulerAncestralDiscreteScheduler", stochastic=True, paper="k-diffusion ancestral Euler"),
    "Heun": _d("HeunDiscreteScheduler", order=2, paper="Karras et al. 2022, Algorithm 1 (Heun)"),
    "DPM2": _d("KDPM2DiscreteScheduler", order=2, paper="Karras et al. 2022, DPM-Solver-2 variant"),
    "DPM2 a": _d("KDPM2AncestralDiscreteScheduler", stochastic=True, order=2, paper="k-diffusion DPM2 ancestral"),
    "DPM2 Karras": _d("KDPM2DiscreteScheduler", use_karras_sigmas=True, order=2, paper="Karras et al. 2022"),
    "DPM++ 2M": _d("DPMSolverMultistepScheduler", paper="Lu et al. 2022, DPM-Solver++(2M)"),
    "DPM++ 2M Karras": _d("DPMSolverMultistepScheduler", use_karras_sigmas=True, paper="Lu et al. 2022 + Karras sigmas"),
    "DPM++ 2M SDE": _d("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", stochastic=True,
                       paper="Lu et al. 2022, SDE DPM-Solver++(2M)"),
    "DPM++ 2M SDE Karras": _d("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", use_karras_sigmas=True,
                              stochastic=True, paper="Lu et al. 2022 + Karras sigmas"),
    "DPM++ SDE": _d("DPMSolverSDEScheduler", stochastic=True, order=2, paper="Lu et al. 2022, DPM-Solver++ SDE"),
    "DPM++ SDE Karras": _d("DPMSolverSDEScheduler", use_karras_sigmas=True, stochastic=True, order=2,
                           paper="Lu et al. 2022 + Karras sigmas"),
    "DEIS": _d("DEISMultistepScheduler", paper="Zhang & Chen 2023, DEIS"),
    "UniPC": _d("UniPCMultistepScheduler", paper="Zhao et al. 2023, UniPC"),
    "LCM": _d("LCMScheduler", stochastic=True, paper="Luo et al. 2023, Latent Consistency Models"),
}

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# diffusers' KarrasDiffusionSchedulers: the ``_compatibles`` of every scheduler that lists them
_KARRAS = ("DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
           "DPMSolverSDEScheduler", "DPMSolverSinglestepScheduler", "EDMEulerScheduler",
           "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
           "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
           "UniPCMultistepScheduler")
# scheduler class -> its ``_compatibles`` in diffusers 0.42.1 (classes with none are left out)
SCHEDULER_COMPATIBLES: dict[str, tuple[str, ...]] = {
    **{name: _KARRAS for name in (
        "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "DDIMParallelScheduler", "DDIMScheduler",
        "DDPMParallelScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepInverseScheduler",
        "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler", "DPMSolverSinglestepScheduler",
        "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
        "SASolverScheduler", "UniPCMultistepScheduler")},
    "LTXEulerAncestralRFScheduler": ("FlowMatchEulerDiscreteScheduler",),
}
# the schedulers of diffusers 0.42.1 whose constructor takes ``timestep_spacing``
TIMESTEP_SPACING_SCHEDULERS = frozenset((
    "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler",
    "DDIMScheduler", "DDPMParallelScheduler", "DDPMScheduler", "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler", "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler",
    "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler",
    "PNDMScheduler", "SASolverScheduler", "TCDScheduler", "UniPCMultistepScheduler"))


def compatible_names(scheduler_class: str) -> tuple[str, ...]:
    """Scheduler classes diffusers declares interchangeable with the model's own (itself included)."""
    if not scheduler_class:
        return ()
    return tuple(sorted(set(SCHEDULER_COMPATIBLES.get(scheduler_class, ())) | {scheduler_class}))


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str
    timestep_spacing: str | None = None


@register
class SamplerKnob(Knob):
    name = "sampler"
    title = "Sampler"
    description = "Which solver integrates the diffusion ODE/SDE, with optional Karras sigmas and timestep spacing."
    Settings = SamplerSettings
    builtin_field = "sampler"
    order = 40

    def settings_for(self, spec):
        if spec.sampler == "default" and spec.timestep_spacing is None:
            return None
        return SamplerSettings(spec.sampler, spec.timestep_spacing)

    def describe(self, settings):
        return settings.sampler if settings.timestep_spacing is None else f"{settings.sampler} ({settings.timestep_spacing})"

    def _definition(self, info_scheduler: str, settings) -> SamplerDef:
        if settings.sampler == "default":
            return SamplerDef(info_scheduler)
        return SAMPLERS[settings.sampler]

    def check_model(self, info, settings) -> str | None:
        sd = self._definition(info.scheduler_class, settings)
        if sd.cls == "LCMScheduler":
            if info.scheduler_class != "LCMScheduler" and not info.time_cond_proj_dim:
                return ("LCM needs a consistency-distilled model (an LCM UNet or LCM-LoRA); this model's "
                        f"scheduler is {info.scheduler_class} and its denoiser has no guidance embedding")
        elif sd.cls not in info.compatible_schedulers:
            return (f"this model's scheduler {info.scheduler_class} is compatible with "
                    f"{', '.join(n for n, d in SAMPLERS.items() if d.cls in info.compatible_schedulers) or 'none of the named samplers'}")
        if sd.cls == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
            return "DPM++ SDE needs the torchsde package (pip install torchsde)"
        if settings.timestep_spacing is not None and sd.cls not in TIMESTEP_SPACING_SCHEDULERS:
            return f"{sd.cls} has no timestep_spacing setting"
        return None

    def apply(self, pipe, settings) -> Applied:
        import diffusers

        original = pipe.scheduler
        sd = self._definition(type(original).__name__, settings)
        overrides = dict(sd.overrides)
        if settings.timestep_spacing is not None:
            overrides["timestep_spacing"] = settings.timestep_spacing
        cls = getattr(diffusers, sd.cls)
        pipe.scheduler = cls.from_config(original.config, **overrides)

        def undo() -> None:
            pipe.scheduler = original

        def report() -> KnobReport:
            ts = pipe.scheduler.timesteps
            changed = sd.cls != type(original).__name__ or bool(overrides)
            details = {"scheduler": sd.cls, "from": type(original).__name__, "overrides": overrides,
                       "stochastic": sd.stochastic, "calls_per_step": sd.order, "model_default": not changed,
                       "timesteps": [int(t) for t in ts[:3]] + (["..."] if len(ts) > 3 else []) if ts is not None else None}
            settings_text = ", ".join(f"{k.replace('_', ' ')} {value_text(v)}" for k, v in overrides.items())
            summary = (f"{type(original).__name__} -> {sd.cls}" if changed else
                       f"the model's own {sd.cls} (its default, nothing to change)") + (
                f" with {settings_text}" if settings_text else "") + (" (stochastic)" if sd.stochastic else "")
            return KnobReport(self.name, changed, summary, details)

        return Applied(self.name, undo=undo, report=report)
