"""Seeded image generation with a loaded pipeline: one image per (prompt, seed), uint8 arrays out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["generate", "model_defaults", "to_uint8"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline ``output_type="np"`` images in [0, 1] -> uint8, rounded."""
    return (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 64,
             height: int | None = None, width: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 images; each image has its own ``torch.Generator`` seeded with its seed."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    outs = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        res = pipe(list(prompts[i:i + batch]), num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="np", height=height, width=width)
        outs.append(to_uint8(res.images))
    return np.concatenate(outs)


def model_defaults(folder: str | Path) -> dict:
    """The model's documented defaults (``studio_defaults.json``), or SD's own when it has none."""
    path = Path(folder) / "studio_defaults.json"
    base = {"guidance_scale": 7.5, "num_inference_steps": 50, "height": None, "width": None}
    if path.is_file():
        base.update(json.loads(path.read_text(encoding="utf-8")))
    return base
