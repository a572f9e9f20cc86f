"""Train the studio's emoji feature network (``studio_core.measure.feature_net``): one class per emoji.

Stages, in order:

1. Data: every rendered emoji at 32 px (``data.load_or_build``), training split and held-out captions alike:
   the network is a yardstick with a class for every emoji the models can be asked for.
2. Decoder artefacts: each emoji encoded and decoded by the embedded model's VAE ``vae_variants`` times
   (a posterior sample, then latent noise of growing scale), so the network sees what a decoder draws.
3. Training: cross-entropy with label smoothing on augmented batches (half clean renders, half VAE
   round-trips; random scale and shift on white, blur, brightness / contrast / saturation jitter without
   hue change, since skin tones and flags are told apart by colour, and pixel noise), AdamW with warm-up
   and cosine decay over the steps or ``budget_minutes``, whichever runs out first (so a slower machine
   still finishes its schedule; the report says which one stopped it).
4. Evaluation: top-1 / top-5 on the clean renders, on freshly augmented copies and on fresh VAE round-trips.
5. Save ``config.json`` + ``model.safetensors`` (fp16) + ``training_report.json``; the card is generated
   from that report and ``evaluation.json`` (``feature_card.py``).

    python -m studio_core.embedded.training features --recipe cpu --out studio_core/embedded/emoji-features
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio_core.embedded.training.recipe import log
from studio_core.measure.feature_net import EmojiFeatureNet, FeatureNetConfig

__all__ = ["FEATURE_RECIPES", "FeatureRecipe", "augment", "main", "topk_accuracy", "train_feature_net",
           "vae_round_trips"]

EMBEDDED_VAE = Path(__file__).resolve().parents[1] / "emoji-sd"


@dataclass(frozen=True)
class FeatureRecipe:
    """Every setting of one training run of the feature network."""

    name: str
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 192)
    vae_variants: int = 4
    vae_latent_noise: float = 0.15  # the largest latent noise (in latent std units) of the round-trips
    steps: int = 3400
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup: int = 200
    label_smoothing: float = 0.1
    budget_minutes: float = 25.0  # training stops at `steps` or this budget, whichever comes first
    limit: int | None = None  # first N emoji only (tests)
    seed: int = 0
    threads: int = 2
    notes: str = ""


FEATURE_RECIPES: dict[str, FeatureRecipe] = {
    "cpu": FeatureRecipe(name="cpu", notes="2 CPU cores, under 30 minutes including data and evaluation"),
    "gpu": FeatureRecipe(name="gpu", steps=20000, batch=512, budget_minutes=20.0, threads=0,
                         notes="one H100/H200"),
    "tiny": FeatureRecipe(name="tiny", channels=(8, 8), vae_variants=1, steps=3, batch=8, warmup=1,
                          budget_minutes=2.0, limit=24, notes="for tests"),
}


# --------------------------------------------------------------------------- stage 2: decoder artefacts


@torch.no_grad()
def vae_round_trips(images: np.ndarray, vae_dir: Path, variants: int, max_noise: float, seed: int) -> np.ndarray:
    """(N, variants, H, W, 3) uint8: each image through the VAE, variant v with latent noise
    ``max_noise * v / (variants - 1)`` in units of the latents' std (v = 0: the posterior sample alone)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, subfolder="vae", local_files_only=True).eval()
    g = torch.Generator().manual_seed(seed)
    out = np.empty((len(images), variants, *images.shape[1:]), dtype=np.uint8)
    for i in range(0, len(images), 128):
        x = torch.from_numpy(images[i:i + 128]).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist = vae.encode(x).latent_dist
        for v in range(variants):
            z = dist.sample(generator=g)
            scale = max_noise * v / max(1, variants - 1)
            z = z + scale * z.std() * torch.randn(z.shape, generator=g)
            y = vae.decode(z).sample.clamp(-1, 1)
            out[i:i + 128, v] = ((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return out


# --------------------------------------------------------------------------- stage 3: augmentation


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random scale (0.88-1.12) and shift (±3 px at 32) on white, blur on a third, brightness / contrast /
    saturation jitter (no hue change), and pixel noise on a third; x and the result in [0, 1], (N, 3, H, W)."""
    n = len(x)
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)  # noqa: E731
    s = u(0.88, 1.12)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = u(-3 / 16, 3 / 16, n, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # white outside
    blur = torch.rand(n, generator=g) < 1 / 3
    if blur.any():
        x[blur] = _blur(x[blur], float(u(0.4, 1.2, 1)))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.85, 1.15).view(-1, 1, 1, 1) + mean + u(-0.08, 0.08).view(-1, 1, 1, 1)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * u(0.85, 1.15).view(-1, 1, 1, 1)
    noisy = (torch.rand(n, generator=g) < 1 / 3).float().view(-1, 1, 1, 1)
    x = x + noisy * u(0.0, 0.05).view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def _batch(clean: torch.Tensor, vae: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Half clean renders, half VAE round-trips (a random variant each), augmented; inputs in [-1, 1]."""
    labels = torch.randint(0, len(clean), (size,), generator=g)
    from_vae = torch.rand(size, generator=g) < 0.5
    x = clean[labels].clone()
    if from_vae.any():
        v = torch.randint(0, vae.shape[1], (int(from_vae.sum()),), generator=g)
        x[from_vae] = vae[labels[from_vae], v]
    return augment(x, g) * 2 - 1, labels


# --------------------------------------------------------------------------- stage 4: evaluation


@torch.no_grad()
def topk_accuracy(net: EmojiFeatureNet, images: np.ndarray | torch.Tensor, labels: torch.Tensor,
                  ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy of the class head on images (uint8 NHWC or float NCHW in [0, 1])."""
    logits = net.logits(images)
    top = logits.topk(max(ks), dim=1).indices
    hit = top == labels.view(-1, 1)
    return {f"top{k}": round(float(hit[:, :k].any(1).float().mean()), 4) for k in ks}


def _evaluate(net: EmojiFeatureNet, clean: torch.Tensor, images: np.ndarray, recipe: FeatureRecipe,
              vae_dir: Path) -> dict:
    labels = torch.arange(len(clean))
    g = torch.Generator().manual_seed(recipe.seed + 1000)
    fresh_vae = vae_round_trips(images, vae_dir, 1, 0.0, recipe.seed + 1000)[:, 0]
    return {
        "clean renders": topk_accuracy(net, clean, labels),
        "augmented (fresh draws)": topk_accuracy(net, augment(clean.clone(), g), labels),
        "VAE round-trip (fresh draws)": topk_accuracy(net, fresh_vae, labels),
    }


# --------------------------------------------------------------------------- the run


def train_feature_net(recipe: FeatureRecipe, out: Path, cache_dir: Path, vae_dir: Path = EMBEDDED_VAE) -> dict:
    """Stages 1-5; returns the training report (also written to ``out/training_report.json``)."""

    threads = torch.get_num_threads()
    try:
        return _train(recipe, out, cache_dir, vae_dir)
    finally:
        torch.set_num_threads(threads)  # the recipe's thread count is for this run only


def _train(recipe: FeatureRecipe, out: Path, cache_dir: Path, vae_dir: Path) -> dict:
    from studio_core.embedded.training.data import load_or_build

    t0 = time.perf_counter()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    # 1. data
    ds = load_or_build(cache_dir, recipe.image_size)
    images = ds.images[: recipe.limit] if recipe.limit else ds.images
    captions = ds.captions[: len(images)]
    clean = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    log(f"features: {len(images)} emoji classes at {recipe.image_size} px")
    # 2. decoder artefacts
    t_vae = time.perf_counter()
    vae_imgs = vae_round_trips(images, vae_dir, recipe.vae_variants, recipe.vae_latent_noise, recipe.seed)
    vae = torch.from_numpy(vae_imgs).permute(0, 1, 4, 2, 3).float() / 255.0
    vae_s = time.perf_counter() - t_vae
    log(f"features: {recipe.vae_variants} VAE round-trips per emoji in {vae_s:.0f} s")
    # 3. training
    net = EmojiFeatureNet(FeatureNetConfig(n_classes=len(images), channels=recipe.channels,
                                           image_size=recipe.image_size, captions=list(captions)))
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = recipe.steps

    def lr_at(step: int, elapsed: float) -> float:
        """Warm-up, then cosine over the steps or the time budget, whichever runs out first."""
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = max((step - recipe.warmup) / max(1, total - recipe.warmup), elapsed / budget_s)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    g = torch.Generator().manual_seed(recipe.seed)
    losses: list[float] = []
    t_train = time.perf_counter()
    budget_s = recipe.budget_minutes * 60
    stopped_by = "steps"
    net.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_at(step, time.perf_counter() - t_train)
        x, y = _batch(clean, vae, recipe.batch, g)
        loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y,
                               label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        elapsed = time.perf_counter() - t_train
        if step % 200 == 0 or step == recipe.steps - 1:
            log(f"features: step {step + 1}/{recipe.steps} loss {np.mean(losses[-200:]):.3f} ({elapsed:.0f} s)")
        if elapsed > budget_s:
            stopped_by = f"time budget ({recipe.budget_minutes:g} min)"
            break
    train_s = time.perf_counter() - t_train
    net = net.to(memory_format=torch.contiguous_format).eval()
    # 5. save, then 4. evaluate the saved (fp16) weights as they ship
    net.save(out, {"recipe": recipe.name})
    from studio_core.measure.feature_net import load_feature_net

    shipped = load_feature_net(out)
    accuracy = _evaluate(shipped, clean, images, recipe, vae_dir)
    log(f"features: accuracy {accuracy}")
    n_params = sum(p.numel() for p in net.parameters())
    curve = [round(float(np.mean(losses[i:i + 100])), 4) for i in range(0, len(losses), 100)]
    report = {
        "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(recipe).items()},
        "data": {"classes": len(images), "image_size": recipe.image_size, "dropped": ds.dropped,
                 "source": "Noto Color Emoji renders (studio_core/embedded/training/data.py), all captions"},
        "parameters": n_params,
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "steps_done": len(losses),
        "stopped_by": stopped_by,
        "images_seen": len(losses) * recipe.batch,
        "loss_first": round(float(np.mean(losses[:50])), 4),
        "loss_last": round(float(np.mean(losses[-50:])), 4),
        "loss_curve_per_100_steps": curve,
        "accuracy": accuracy,
        "seconds": {"vae_round_trips": round(vae_s, 1), "training": round(train_s, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "platform": f"{platform.machine()}, {platform.system()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"features: saved to {out} in {report['seconds']['total']:.0f} s")
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studio_core.embedded.training features",
                                description="train the emoji feature network (FD-emoji, KID, perceptual distance)")
    p.add_argument("--recipe", choices=sorted(FEATURE_RECIPES), default="cpu")
    p.add_argument("--out", type=Path, default=Path("studio_core/embedded/emoji-features"))
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    a = p.parse_args(argv)
    recipe = FEATURE_RECIPES[a.recipe]
    if a.steps is not None:
        recipe = replace(recipe, steps=a.steps)
    train_feature_net(recipe, a.out, a.cache_dir)
