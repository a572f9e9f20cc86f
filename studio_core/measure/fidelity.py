"""Prompt fidelity: does a generated image's nearest training image belong to the prompt?

Feature space (documented in the model card): the image in [0, 1] RGB, area-averaged to a
``grid x grid`` thumbnail (default 16x16, so each cell averages a 4x4 block of a 64x64 image),
flattened; distance is Euclidean. Averaging 16 pixels per cell cuts per-pixel noise by 4x and turns
a one-pixel shift into a quarter-cell blend, which is why the space is robust to the perturbations
the validation applies, while colour (skin tones, flags) and layout stay distinct between emoji.
Retrieval is by exact nearest neighbours over the whole gallery (a few thousand images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FidelityResult", "PromptFidelityIndex", "thumbnail_features"]


def thumbnail_features(images: np.ndarray | torch.Tensor, grid: int = 16) -> torch.Tensor:
    """(N, H, W, 3) uint8 or float [0, 1] images -> (N, 3*grid*grid) area-averaged thumbnails."""
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float().permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(x, grid).flatten(1)


@dataclass(frozen=True)
class FidelityResult:
    """Top-k hit rates of retrieving each prompt's own gallery image."""

    top1: float
    top5: float
    n: int
    ranks: list[int]  # rank of the right image per sample (0 = nearest)


class PromptFidelityIndex:
    """Nearest-neighbour index over the training gallery, keyed by caption."""

    def __init__(self, gallery: np.ndarray, captions: list[str], grid: int = 16):
        if len(gallery) != len(captions):
            raise ValueError(f"gallery has {len(gallery)} images but {len(captions)} captions")
        self.grid = grid
        self.captions = list(captions)
        self._index = {c: i for i, c in enumerate(self.captions)}
        self.features = thumbnail_features(gallery, grid)

    def __contains__(self, caption: str) -> bool:
        return caption in self._index

    def ranks(self, images: np.ndarray | torch.Tensor, captions: list[str]) -> list[int]:
        """Rank of each caption's own image among all gallery images, by distance to the sample."""
        unknown = [c for c in captions if c not in self._index]
        if unknown:
            raise KeyError(f"captions not in the fidelity gallery: {unknown[:3]}")
        q = thumbnail_features(images, self.grid)
        d = torch.cdist(q, self.features)
        target = torch.tensor([self._index[c] for c in captions])
        own = d[torch.arange(len(captions)), target]
        return (d < own[:, None]).sum(1).tolist()

    def score(self, images: np.ndarray | torch.Tensor, captions: list[str]) -> FidelityResult:
        r = self.ranks(images, captions)
        n = len(r)
        return FidelityResult(sum(x < 1 for x in r) / n, sum(x < 5 for x in r) / n, n, r)

    def nearest(self, images: np.ndarray | torch.Tensor, k: int = 5) -> list[list[str]]:
        """Captions of the k nearest gallery images for each image."""
        d = torch.cdist(thumbnail_features(images, self.grid), self.features)
        idx = d.topk(k, largest=False).indices
        return [[self.captions[j] for j in row] for row in idx.tolist()]
