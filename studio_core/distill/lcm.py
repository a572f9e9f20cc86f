"""Latent consistency distillation (LCD): the student, its teacher's solver, and one training step.

Follows diffusers' reference recipe (``examples/consistency_distillation/train_lcm_distill_sd_wds.py`` and its
LoRA twin) and the LCM paper (Luo et al. 2023, arXiv 2310.04378, Algorithm 1):

- The teacher's 1000 training timesteps are cut into a DDIM grid of ``ddim_steps`` (50: timesteps 19, 39, ...,
  999, so the skip is k = 20). LCMScheduler's ``original_inference_steps`` is the same 50, so the student is
  sampled on the grid it was trained on.
- Each step draws a grid point t_{n+k}, noises a data latent to it, and lets the frozen teacher take one
  classifier-free-guided DDIM step back to t_n, with the guidance w drawn from [w_min, w_max] per item
  (the teacher's prediction is cond + w (cond - uncond), so a pipeline's guidance_scale is w + 1).
- The student's consistency output at t_{n+k}, c_skip x + c_out x0_pred (boundary scalings with sigma_data 0.5 and
  timestep scaling 10, LCMScheduler's), is pulled with a pseudo-Huber loss (c = 0.001) toward the target
  network's output at t_n. The target is an EMA (decay 0.95) of the student; for LoRA it is the student itself
  under no_grad, as in the LoRA recipe.
- The full student is the teacher's UNet with ``time_cond_proj_dim`` set: w enters through a guidance
  embedding (``get_guidance_scale_embedding``, the very function the SD and SDXL pipelines call at inference),
  so one unguided call per step replaces the teacher's two. Its new projection starts at zero, so before
  training the student computes exactly what the teacher does. The LoRA student keeps the teacher's UNet,
  adds low-rank adapters on the recipe's layers, and learns the guided distribution for the trained w range.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

__all__ = ["DDIMSolver", "LCDTrainer", "LORA_TARGETS", "boundary_scalings", "build_student_unet", "guidance_embedding",
           "predicted_x0"]

# the layers LCM-LoRA adapts (diffusers' train_lcm_distill_lora_sd_wds.py): attention, feed-forward, resnet convs
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """(c_skip, c_out) of the consistency parametrisation at integer timesteps ``t``, as LCMScheduler computes
    them: c_skip -> 1 and c_out -> 0 as t -> 0, so the consistency function is the identity at the boundary."""
    scaled = timestep_scaling * t.float()
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


def predicted_x0(output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, alphas_cumprod: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """x0 from a denoiser output at timesteps ``t`` (epsilon or v prediction)."""
    a = alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        return (x - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x - sigma * output
    raise ValueError(f"prediction_type {prediction_type!r}: distillation takes epsilon or v_prediction teachers")


def predicted_noise(output: torch.Tensor, t: torch.Tensor, x: torch.Tensor, alphas_cumprod: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return output
    a = alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
    return a.sqrt() * output + (1 - a).sqrt() * x  # v prediction


class DDIMSolver:
    """The teacher's ODE solver on a ``ddim_steps`` grid of its ``alphas_cumprod`` (one deterministic DDIM step)."""

    def __init__(self, alphas_cumprod: torch.Tensor, ddim_steps: int = 50):
        n = len(alphas_cumprod)
        self.k = n // ddim_steps
        self.timesteps = (torch.arange(1, ddim_steps + 1) * self.k).round().long() - 1  # 19, 39, ..., 999
        prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])
        self.alpha_prev = prev

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x at the grid point before ``index``, from the guided x0 and noise predictions."""
        a = self.alpha_prev.to(x0.device)[index].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The student's guidance input for w (= guidance_scale - 1): the SD pipelines' own
    ``get_guidance_scale_embedding`` (it uses no pipeline state), so training and inference embed w the same way."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)


def build_student_unet(teacher_unet, cond_dim: int):
    """The teacher's UNet with a ``cond_dim`` guidance embedding whose projection starts at zero (so the student
    starts as the teacher), every other weight copied."""
    from diffusers import UNet2DConditionModel

    student = UNet2DConditionModel.from_config({**teacher_unet.config, "time_cond_proj_dim": cond_dim})
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("time_embedding.cond_proj") for k in missing):
        raise RuntimeError(f"student UNet does not match its teacher: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student if teacher_unet.dtype == torch.float32 else student.to(teacher_unet.dtype)


@dataclass
class Batch:
    """One training batch: latents, conditioning (``encoder_hidden_states`` and, for SDXL, ``added``)."""

    latents: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor
    added: dict | None = None  # SDXL: {"text_embeds", "time_ids"} for the conditional items
    added_uncond: dict | None = None


class LCDTrainer:
    """Student, target and frozen teacher; ``step(batch, lr_scale)`` runs one LCD optimisation step.

    ``lora_rank`` > 0 trains LoRA adapters on the teacher's UNet (no guidance embedding; w is drawn for the teacher
    only) instead of a full student."""

    def __init__(self, teacher_unet, alphas_cumprod: torch.Tensor, prediction_type: str, *, lr: float,
                 w_min: float, w_max: float, ddim_steps: int = 50, huber_c: float = 0.001, ema_decay: float = 0.95,
                 cond_dim: int = 256, guidance_lr_mult: float = 1.0, lora_rank: int = 0, amp: str = "", seed: int = 0,
                 device: str = "cpu"):
        self.teacher = teacher_unet.eval().requires_grad_(False).to(device)
        self.alphas, self.prediction_type = alphas_cumprod.float(), prediction_type
        self.solver = DDIMSolver(self.alphas, ddim_steps)
        self.w_min, self.w_max, self.huber_c, self.ema_decay = w_min, w_max, huber_c, ema_decay
        self.lora_rank, self.amp, self.device = lora_rank, amp, device
        if lora_rank:
            from peft import LoraConfig

            self.student = copy.deepcopy(self.teacher).requires_grad_(False)
            self.student.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                                target_modules=list(LORA_TARGETS)))
            self.target = None  # the LoRA recipe's target is the student itself, without gradients
            self.cond_dim = None
        else:
            self.student = build_student_unet(self.teacher, cond_dim).requires_grad_(True)
            self.target = copy.deepcopy(self.student).eval().requires_grad_(False)
            self.cond_dim = cond_dim
        self.student.train().to(device)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        # the guidance projection is new and starts at zero: it gets ``guidance_lr_mult`` times the learning rate,
        # so w is learned within a short budget while the teacher's weights are only fine-tuned
        new = {id(p) for n, p in self.student.named_parameters() if n.startswith("time_embedding.cond_proj")}
        groups = [{"params": [p for p in self.params if id(p) not in new], "lr": lr},
                  {"params": [p for p in self.params if id(p) in new], "lr": lr * guidance_lr_mult}]
        # no weight decay, as diffusers' LCD examples run it (adam_weight_decay 0): it would pull the fine-tuned
        # teacher weights toward zero
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.g = torch.Generator().manual_seed(seed + 7)
        self.n = 0

    # ------------------------------------------------------------------ state (checkpoints)
    def trainable_state(self) -> dict:
        if self.lora_rank:
            from peft.utils import get_peft_model_state_dict

            return get_peft_model_state_dict(self.student)
        return self.student.state_dict()

    def state_dict(self) -> dict:
        return {"student": self.trainable_state(), "target": None if self.target is None else self.target.state_dict(),
                "opt": self.opt.state_dict(), "g": self.g.get_state(), "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if self.lora_rank:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(self.student, state["student"])
        else:
            self.student.load_state_dict(state["student"])
            self.target.load_state_dict(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.g.set_state(state["g"])
        self.n = state["n"]

    # ------------------------------------------------------------------ one step
    def _unet(self, net, x, t, ehs, added, wemb):
        kw = {"encoder_hidden_states": ehs}
        if added is not None:
            kw["added_cond_kwargs"] = added
        if wemb is not None:
            kw["timestep_cond"] = wemb
        return net(x, t, **kw).sample

    def loss(self, b: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """The LCD loss on ``b``; noise, grid points and w come from ``generator`` (default: the training one)."""
        d, g, n = self.device, generator or self.g, len(b.latents)
        x0 = b.latents.to(d)
        noise = torch.randn(x0.shape, generator=g).to(d)
        index = torch.randint(0, len(self.solver.timesteps), (n,), generator=g)
        t_start = self.solver.timesteps[index].to(d)
        t_prev = torch.clamp(t_start - self.solver.k, min=0)
        w = (self.w_max - self.w_min) * torch.rand(n, generator=g) + self.w_min
        wemb = None if self.cond_dim is None else guidance_embedding(w, self.cond_dim).to(d, x0.dtype)
        w = w.to(d).view(-1, 1, 1, 1)
        a = self.alphas.to(d)[t_start].view(-1, 1, 1, 1)
        x = a.sqrt() * x0 + (1 - a).sqrt() * noise  # the scheduler's add_noise, on its own alphas
        cs, co = (s.view(-1, 1, 1, 1) for s in boundary_scalings(t_start))
        cs_p, co_p = (s.view(-1, 1, 1, 1) for s in boundary_scalings(t_prev))
        amp = torch.autocast("cuda" if d.startswith("cuda") else "cpu", dtype=getattr(torch, self.amp or "float32"),
                             enabled=bool(self.amp))
        with amp:
            out = self._unet(self.student, x, t_start, b.cond.to(d), b.added, wemb).float()
        model_pred = cs * x + co * predicted_x0(out, t_start, x, self.alphas, self.prediction_type)
        with torch.no_grad(), amp:
            both = self._unet(self.teacher, torch.cat([x, x]), torch.cat([t_start, t_start]),
                              torch.cat([b.cond.to(d), b.uncond.to(d)]), _cat_added(b.added, b.added_uncond),
                              None).float()
            xx, tt = torch.cat([x, x]), torch.cat([t_start, t_start])
            x0s, eps = (predicted_x0(both, tt, xx, self.alphas, self.prediction_type),
                        predicted_noise(both, tt, xx, self.alphas, self.prediction_type))
            (c_x0, u_x0), (c_eps, u_eps) = x0s.chunk(2), eps.chunk(2)
            x_prev = self.solver.step(c_x0 + w * (c_x0 - u_x0), c_eps + w * (c_eps - u_eps), index.to(d))
            target_net = self.target if self.target is not None else self.student
            t_out = self._unet(target_net, x_prev, t_prev, b.cond.to(d), b.added, wemb).float()
            target = cs_p * x_prev + co_p * predicted_x0(t_out, t_prev, x_prev, self.alphas, self.prediction_type)
        c = self.huber_c
        return (torch.sqrt((model_pred - target) ** 2 + c ** 2) - c).mean()

    def step(self, b: Batch, lr_scale: float = 1.0) -> float:
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * lr_scale
        loss = self.loss(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.n += 1
        if self.target is not None:
            with torch.no_grad():
                torch._foreach_lerp_(list(self.target.parameters()),
                                     [p.detach() for p in self.student.parameters()], 1 - self.ema_decay)
        return loss.item()


def _cat_added(cond: dict | None, uncond: dict | None) -> dict | None:
    if cond is None:
        return None
    return {k: torch.cat([cond[k], uncond[k]]) for k in cond}

