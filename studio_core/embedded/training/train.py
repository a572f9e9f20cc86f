"""Train the embedded default model: a complete Stable-Diffusion-1.5-shaped pipeline on emoji.

One script, named recipes (``RECIPES`` in ``recipe.py``): ``cpu`` finishes in under 45 minutes on 2 cores,
``gpu`` is the longer run for a lent accelerator, ``tiny`` is for tests. Stages, in order:

1. Data: render the emoji set (``studio_core.embedded.training.data``) and take the training split.
2. Tokenizer: byte-level BPE learned from the training captions, in CLIP's file layout.
3. VAE: ``AutoencoderKL`` (L1 + L2 reconstruction, KL weight 1e-6 as in LDM), then the latent
   scaling factor is set to 1 / std of the training latents, as SD does.
4. Text encoder and UNet together: epsilon prediction on SD 1.5's scaled-linear schedule with
   Min-SNR-5 loss weighting (Hang et al. 2023), 10% caption dropout for classifier-free guidance,
   AdamW with warm-up and cosine decay, and an EMA of the weights that is what gets saved.
5. Save as a ``StableDiffusionPipeline`` folder, evaluate prompt fidelity (``evaluate.py``), write the
   model card (``model_card.py``).

Usage: ``python -m studio_core.embedded.training --recipe cpu --out studio_core/embedded/emoji-sd``
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio_core.embedded.training.data import family_of, load_or_build
from studio_core.embedded.training.evaluate import evaluate, write_gallery
from studio_core.embedded.training.model_card import write_model_card
from studio_core.embedded.training.recipe import RECIPES, Recipe, build_components, log

__all__ = [
    "DenoiserTrainer",
    "encode_latents",
    "family_weights",
    "main",
    "save_pipeline",
    "train",
    "train_denoiser_steps",
    "train_vae",
]


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


# --------------------------------------------------------------------------- stage 3: VAE


def train_vae(vae, images: torch.Tensor, recipe: Recipe, device: str) -> dict:
    """Reconstruction training on images in [-1, 1]; returns the loss history summary."""
    g = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(100, recipe.vae_steps), recipe.vae_steps))
    vae.train().to(device)
    losses = []
    for step in range(recipe.vae_steps):
        batch = images[torch.randint(0, len(images), (recipe.vae_batch,), generator=g)].to(device)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        loss = (recon - batch).abs().mean() + (recon - batch).pow(2).mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 200 == 0 or step == recipe.vae_steps - 1:
            log(f"vae step {step}/{recipe.vae_steps} loss {np.mean(losses[-50:]):.4f}")
    vae.eval()
    return {"vae_final_loss": float(np.mean(losses[-50:]))}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device: str, batch: int = 256) -> torch.Tensor:
    """Posterior means of images in [-1, 1], unscaled."""
    out = [vae.encode(images[i:i + batch].to(device)).latent_dist.mean.cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


# --------------------------------------------------------------------------- stage 4: denoiser


def _min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction: min(SNR, gamma) / SNR (Hang et al. 2023)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


class DenoiserTrainer:
    """Joint text-encoder + UNet training state; ``step()`` runs one optimisation step."""

    def __init__(self, text_encoder, unet, scheduler, latents, token_ids, empty_ids, recipe: Recipe, device: str,
                 weights: torch.Tensor | None = None):
        self.te, self.unet, self.scheduler, self.recipe, self.device = text_encoder, unet, scheduler, recipe, device
        self.weights = weights  # per-item sampling weights; None draws uniformly
        self.latents, self.token_ids, self.empty_ids = latents, token_ids, empty_ids
        self.te.train().to(device)
        self.unet.train().to(device)
        self.opt = torch.optim.AdamW([
            {"params": self.unet.parameters(), "lr": recipe.unet_lr},
            {"params": self.te.parameters(), "lr": recipe.text_lr},
        ], weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(recipe.warmup, recipe.steps))
        self.ema_te = copy.deepcopy(self.te).eval().requires_grad_(False)
        self.ema_unet = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.g = torch.Generator().manual_seed(recipe.seed + 1)
        self.n = 0

    def loss(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Min-SNR-weighted epsilon loss on training items ``idx`` (noise, t and dropout from ``generator``)."""
        r, d, g = self.recipe, self.device, generator or self.g
        x0 = self.latents[idx].to(d)
        ids = self.token_ids[idx].clone()
        drop = torch.rand(len(idx), generator=g) < r.cfg_dropout
        ids[drop] = self.empty_ids
        noise = torch.randn(x0.shape, generator=g).to(d)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(idx),), generator=g).to(d)
        xt = self.scheduler.add_noise(x0, noise, t)
        cond = self.te(ids.to(d))[0]
        pred = self.unet(xt, t, cond).sample
        per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * _min_snr_weights(self.scheduler, t, r.min_snr_gamma)).mean()

    def step(self) -> float:
        if self.weights is None:
            idx = torch.randint(0, len(self.latents), (self.recipe.batch,), generator=self.g)
        else:
            idx = torch.multinomial(self.weights, self.recipe.batch, replacement=True, generator=self.g)
        loss = self.loss(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.te.parameters()), 1.0)
        self.opt.step(); self.sched.step(); self.opt.zero_grad(set_to_none=True)
        self.n += 1
        decay = min(self.recipe.ema_decay, (1 + self.n) / (10 + self.n))
        with torch.no_grad():
            for ema, live in ((self.ema_te, self.te), (self.ema_unet, self.unet)):
                torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1 - decay)
        return loss.item()


def family_weights(captions: list[str], power: float) -> torch.Tensor | None:
    """Sampling weight family_size ** -power for each caption (None when power is 0)."""
    if not power:
        return None
    fams = [family_of(c) for c in captions]
    size = Counter(fams)
    return torch.tensor([size[f] ** -power for f in fams], dtype=torch.float64)


def train_denoiser_steps(trainer: DenoiserTrainer, steps: int, log_every: int = 250) -> list[float]:
    losses = []
    t0 = time.time()
    for i in range(steps):
        losses.append(trainer.step())
        if i % log_every == 0 or i == steps - 1:
            rate = (i + 1) * trainer.recipe.batch / (time.time() - t0)
            log(f"denoiser step {trainer.n}/{trainer.recipe.steps} loss {np.mean(losses[-100:]):.4f} ({rate:.0f} img/s)")
    return losses


# --------------------------------------------------------------------------- stage 5: save (evaluate.py scores it)


def _tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


# --------------------------------------------------------------------------- main


def train(recipe: Recipe, out: Path, cache_dir: Path, device: str | None = None, init: Path | None = None) -> dict:
    """Run every stage of ``recipe`` and write the pipeline folder ``out``; returns the metrics.

    ``init``: a finished pipeline folder whose tokenizer, VAE, text encoder and UNet are continued instead of
    built and trained from scratch (the VAE is not trained again)."""
    from studio_core.embedded.training.tokenizer import build_caption_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    t_start = time.time()
    timings = {}

    # 1. Data
    ds = load_or_build(cache_dir, recipe.image_size)
    train_idx = ds.train_indices
    captions = [ds.captions[i] for i in train_idx]
    images = torch.from_numpy(ds.images[train_idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    log(f"data: {len(ds)} emoji, {len(train_idx)} for training, {len(ds.held_out_indices)} held out, dropped {ds.dropped}")

    # 2. Tokenizer
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    if init is not None:
        from diffusers import DiffusionPipeline

        prior = DiffusionPipeline.from_pretrained(init, local_files_only=True)
        tokenizer, vae, text_encoder, unet, scheduler = (prior.tokenizer, prior.vae, prior.text_encoder,
                                                          prior.unet, prior.scheduler)
        previous = json.loads((Path(init) / "training_report.json").read_text())
        log(f"continuing {init} (recipe {previous['recipe']['name']}, {previous['timings']['total_s'] / 60:.1f} min)")
    else:
        tokenizer = build_caption_tokenizer(out / "tokenizer", captions, max_length=recipe.max_tokens)
        vae, text_encoder, unet, scheduler = build_components(recipe, len(tokenizer), tokenizer.bos_token_id,
                                                              tokenizer.eos_token_id)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))}
    log(f"parameters: {params}")

    # 3. VAE
    t0 = time.time()
    if previous is None:
        vae_stats = train_vae(vae, images, recipe, device)
        latents = encode_latents(vae, images, device)
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    else:
        vae_stats = {"vae_final_loss": previous["vae_final_loss"]}
        latents = encode_latents(vae, images, device)
    latents = latents * vae.config.scaling_factor
    timings["vae_s"] = time.time() - t0
    vae.to("cpu")

    # 4. Text encoder + UNet
    t0 = time.time()
    token_ids = _tokenize(tokenizer, captions)
    empty_ids = _tokenize(tokenizer, [""])[0]
    weights = family_weights(captions, recipe.family_power)
    trainer = DenoiserTrainer(text_encoder, unet, scheduler, latents, token_ids, empty_ids, recipe, device, weights)
    losses = train_denoiser_steps(trainer, recipe.steps)
    timings["denoiser_s"] = time.time() - t0

    # 5. Save (EMA weights), evaluate, card
    t0 = time.time()
    pipe = save_pipeline(out, vae, trainer.ema_te.cpu(), tokenizer, trainer.ema_unet.cpu(), scheduler)
    if init is not None:  # the tokenizer files as the first stage wrote them (save_pretrained drops vocab/merges)
        shutil.rmtree(out / "tokenizer")
        shutil.copytree(Path(init) / "tokenizer", out / "tokenizer")
        for cfg in (out / "unet" / "config.json", out / "vae" / "config.json"):  # no path of this machine
            data = json.loads(cfg.read_text())
            if data.pop("_name_or_path", None) is not None:
                cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    pipe.set_progress_bar_config(disable=True)
    metrics = evaluate(pipe, ds, recipe)
    write_gallery(pipe, out / "gallery.png", metrics["guidance"], recipe.eval_steps)
    timings["eval_s"] = time.time() - t0
    timings["total_s"] = time.time() - t_start
    report = {
        "recipe": asdict(recipe), "device": device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "parameters": params, "timings": timings,
        "final_loss": float(np.mean(losses[-200:])), **vae_stats,
        "data": {"emoji": len(ds), "train": int(len(train_idx)), "held_out": int(len(ds.held_out_indices)),
                 "dropped": ds.dropped},
        "fidelity": metrics,
        "continued_from": None if previous is None else {
            "recipe": previous["recipe"], "timings": previous["timings"], "final_loss": previous["final_loss"],
            "fidelity": {k: previous["fidelity"][k] for k in ("guidance", "train", "held_out")},
            "continued_from": previous.get("continued_from")},
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    defaults = {"guidance_scale": metrics["guidance"], "num_inference_steps": recipe.eval_steps,
                "height": recipe.image_size, "width": recipe.image_size}
    (out / "studio_defaults.json").write_text(json.dumps(defaults, indent=2))
    write_model_card(out, report)
    log(f"done in {timings['total_s'] / 60:.1f} min")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the rendered data set is kept")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=None, help="override the recipe's denoiser steps")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--init", type=Path, default=None,
                   help="continue the models of this finished pipeline folder (e.g. with --recipe cpu-continue)")
    args = p.parse_args(argv)
    recipe = RECIPES[args.recipe]
    if args.steps is not None:
        recipe = replace(recipe, steps=args.steps)
    if args.vae_steps is not None:
        recipe = replace(recipe, vae_steps=args.vae_steps)
    if args.init is not None and args.init.resolve() == args.out.resolve():
        p.error("--init and --out must be different folders")
    train(recipe, args.out, args.cache_dir, args.device, args.init)


if __name__ == "__main__":
    main()
