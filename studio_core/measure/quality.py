"""Quality of a run's images: PSNR and SSIM against the reference, LPIPS when its weights are on disk,
and prompt fidelity for the embedded model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from studio_core.spec import ModelInfo, RunSpec

__all__ = ["PSNR_CAP_DB", "image_metrics", "lpips", "lpips_unavailable_reason", "load_fidelity_index",
           "prompt_fidelity"]

PSNR_CAP_DB = 100.0  # identical images: MSE floored at 1e-10


def image_metrics(images: np.ndarray, reference: np.ndarray) -> dict:
    """Per-image PSNR (capped at 100 dB) and SSIM against the reference (torchmetrics); mean and std."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} differ in shape")
    a = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    b = torch.from_numpy(reference).permute(0, 3, 1, 2).double() / 255.0
    mse = ((a - b) ** 2).flatten(1).mean(1)
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    psnr = torch.where(mse < 1e-10, torch.full_like(psnr, PSNR_CAP_DB), psnr.clamp(max=PSNR_CAP_DB))
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    std = (lambda t: float(t.std(unbiased=False)))
    return {"psnr": float(psnr.mean()), "psnr_std": std(psnr), "ssim": float(ssim.mean()), "ssim_std": std(ssim)}


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS (Zhang et al. 2018, AlexNet) cannot be scored here: it needs torchvision and its
    backbone weights on disk, and nothing is ever downloaded; None when it can."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return "LPIPS unavailable: torchvision is not installed"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return f"LPIPS unavailable: AlexNet backbone weights not found in {hub} (nothing is downloaded)"
    return None


def lpips(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean LPIPS (Zhang et al. 2018, AlexNet features; torchmetrics) of uint8 images against the reference."""
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    a = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    b = torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 127.5 - 1
    return float(learned_perceptual_image_patch_similarity(a, b, net_type="alex"))


def load_fidelity_index(info: ModelInfo, cache_dir: Path):
    """The embedded model's prompt-fidelity gallery (nearest-neighbour retrieval over its training set),
    rendered once and kept in ``cache_dir`` (the study's ``cache/``: nothing is written in the project)."""
    from studio_core.embedded.training.data import load_or_build
    from studio_core.measure.fidelity import PromptFidelityIndex

    ds = load_or_build(cache_dir, int(info.sample_size or 32))
    return PromptFidelityIndex(ds.images, ds.captions)


def prompt_fidelity(index, spec: RunSpec, images: np.ndarray) -> tuple[dict, list[str]]:
    """Top-1/top-5 retrieval of each image's own prompt (``PromptFidelityIndex.score``) over the images
    whose prompt is a caption of the gallery; the columns and a note on what was left out."""
    caps = [p for p, _ in spec.images()]
    known = [i for i, c in enumerate(caps) if c in index]
    if not known:
        return {}, ["prompt fidelity unavailable: no prompt is an emoji caption of the training set"]
    r = index.score(images[known], [caps[i] for i in known])
    notes = []
    if len(known) < len(caps):
        notes.append(f"prompt fidelity over {len(known)} of {len(caps)} images (other prompts "
                     "are not emoji captions)")
    return {"fidelity_top1": r.top1, "fidelity_top5": r.top5, "fidelity_n": r.n}, notes
