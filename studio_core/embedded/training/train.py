"""Train the embedded default model: a complete Stable-Diffusion-1.5-shaped pipeline on emoji.

One script, named recipes (``RECIPES``): ``cpu`` finishes in under 45 minutes on 2 cores, ``gpu``
is the longer run for a lent accelerator, ``tiny`` is for tests. Stages, in order:

1. Data: render the emoji set (``studio_core.emoji_data``) and take the training split.
2. Tokenizer: byte-level BPE learned from the training captions, in CLIP's file layout.
3. VAE: ``AutoencoderKL`` (L1 + L2 reconstruction, KL weight 1e-6 as in LDM), then the latent
   scaling factor is set to 1 / std of the training latents, as SD does.
4. Text encoder and UNet together: epsilon prediction on SD 1.5's scaled-linear schedule with
   Min-SNR-5 loss weighting (Hang et al. 2023), 10% caption dropout for classifier-free guidance,
   AdamW with warm-up and cosine decay, and an EMA of the weights that is what gets saved.
5. Save as a ``StableDiffusionPipeline`` folder, evaluate prompt fidelity, write the model card.

Usage: ``python -m studio_core.training --recipe cpu --out studio_core/embedded/emoji-sd``
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio_core.prompts import GALLERY_PROMPTS

__all__ = ["RECIPES", "Recipe", "build_components", "train", "train_denoiser_steps"]


@dataclass(frozen=True)
class Recipe:
    """Every setting of one training run."""

    name: str
    image_size: int = 32
    vae_channels: tuple[int, ...] = (32, 64, 64)  # len - 1 downsamplings: 32 px -> 8x8 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 3
    text_heads: int = 4
    max_tokens: int = 24
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_lr: float = 2e-3
    steps: int = 6000
    batch: int = 48
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    warmup: int = 300
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # items are drawn with probability ~ family_size ** -family_power, where a family is one emoji
    # and its skin-tone variants: 0 is uniform; >0 gives the 1,579 one-of-a-kind emoji more epochs
    # than the people families whose tones share almost everything
    family_power: float = 0.0
    seed: int = 0
    threads: int = 0  # 0: torch's default
    eval_captions: int = 200
    eval_steps: int = 50
    guidance_grid: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    notes: str = ""


RECIPES: dict[str, Recipe] = {
    "cpu": Recipe(name="cpu", vae_steps=800, steps=3400, threads=2, guidance_grid=(1.5, 3.0, 5.0, 7.5),
                  notes="2 CPU cores, under 45 minutes"),
    # a second CPU stage: continues the text encoder + UNet of a finished `cpu` folder (``--init``) with a
    # fresh warm-up and cosine; the VAE and tokenizer are kept as they are
    "cpu-continue": Recipe(name="cpu-continue", vae_steps=0, steps=3600, threads=2, warmup=100,
                           unet_lr=6e-4, text_lr=3e-4, guidance_grid=(1.5, 3.0, 5.0, 7.5),
                           notes="2 CPU cores, under 45 minutes, continuing a `cpu` run"),
    "gpu": Recipe(
        name="gpu", vae_steps=4000, vae_batch=128, steps=30000, batch=256, unet_lr=1e-3, family_power=0.5,
        unet_channels=(96, 192, 192), unet_layers_per_block=2,
        notes="one H100/H200, about 15 minutes",
    ),
    "tiny": Recipe(
        name="tiny", vae_channels=(16, 16), unet_channels=(32, 32), unet_heads=2, text_hidden=32,
        text_layers=1, text_heads=2, vae_steps=2, vae_batch=4, steps=4, batch=4, warmup=1,
        eval_captions=2, eval_steps=2, guidance_grid=(2.0,), notes="for tests",
    ),
}


# --------------------------------------------------------------------------- components


def build_components(recipe: Recipe, vocab_size: int, bos_id: int, eos_id: int):
    """(vae, text_encoder, unet, scheduler) with fresh weights, shaped as in SD 1.5."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    n = len(recipe.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=recipe.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=recipe.vae_channels, layers_per_block=1,
        norm_num_groups=min(16, min(recipe.vae_channels)), sample_size=recipe.image_size,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=recipe.text_hidden, intermediate_size=4 * recipe.text_hidden,
        num_hidden_layers=recipe.text_layers, num_attention_heads=recipe.text_heads,
        max_position_embeddings=recipe.max_tokens, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, hidden_act="quick_gelu",
    ))
    levels = len(recipe.unet_channels)
    latent_size = recipe.image_size // 2 ** (n - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=recipe.latent_channels, out_channels=recipe.latent_channels,
        block_out_channels=recipe.unet_channels, layers_per_block=recipe.unet_layers_per_block,
        down_block_types=["CrossAttnDownBlock2D"] * (levels - 1) + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (levels - 1),
        cross_attention_dim=recipe.text_hidden, attention_head_dim=recipe.unet_heads,
        norm_num_groups=min(32, min(recipe.unet_channels)),
    )
    # SD 1.5's training schedule; DDIM with SD's settings is the shipped default sampler
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    return vae, text_encoder, unet, scheduler


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
            _log(f"vae step {step}/{recipe.vae_steps} loss {np.mean(losses[-50:]):.4f}")
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


def family_of(caption: str) -> str:
    """The caption with its skin-tone modifiers removed: "man scientist: dark skin tone" -> "man scientist"."""
    return _TONE.sub("", caption).strip(" :,")


def caption_kind(caption: str) -> str:
    """Coarse kind used to break fidelity down: people with skin tones, flags, everything else."""
    if _TONE.search(caption):
        return "skin-tone variant"
    return "flag" if caption.startswith("flag") else "other"


_TONE = re.compile(r"[:,]? ?(light|medium-light|medium|medium-dark|dark) skin tone")


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
            _log(f"denoiser step {trainer.n}/{trainer.recipe.steps} loss {np.mean(losses[-100:]):.4f} ({rate:.0f} img/s)")
    return losses


# --------------------------------------------------------------------------- stage 5: save + evaluate


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


def fidelity_captions(ds, n: int = 200) -> tuple[list[str], list[str]]:
    """The fixed evaluation sample: ``n`` training captions (seeded draw) and up to ``n`` held-out ones."""
    rng = np.random.default_rng(1234)
    train_idx = np.sort(rng.choice(ds.train_indices, size=min(n, len(ds.train_indices)), replace=False))
    return [ds.captions[i] for i in train_idx], [ds.captions[i] for i in ds.held_out_indices][: max(n, 2)]


def score_captions(pipe, index, captions: list[str], steps: int, guidance: float):
    """Prompt fidelity of one image per caption, seeded with the caption's position in the list."""
    from studio_core.measure.generation import generate

    return index.score(generate(pipe, list(zip(captions, range(len(captions)))), batch=64, num_inference_steps=steps,
                                 guidance_scale=guidance), captions)


def evaluate(pipe, ds, recipe: Recipe) -> dict:
    """Prompt fidelity on a fixed sample of training captions and on every held-out caption."""
    from studio_core.measure.fidelity import PromptFidelityIndex

    index = PromptFidelityIndex(ds.images, ds.captions)
    train_caps, held_caps = fidelity_captions(ds, recipe.eval_captions)
    # pick the guidance on half the sample at fewer steps, then measure it at the full step count
    probe_caps = train_caps[: max(1, len(train_caps) // 2)]
    sweep = {}
    for g in recipe.guidance_grid:
        r = score_captions(pipe, index, probe_caps, max(2, recipe.eval_steps // 2), g)
        sweep[str(g)] = {"top1": r.top1, "top5": r.top5, "n": r.n, "steps": max(2, recipe.eval_steps // 2)}
        _log(f"guidance {g}: top1 {r.top1:.3f} top5 {r.top5:.3f} ({r.n} captions)")
    best = max(recipe.guidance_grid, key=lambda g: (sweep[str(g)]["top5"], sweep[str(g)]["top1"]))
    tr = score_captions(pipe, index, train_caps, recipe.eval_steps, best)
    held = score_captions(pipe, index, held_caps, recipe.eval_steps, best)
    _log(f"train captions top1 {tr.top1:.3f} top5 {tr.top5:.3f}; held-out top1 {held.top1:.3f} top5 {held.top5:.3f}")
    by_kind = {}
    for kind in ("skin-tone variant", "flag", "other"):
        ranks = [r for c, r in zip(train_caps, tr.ranks) if caption_kind(c) == kind]
        if ranks:
            by_kind[kind] = {"top1": sum(r < 1 for r in ranks) / len(ranks),
                             "top5": sum(r < 5 for r in ranks) / len(ranks), "n": len(ranks)}
    _log(f"training captions by kind: {by_kind}")
    return {
        "guidance": best, "steps": recipe.eval_steps, "sampler": type(pipe.scheduler).__name__,
        "train": {"top1": tr.top1, "top5": tr.top5, "n": tr.n, "by_kind": by_kind},
        "held_out": {"top1": held.top1, "top5": held.top5, "n": held.n},
        "guidance_sweep": sweep,
    }




def write_gallery(pipe, path: Path, guidance: float, steps: int, scale: int = 4) -> list[str]:
    """A 4x4 grid of the gallery prompts (seed 0 each), upscaled for viewing; returns the prompts."""
    from PIL import Image

    from studio_core.measure.generation import generate

    imgs = generate(pipe, [(p, 0) for p in GALLERY_PROMPTS], batch=64, num_inference_steps=steps,
                    guidance_scale=guidance)
    n, s = 4, imgs.shape[1]
    grid = imgs.reshape(n, n, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(n * s, n * s, 3)
    Image.fromarray(grid).resize((n * s * scale, n * s * scale), Image.Resampling.NEAREST).save(path)
    return GALLERY_PROMPTS


def write_model_card(out: Path, report: dict) -> None:
    """README.md of the model folder: data, recipe, compute, metrics, gallery."""
    r, f, t, d = report["recipe"], report["fidelity"], report["timings"], report["data"]
    params = report["parameters"]
    sweep = "\n".join(f"| {g} | {v['top1']:.1%} | {v['top5']:.1%} | {v['n']} | {v['steps']} |"
                       for g, v in f["guidance_sweep"].items())
    prompts = ", ".join(f"`{p}`" for p in GALLERY_PROMPTS)
    kinds = _kind_rows(f["train"].get("by_kind", {})) or "| (not measured) | | | |"
    chain = _chain(report)
    rv = chain[0]["recipe"] if chain else r  # the stage that trained the VAE
    vae_from = f" (trained by the `{rv['name']}` stage, kept since)" if chain else ""
    reproduce = f"\nReproduce: `python -m studio_core.training --recipe {r['name']} --out studio_core/embedded/emoji-sd`.\n"
    text = f"""---
license: other
library_name: diffusers
pipeline_tag: text-to-image
---
# emoji-sd: the studio's embedded default model

A complete `StableDiffusionPipeline` (AutoencoderKL + CLIPTextModel/CLIPTokenizer + UNet2DConditionModel
with cross-attention + DDIM scheduler) trained from scratch by this project on {d['train']} Noto Color Emoji
glyphs at {r['image_size']}x{r['image_size']} pixels, so that every efficiency knob of the studio meets
the same components as on SD 1.5, small enough to run on a 2-core CPU.

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("studio_core/embedded/emoji-sd", local_files_only=True)
image = pipe("grinning face", guidance_scale={f['guidance']}, num_inference_steps=50).images[0]
```

Documented defaults (also in `studio_defaults.json`): guidance scale **{f['guidance']}**, 50 steps,
{r['image_size']}x{r['image_size']}. Prompts are CLDR emoji names (`grinning face`, `flag: France`,
`man scientist: dark skin tone`); words outside the captions' vocabulary are split into bytes and mean
little to the model.

![gallery](gallery.png)

Gallery (seed 0, {r['eval_steps']} DDIM steps, guidance {f['guidance']}), row by row: {prompts}.

## Components
| component | parameters | shape |
|---|---|---|
| VAE (`AutoencoderKL`) | {params['vae']:,} | channels {list(r['vae_channels'])}, {r['latent_channels']} latent channels, {2 ** (len(r['vae_channels']) - 1)}x downsampling |
| text encoder (`CLIPTextModel`) | {params['text_encoder']:,} | {r['text_layers']} layers, width {r['text_hidden']}, {r['text_heads']} heads, {r['max_tokens']} tokens |
| UNet (`UNet2DConditionModel`) | {params['unet']:,} | channels {list(r['unet_channels'])}, {r['unet_layers_per_block']} layer(s) per block, cross-attention at all but the lowest level |
| tokenizer (`CLIPTokenizer`) | - | byte-level BPE learned from the training captions (`vocab.json`, `merges.txt`) |

## Data
Every fully-qualified emoji of the `emoji` package ({d['emoji'] + sum(d['dropped'].values())}), rendered with
Debian's `fonts-noto-color-emoji` 2.042 (SIL Open Font License 1.1) on white and resized with Lanczos;
dropped: {d['dropped']} (glyphs the font lacks, sequences it has no ligature for, identical renders).
Captions: CLDR short names from Unicode's `emoji-test.txt` (Debian `unicode-data`), else the `emoji`
package's name. {d['emoji']} images remain: {d['train']} for training and {d['held_out']} held out
(single-skin-tone variants picked by a stable hash; their base emoji and other tones are in training).
Builder: `studio_core/emoji_data.py`.

## Recipe `{r['name']}` ({r['notes']})
1. Tokenizer: BPE on the training captions.
2. VAE{vae_from}: {rv['vae_steps']} steps, batch {rv['vae_batch']}, AdamW lr {rv['vae_lr']}, L1 + L2 + 1e-6 KL;
   latent scaling factor 1/std of the training latents.
3. Text encoder + UNet together: {r['steps']} steps, batch {r['batch']}, AdamW (UNet lr {r['unet_lr']}, text lr
   {r['text_lr']}, weight decay 0.01, {r['warmup']} warm-up steps, cosine to 10%), epsilon prediction on SD 1.5's
   scaled-linear schedule, Min-SNR-{r['min_snr_gamma']} weighting, {r['cfg_dropout']:.0%} caption dropout for
   classifier-free guidance, EMA {r['ema_decay']} (the EMA weights are shipped).{_family_text(r)}
{_continued_text(report) or reproduce}
## Compute
These weights were produced by the **{r['name']}** recipe on **{report['device']}** ({report['threads']} threads,
torch {report['torch']}): VAE {'kept (latents encoded) ' if chain else ''}{t['vae_s'] / 60:.1f} min, text encoder + UNet {t['denoiser_s'] / 60:.1f} min,
evaluation and saving {t['eval_s'] / 60:.1f} min; {t['total_s'] / 60:.1f} min in all{_chain_total(report)}. Final training loss
{report['final_loss']:.4f} (Min-SNR-weighted), VAE loss {report['vae_final_loss']:.4f}.

## Prompt fidelity
For a generated image, is its nearest training image the prompt's own emoji? Feature space: the image
area-averaged to a 16x16 RGB thumbnail in [0, 1], Euclidean distance, exact search over all
{d['emoji']} images (`studio_core/metrics/prompt_fidelity.py`). Validated on the data set itself:
every training image retrieves itself, copies with Gaussian noise (sigma 0.05) and with 1-pixel shifts
retrieve themselves at least 90% of the time (`tests/test_prompt_fidelity.py`).

| captions | n | top-1 | top-5 |
|---|---|---|---|
| training (fixed random sample) | {f['train']['n']} | {f['train']['top1']:.1%} | {f['train']['top5']:.1%} |
| held out (never trained on) | {f['held_out']['n']} | {f['held_out']['top1']:.1%} | {f['held_out']['top5']:.1%} |

Setup: {f['steps']} steps of {f['sampler']}, guidance {f['guidance']}, one image per caption, seed = its index.

The training sample by kind:

| kind | n | top-1 | top-5 |
|---|---|---|---|
{kinds}

The guidance was chosen on half of the training sample at {r['eval_steps'] // 2} steps:

| guidance | top-1 | top-5 | n | steps |
|---|---|---|---|---|
{sweep}

## Limitations
Tiny and low-resolution by design: it knows emoji names, not language. Held-out figures say how far
it composes a known base with a known skin tone it never saw together.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def _family_text(r: dict) -> str:
    if not r.get("family_power"):
        return ""
    return (f" Items are drawn with\n   probability proportional to (family size)^-{r['family_power']}, a family being an "
            "emoji and its\n   skin-tone variants, so one-of-a-kind emoji get more epochs than the near-identical tones.")


def _chain(report: dict) -> list[dict]:
    """The reports of the runs this one continued, earliest first."""
    out, prev = [], report.get("continued_from")
    while prev:
        out.insert(0, prev)
        prev = prev.get("continued_from")
    return out


def _chain_total(report: dict) -> str:
    chain = _chain(report)
    if not chain:
        return ""
    total = report["timings"]["total_s"] + sum(c["timings"]["total_s"] for c in chain)
    return f" (with the stage{'s' if len(chain) > 1 else ''} before: {total / 60:.1f} min of training in all)"


def _continued_text(report: dict) -> str:
    """For weights continued from an earlier folder (``--init``): each earlier stage with its own figures."""
    chain = _chain(report)
    if not chain:
        return ""
    rows = "\n".join(
        f"| `{c['recipe']['name']}` | {c['recipe']['steps']} | {c['recipe']['batch']} | {c['recipe']['unet_lr']} | "
        f"{c['timings']['total_s'] / 60:.1f} min | {c['final_loss']:.4f} | {c['fidelity']['train']['top1']:.1%} / "
        f"{c['fidelity']['train']['top5']:.1%} (guidance {c['fidelity']['guidance']}) |" for c in chain)
    r = report["recipe"]
    f = report["fidelity"]
    rows += (f"\n| `{r['name']}` (these weights) | {r['steps']} | {r['batch']} | {r['unet_lr']} | "
             f"{report['timings']['total_s'] / 60:.1f} min | {report['final_loss']:.4f} | {f['train']['top1']:.1%} / "
             f"{f['train']['top5']:.1%} (guidance {f['guidance']}) |")
    return f"""
The text encoder and UNet were **continued** from an earlier run's shipped (EMA) weights with a fresh
optimiser, warm-up and cosine (the VAE and tokenizer kept as they were). Stages, in order:

| recipe | denoiser steps | batch | UNet lr | time | final loss | training captions top-1 / top-5 |
|---|---|---|---|---|---|---|
{rows}

Reproduce: `python -m studio_core.training --recipe cpu --out A`, then
`python -m studio_core.training --recipe cpu-continue --init A --out studio_core/embedded/emoji-sd`.
"""


def _kind_rows(by_kind: dict) -> str:
    return "\n".join(f"| {k} | {v['n']} | {v['top1']:.1%} | {v['top5']:.1%} |" for k, v in by_kind.items())


# --------------------------------------------------------------------------- main


def train(recipe: Recipe, out: Path, cache_dir: Path, device: str | None = None, init: Path | None = None) -> dict:
    """Run every stage of ``recipe`` and write the pipeline folder ``out``; returns the metrics.

    ``init``: a finished pipeline folder whose tokenizer, VAE, text encoder and UNet are continued instead of
    built and trained from scratch (the VAE is not trained again)."""
    from studio_core.embedded.training.data import load_or_build
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
    _log(f"data: {len(ds)} emoji, {len(train_idx)} for training, {len(ds.held_out_indices)} held out, dropped {ds.dropped}")

    # 2. Tokenizer
    out.mkdir(parents=True, exist_ok=True)
    previous = None
    if init is not None:
        from diffusers import DiffusionPipeline

        prior = DiffusionPipeline.from_pretrained(init, local_files_only=True)
        tokenizer, vae, text_encoder, unet, scheduler = (prior.tokenizer, prior.vae, prior.text_encoder,
                                                          prior.unet, prior.scheduler)
        previous = json.loads((Path(init) / "training_report.json").read_text())
        _log(f"continuing {init} (recipe {previous['recipe']['name']}, {previous['timings']['total_s'] / 60:.1f} min)")
    else:
        tokenizer = build_caption_tokenizer(out / "tokenizer", captions, max_length=recipe.max_tokens)
        vae, text_encoder, unet, scheduler = build_components(recipe, len(tokenizer), tokenizer.bos_token_id,
                                                              tokenizer.eos_token_id)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))}
    _log(f"parameters: {params}")

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
    _log(f"done in {timings['total_s'] / 60:.1f} min")
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
