"""Quality of a run's images: PSNR and SSIM against the reference, and prompt fidelity for the emoji models
(LPIPS, FID and CLIP-score from local weights are ``standard_metrics``; the emoji feature network's scores are
``emoji_metrics``).

PSNR is pooled: 10·log10(1/MSE) of the mean squared error over every pixel of every image (values in
[0, 1]), so one image equal to its reference does not dominate the batch as it does a mean of per-image
dB (its dB is infinite; capped at ``PSNR_CAP_DB`` and averaged, it lifts an identical + noise + blur
batch to 50.5 dB where the pooled figure is 27.3: tests/test_quality_aggregates.py). Beside it: the per-image dB spread (std, min, max) over
the images that differ from their reference, the count of identical ones, and the old mean of per-image
dB for comparison. SSIM is torchmetrics' variant, named in every row (``labels.SSIM_METHOD``);
tests/test_quality_aggregates.py measures it against scikit-image's valid-region SSIM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from studio_core.spec import RunSpec
from studio_core.study.labels import PSNR_POOLED, SSIM_METHOD

__all__ = ["PSNR_CAP_DB", "image_metrics", "load_fidelity_index",
           "prompt_fidelity"]

PSNR_CAP_DB = 100.0  # an image (or a batch) equal to its reference pixel for pixel has infinite PSNR


def _db(mse: np.ndarray | float) -> np.ndarray:
    """10·log10(1/MSE) for values in [0, 1], capped at ``PSNR_CAP_DB`` (MSE 0 included)."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.minimum(-10.0 * np.log10(mse), PSNR_CAP_DB)


def image_metrics(images: np.ndarray, reference: np.ndarray) -> dict:
    """Pooled PSNR with the per-image spread and identical count, and SSIM (torchmetrics) mean and std,
    of uint8 ``(n, h, w, 3)`` images against their reference; each method named in the result."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} differ in shape")
    n = len(images)
    diff = (images.astype(np.float64) - reference.astype(np.float64)) / 255.0
    mse = (diff ** 2).reshape(n, -1).mean(1)
    identical = mse == 0  # uint8: zero only when equal pixel for pixel
    per_image = _db(mse)
    out = {"psnr": float(_db(mse.mean())), "psnr_method": PSNR_POOLED, "identical_images": int(identical.sum()),
           "psnr_image_mean": float(per_image.mean())}  # the figure runs before pooling stored as psnr
    differ = per_image[~identical]
    if len(differ):  # none differ: no spread; the keys are left out (a first None would add TEXT columns)
        out.update(psnr_std=float(differ.std()), psnr_min=float(differ.min()), psnr_max=float(differ.max()))
    a = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    b = torch.from_numpy(reference).permute(0, 3, 1, 2).double() / 255.0
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    out.update(ssim=float(ssim.mean()), ssim_std=float(ssim.std(unbiased=False)), ssim_method=SSIM_METHOD)
    return out


def load_fidelity_index(size: int, cache_dir: Path):
    """The emoji models' prompt-fidelity gallery (nearest-neighbour retrieval over the emoji set) rendered at
    ``size`` px, the run's own (emoji-sd's 32, emoji-flux's 64, not the pipeline's native size: FluxPipeline's
    hard-coded 128 latents are 512 px), once, and kept in ``cache_dir`` (the study's ``cache/``: nothing is
    written in the project)."""
    from studio_core.embedded.training.data import load_or_build
    from studio_core.measure.fidelity import PromptFidelityIndex

    ds = load_or_build(cache_dir, int(size))
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
