"""Evaluation of a trained emoji pipeline: prompt fidelity on a fixed caption sample, and the gallery.

Prompt fidelity itself (nearest training image in thumbnail space) is ``studio_core/measure/fidelity.py``;
images come from the one seeded ``studio_core.measure.generation.generate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from studio_core.embedded.training.data import caption_kind
from studio_core.embedded.training.recipe import Recipe, log
from studio_core.prompts import GALLERY_PROMPTS

__all__ = ["evaluate", "fidelity_captions", "score_captions", "write_gallery"]


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
        log(f"guidance {g}: top1 {r.top1:.3f} top5 {r.top5:.3f} ({r.n} captions)")
    best = max(recipe.guidance_grid, key=lambda g: (sweep[str(g)]["top5"], sweep[str(g)]["top1"]))
    tr = score_captions(pipe, index, train_caps, recipe.eval_steps, best)
    held = score_captions(pipe, index, held_caps, recipe.eval_steps, best)
    log(f"train captions top1 {tr.top1:.3f} top5 {tr.top5:.3f}; held-out top1 {held.top1:.3f} top5 {held.top5:.3f}")
    by_kind = {}
    for kind in ("skin-tone variant", "flag", "other"):
        ranks = [r for c, r in zip(train_caps, tr.ranks) if caption_kind(c) == kind]
        if ranks:
            by_kind[kind] = {"top1": sum(r < 1 for r in ranks) / len(ranks),
                             "top5": sum(r < 5 for r in ranks) / len(ranks), "n": len(ranks)}
    log(f"training captions by kind: {by_kind}")
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
