"""Seeded image generation with a loaded pipeline: one image per (prompt, seed), uint8 arrays out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["generate", "model_defaults"]


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
        outs.append((res.images * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(outs)


def model_defaults(folder: str | Path) -> dict:
    """The model's documented defaults (``studio_defaults.json``), or SD's own when it has none."""
    path = Path(folder) / "studio_defaults.json"
    base = {"guidance_scale": 7.5, "num_inference_steps": 50, "height": None, "width": None}
    if path.is_file():
        base.update(json.loads(path.read_text(encoding="utf-8")))
    return base


class PipelineCache:
    """Loads each model once per process (loading is the slow part of a first click)."""

    def __init__(self):
        self._pipes: dict[tuple[str, str], object] = {}

    def get(self, model: str, device: str = "cpu"):
        from .models import load_pipeline, resolve_model

        key = (resolve_model(model), device)
        if key not in self._pipes:
            self._pipes[key] = load_pipeline(key[0], device=device)
        return self._pipes[key]


_CACHE = PipelineCache()


def generate_one(model: str, prompt: str, seed: int, steps: int | None = None,
                 guidance: float | None = None) -> tuple[np.ndarray, dict]:
    """One image for the UI, with the settings used; bad input raises ``ValueError`` with the reason."""
    from .models import resolve_model

    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("prompt is empty: type what the image should show, e.g. 'grinning face'")
    defaults = model_defaults(resolve_model(model))
    steps = int(defaults["num_inference_steps"] if steps is None else steps)
    guidance = float(defaults["guidance_scale"] if guidance is None else guidance)
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps={steps} is out of range: use 1 to 1000")
    if guidance < 0:
        raise ValueError(f"guidance={guidance} is negative: use 0 or more (1 disables guidance)")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed={seed!r} is not a whole number") from None
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed} is out of range: use 0 to 2**63 - 1")
    pipe = _CACHE.get(model)
    image = generate(pipe, [prompt], [seed], steps, guidance)[0]
    return image, {"model": model, "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
                   "sampler": type(pipe.scheduler).__name__}
