"""Heun (flow) on any flow pipeline: diffusers' FlowMatchHeun steps over FlowMatchEuler's sigma schedule.

diffusers' ``FlowMatchHeunDiscreteScheduler`` (0.42.1) makes its sigmas from a fixed ``shift`` only: its
``set_timesteps`` takes neither the ``sigmas`` FluxPipeline passes nor the ``mu`` (the resolution-dependent
shift) that FluxPipeline and a dynamic-shifting SD3 pass, so those pipelines cannot run it. The subclass
here takes both and gets its sigmas from a ``FlowMatchEulerDiscreteScheduler`` built from the same schedule
settings, so the dynamic shift ``exp(mu) / (exp(mu) + (1/s - 1))``, the fixed shift and ``shift_terminal``
are FlowMatchEuler's own code, not a copy; Heun's step and its 2nd-order interleaving are unchanged.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.configuration_utils import register_to_config

__all__ = ["FlowMatchHeunDynamicScheduler", "SCHEDULE_SETTINGS"]

# the FlowMatchEuler settings that place its sigmas (its step's own settings, e.g. stochastic_sampling, are not)
SCHEDULE_SETTINGS = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift",
                     "base_image_seq_len", "max_image_seq_len", "shift_terminal", "time_shift_type")


class FlowMatchHeunDynamicScheduler(FlowMatchHeunDiscreteScheduler):
    """Implements Algorithm 1 (Heun steps) from Karras et al. (2022) on the flow ODE, with FlowMatchEuler's
    schedule: a fixed shift, or the pipeline's dynamic shift ``mu``, over the pipeline's ``sigmas``."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: float | None = 0.5, max_shift: float | None = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, shift_terminal: float | None = None,
                 time_shift_type: str = "exponential"):
        super().__init__(num_train_timesteps=num_train_timesteps, shift=shift)
        self.schedule = FlowMatchEulerDiscreteScheduler(**{k: self.config[k] for k in SCHEDULE_SETTINGS})

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device = None,
                      sigmas: list[float] | None = None, mu: float | None = None) -> None:
        """FlowMatchEuler's sigmas for these arguments, each after the first visited twice (Heun's predictor
        and corrector), then 0."""
        self.schedule.set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
        sigmas = self.schedule.sigmas[:-1]  # less FlowMatchEuler's terminal 0
        self.num_inference_steps = len(sigmas)
        timesteps = sigmas * self.config.num_train_timesteps
        self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        self.prev_derivative = None
        self.dt = None
        self._step_index = None
        self._begin_index = None
