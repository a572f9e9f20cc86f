"""``python -m studio_core distill --method lcm``: make a few-step student of a teacher pipeline.

Stages: check the teacher and the data (before any work), encode the data once (VAE latents, text embeddings of
the captions and of the empty caption), train (``lcm.LCDTrainer``) with warm-up and cosine over the steps or the
time budget, whichever ends first, checkpointing every ``checkpoint_every`` steps, then save the student, write
``training_report.json`` and evaluate (``evaluate.py``), then the card (``card.py``).

The student folder is the teacher's pipeline with the student UNet and ``LCMScheduler`` (``from_pretrained``
loads it; the SD and SDXL pipelines feed w through ``time_cond_proj_dim``). With ``--lora RANK`` it holds
``pytorch_lora_weights.safetensors`` in diffusers' format, for ``load_lora_weights`` on the teacher.

Resume: a kill leaves ``checkpoint.pt`` (written atomically) in the output folder; running the same command again
continues from it, with the optimiser, the RNG and the time spent restored, so the budget counts all of it. A
checkpoint of other settings (teacher, data, recipe) is refused with what differs; ``--restart`` discards it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from studio_core.distill.data import DistillData, emoji_data, folder_data
from studio_core.distill.lcm import Batch, LCDTrainer
from studio_core.embedded.training.recipe import log, warmup_cosine
from studio_core.errors import SpecError

__all__ = ["CHECKPOINT", "DISTILL_RECIPES", "DistillRecipe", "check_teacher", "distill"]

CHECKPOINT = "checkpoint.pt"
REPORT = "training_report.json"
TEACHER_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


@dataclass(frozen=True)
class DistillRecipe:
    """Every setting of one distillation run."""

    name: str
    steps: int = 3000
    batch: int = 32
    lr: float = 1e-5  # diffusers' LCD examples fine-tune SD at 1e-6 (the LCM paper 8e-6); 1e-4 drifted here (card)
    warmup: int = 50
    w_min: float = 2.0  # guidance w = guidance_scale - 1, drawn per item from [w_min, w_max]
    w_max: float = 8.0
    ddim_steps: int = 50  # the teacher's solver grid: skip k = 1000 / 50 = 20
    huber_c: float = 0.001
    ema_decay: float = 0.95
    cond_dim: int = 256  # the student UNet's time_cond_proj_dim
    guidance_lr_mult: float = 10.0  # learning-rate multiple of the new (zero-initialised) guidance projection
    amp: str = ""  # autocast dtype of the forward passes ("" for fp32)
    budget_minutes: float = 38.0
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 0  # 0: torch's default
    limit: int | None = None  # first N training items only (tests)
    eval_captions: int = 200
    eval_steps: tuple[int, ...] = (1, 2, 4, 8)
    guidance_grid: tuple[float, ...] = (3.0, 5.0, 7.0, 9.0)
    notes: str = ""


DISTILL_RECIPES: dict[str, DistillRecipe] = {
    "cpu": DistillRecipe(name="cpu", steps=4500, batch=48, warmup=100, threads=2,
                         notes="2 CPU cores, under 45 minutes with evaluation"),
    "gpu": DistillRecipe(name="gpu", steps=20000, batch=256, amp="bfloat16", budget_minutes=20.0,
                         checkpoint_every=1000, notes="one H100/H200, about 25 minutes"),
    "tiny": DistillRecipe(name="tiny", steps=12, batch=4, lr=1e-3, warmup=2, budget_minutes=30.0, checkpoint_every=4,
                          limit=24, eval_captions=2, eval_steps=(1, 2), guidance_grid=(3.0,), notes="for tests"),
}


# --------------------------------------------------------------------------- checks before work


def check_teacher(path: str | Path):
    """The teacher's ``spec.ModelInfo``, or ``SpecError`` naming why it cannot be distilled (no torch)."""
    from studio_core.knobs.sampler import CONSISTENCY_SCHEDULERS
    from studio_core.models import check_pipeline_folder
    from studio_core.spec import model_info

    cls = check_pipeline_folder(path).get("_class_name")
    if cls not in TEACHER_PIPELINES:
        raise SpecError("--teacher", str(path), f"a {cls} cannot be distilled here: LCM distillation takes an SD 1.5- "
                                                f"or SDXL-shaped UNet pipeline ({', '.join(TEACHER_PIPELINES)})")
    info = model_info(str(path))
    if info.time_cond_proj_dim:
        raise SpecError("--teacher", str(path), "its UNet already has a guidance embedding (time_cond_proj_dim): it "
                                                "is a consistency-distilled student, not a teacher")
    if info.scheduler_class in CONSISTENCY_SCHEDULERS:
        raise SpecError("--teacher", str(path), f"its scheduler is {info.scheduler_class}: it is already a student")
    if info.prediction_type not in ("epsilon", "v_prediction"):
        raise SpecError("--teacher", str(path), f"its scheduler predicts {info.prediction_type!r}: the DDIM teacher "
                                                "step needs epsilon or v_prediction")
    return info


def _load_data(teacher_name: str, data: str | None, size: int, cache_dir: Path, limit: int | None) -> DistillData:
    if data in (None, "emoji"):
        if data is None and teacher_name != "emoji-sd":
            raise SpecError("--data", None, "a folder of images with captions (the embedded emoji data is the "
                                            "default only for the embedded emoji-sd teacher)")
        return emoji_data(cache_dir, size, limit)
    return folder_data(data, size, limit)  # it checks the whole layout before it decodes an image


# --------------------------------------------------------------------------- encoding


@torch.no_grad()
def encode_data(pipe, data: DistillData, device: str, chunk: int = 64) -> dict:
    """Scaled VAE latents, caption embeddings, the empty caption's, and SDXL's pooled embeddings and time ids."""
    vae = pipe.vae.to(device)
    imgs = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    lat = torch.cat([vae.encode(imgs[i:i + chunk].to(device, vae.dtype)).latent_dist.mean.float().cpu()
                     for i in range(0, len(imgs), chunk)])
    lat = (lat - shift) * vae.config.scaling_factor
    xl = type(pipe).__name__ == "StableDiffusionXLPipeline"

    def encode(captions: list[str]):
        out = pipe.encode_prompt(prompt=captions, device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
        return out[0].float().cpu(), (out[2].float().cpu() if xl else None)

    parts = [encode(data.captions[i:i + chunk]) for i in range(0, len(data), chunk)]
    enc = {"latents": lat, "cond": torch.cat([p[0] for p in parts])}
    if xl and getattr(pipe.config, "force_zeros_for_empty_prompt", False):  # SDXL's unconditional input
        enc["uncond"] = torch.zeros_like(enc["cond"][:1])
        enc["uncond_pooled"] = torch.zeros(1, parts[0][1].shape[-1])
    else:
        enc["uncond"], enc["uncond_pooled"] = encode([""])
    if xl:
        enc["pooled"] = torch.cat([p[1] for p in parts])
        size = data.images.shape[1]
        enc["time_ids"] = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=torch.float32,
                                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    return enc


def _batch(enc: dict, idx: torch.Tensor) -> Batch:
    n = len(idx)
    b = Batch(enc["latents"][idx], enc["cond"][idx], enc["uncond"].expand(n, -1, -1))
    if "pooled" in enc:
        tid = enc["time_ids"].expand(n, -1)
        b.added = {"text_embeds": enc["pooled"][idx], "time_ids": tid}
        b.added_uncond = {"text_embeds": enc["uncond_pooled"].expand(n, -1), "time_ids": tid}
    return b


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(teacher: str, data: DistillData, recipe: DistillRecipe, lora: int) -> str:
    h = hashlib.sha256(json.dumps([str(teacher), data.source, len(data), data.captions[:50], asdict(recipe), lora],
                                  sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(out: Path, trainer: LCDTrainer, extra: dict) -> None:
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save({**trainer.state_dict(), **extra}, tmp)
    os.replace(tmp, out / CHECKPOINT)
    (out / "checkpoint.json").write_text(json.dumps({"step": trainer.n, "fingerprint": extra["fingerprint"]}))


def _resume(out: Path, trainer: LCDTrainer, fingerprint: str, restart: bool) -> dict | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    if restart:
        path.unlink()
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise SpecError("--out", str(out), f"it holds {CHECKPOINT} of a different distillation (teacher, data or "
                                           "recipe differ): pass --restart to discard it, or choose another --out")
    trainer.load_state_dict(state)
    return state


# --------------------------------------------------------------------------- the run


def distill(teacher: str, out: Path, recipe: DistillRecipe, *, data: str | None = None, lora_rank: int = 0,
            cache_dir: Path = Path(".cache"), device: str | None = None, restart: bool = False,
            evaluate_after: bool = True) -> dict:
    """Distil ``teacher`` (an embedded name, a folder or a cached repo id) into ``out``; returns the report."""
    from studio_core.measure.emoji_metrics import is_emoji_domain
    from studio_core.measure.environment import device_name, resolve_device
    from studio_core.models import load_pipeline, resolve_model

    t_start = time.time()
    teacher_path = resolve_model(teacher)
    info = check_teacher(teacher_path)
    if lora_rank < 0:
        raise SpecError("--lora", lora_rank, "a LoRA rank of at least 1 (or leave it out for a full student)")
    defaults = {**info.defaults, "domain": "emoji" if is_emoji_domain(info) else info.domain}
    size = int(defaults.get("height") or info.sample_size)  # the teacher's default size, else its native one
    defaults["height"] = defaults["width"] = size
    ds = _load_data(teacher, data, size, cache_dir, recipe.limit)
    if len(ds) < recipe.batch:
        log(f"data: {len(ds)} items, fewer than a batch of {recipe.batch}; items repeat within a batch")
    device = resolve_device(device or "auto")
    if recipe.threads and device == "cpu":
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    out.mkdir(parents=True, exist_ok=True)
    log(f"teacher {teacher} ({teacher_path}); data: {len(ds)} items from {ds.source} at {size} px")

    pipe = load_pipeline(teacher_path, device="cpu")
    t0 = time.time()
    enc = encode_data(pipe, ds, device)
    encode_s = time.time() - t0
    trainer = LCDTrainer(pipe.unet, pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type,
                         lr=recipe.lr, w_min=recipe.w_min, w_max=recipe.w_max, ddim_steps=recipe.ddim_steps,
                         huber_c=recipe.huber_c, ema_decay=recipe.ema_decay, cond_dim=recipe.cond_dim,
                         guidance_lr_mult=recipe.guidance_lr_mult, lora_rank=lora_rank, amp=recipe.amp,
                         seed=recipe.seed, device=device)
    fingerprint = _fingerprint(teacher, ds, recipe, lora_rank)
    state = _resume(out, trainer, fingerprint, restart)
    losses: list[float] = list(state["losses"]) if state else []
    spent = float(state["train_s"]) if state else 0.0
    resumes = list(state["resumes"]) + [trainer.n] if state else []
    if state:
        log(f"resuming from step {trainer.n} of {recipe.steps} ({spent / 60:.1f} min of training already spent)")

    budget_s, stopped_by = recipe.budget_minutes * 60, "steps"
    t0 = time.perf_counter()
    while trainer.n < recipe.steps:
        elapsed = spent + time.perf_counter() - t0
        if elapsed > budget_s:
            stopped_by = f"time budget ({recipe.budget_minutes:g} min)"
            log(f"stopped by the time budget after {trainer.n} steps")
            break
        idx = torch.randint(0, len(ds), (recipe.batch,), generator=trainer.g)
        losses.append(trainer.step(_batch(enc, idx), warmup_cosine(trainer.n, recipe.warmup, recipe.steps,
                                                              elapsed / budget_s)))
        if trainer.n % 50 == 0 or trainer.n == 1 or trainer.n == recipe.steps:
            rate = (trainer.n - (resumes[-1] if resumes else 0)) * recipe.batch / (time.perf_counter() - t0)
            log(f"lcd step {trainer.n}/{recipe.steps} loss {np.mean(losses[-50:]):.5f} ({rate:.0f} img/s, "
                f"{(spent + time.perf_counter() - t0) / 60:.1f} min)")
        if trainer.n % recipe.checkpoint_every == 0 and trainer.n < recipe.steps:
            _save_checkpoint(out, trainer, {"fingerprint": fingerprint, "losses": losses, "resumes": resumes,
                                            "train_s": spent + time.perf_counter() - t0})
    train_s = spent + time.perf_counter() - t0

    from studio_core.distill.save import save_student

    save_student(out, pipe, trainer, recipe, defaults, lora_rank, teacher_path)
    report = {
        "distillation": {
            "method": "lcm-lora" if lora_rank else "lcm", "teacher": str(teacher),
            "teacher_class": type(pipe).__name__, "minutes": round((time.time() - t_start) / 60, 2),
            "device": "cuda" if device.startswith("cuda") else "cpu",
            "device_name": device_name(device, threads=torch.get_num_threads()), "steps": trainer.n,
        },
        "recipe": asdict(recipe), "lora_rank": lora_rank, "stopped_by": stopped_by, "resumed_at_steps": resumes,
        "data": {"source": ds.source, "items": len(ds), "size": size},
        "timings": {"encode_s": round(encode_s, 2), "train_s": round(train_s, 2),
                    "total_s": round(time.time() - t_start, 2)},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "loss_curve": _curve(losses),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name in (CHECKPOINT, "checkpoint.json"):
        (out / name).unlink(missing_ok=True)
    log(f"student saved to {out} after {trainer.n} steps ({train_s / 60:.1f} min of training)")
    if evaluate_after:
        from studio_core.distill.evaluate import evaluate_student

        evaluate_student(out, teacher_path, defaults, ds, recipe, lora_rank, cache_dir)
    from studio_core.distill.card import write_card

    write_card(out)
    return report


def _curve(losses: list[float], points: int = 60) -> list[list[float]]:
    """(step, mean loss over the steps since the previous point) at about ``points`` evenly spaced steps."""
    if not losses:
        return []
    every = max(1, len(losses) // points)
    return [[i + every, round(float(np.mean(losses[i:i + every])), 6)] for i in range(0, len(losses), every)]

