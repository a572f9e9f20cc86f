"""The named training recipes of the embedded model, and the fresh SD-1.5-shaped components they build.

``RECIPES`` is the one name -> settings map; ``python -m studio_core.embedded.training --recipe`` takes its
choices from it. ``build_components`` draws the fresh weights (callers seed torch first).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RECIPES", "Recipe", "build_components", "log", "strip_local_paths", "warmup_cosine"]


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


def warmup_cosine(step: int, warmup: int, total: int, time_fraction: float = 0.0, floor: float = 0.05) -> float:
    """Learning-rate multiple: linear warm-up over ``warmup`` steps, then cosine to ``floor`` over the steps or the
    time budget, whichever is further along (``time_fraction``: the share of the budget spent). The emoji-flux
    training and the distillation both run on it."""
    if step < warmup:
        return (step + 1) / warmup
    progress = max((step - warmup) / max(1, total - warmup), time_fraction)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def strip_local_paths(folder: Path) -> None:
    """Drop ``_name_or_path`` (a path of the machine that saved it) from every component config of a saved
    pipeline folder, so a shipped folder names no path of ours; emoji-flux and the distilled students use it."""
    for cfg in Path(folder).glob("*/config.json"):
        data = json.loads(cfg.read_text(encoding="utf-8"))
        if data.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def log(msg: str) -> None:
    """One timestamped progress line; every stage of a run reports through it."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
