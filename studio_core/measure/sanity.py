"""Is the output a picture at all? One cheap pass over a run's images before anything is scored.

A sampler that does not serve the model's prediction type, an fp16 overflow or a safety checker can
make a pipeline return NaN, infinities, a flat colour or black frames without raising. Scored against
the reference such a run would still get a PSNR and be recorded ``ok``; these checks make it a failed
run that says which images are wrong and what to try. ``check_finite`` looks at the pipeline's float
output (NaN turns into 0 when converted to uint8, so it must be caught before); ``check_pictures`` at
the uint8 images.
"""

from __future__ import annotations

import numpy as np

from studio_core.errors import BadOutput

__all__ = ["BLACK_LEVEL", "BLACK_SHARE", "FLAT_RANGE", "check_finite", "check_pictures"]

FLAT_RANGE = 2  # an image whose every value lies within this many levels (of 255) is one flat colour
BLACK_LEVEL = 4  # a pixel at or under this level (of 255) in every channel counts as black
BLACK_SHARE = 0.995  # an image with this share of black pixels is "all black" (a blanked or failed decode)

_NAN_HINT = ("the usual causes are an fp16 overflow (try bf16 or fp32, or component precision vae fp32) or a "
             "sampler that does not serve this model's prediction type")
_FLAT_HINT = ("a sampler that does not fit this model (e.g. Karras sigmas on a flow-matching model), too few steps, "
              "or a safety checker blanking the image; try the model's default sampler")


def _which(bad: np.ndarray) -> str:
    idx = [int(i) for i in np.flatnonzero(bad)]
    shown = ", ".join(str(i) for i in idx[:8]) + (" ..." if len(idx) > 8 else "")
    return f"{len(idx)} of {len(bad)} images (index {shown})"


def check_finite(images: np.ndarray) -> None:
    """``BadOutput`` when any value of the pipeline's float output (N, H, W, C) is NaN or infinite."""
    arr = np.asarray(images)
    if not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all():
        return
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    raise BadOutput(f"the pipeline returned NaN or infinite values in {_which(bad)}: {_NAN_HINT}")


def check_pictures(images: np.ndarray) -> None:
    """``BadOutput`` when a uint8 image (N, H, W, C) is one flat colour or (nearly) all black."""
    arr = np.asarray(images)
    if arr.size == 0:
        return
    flat = arr.reshape(len(arr), -1)
    constant = (flat.max(axis=1).astype(int) - flat.min(axis=1).astype(int)) <= FLAT_RANGE
    black = (arr.max(axis=-1) <= BLACK_LEVEL).reshape(len(arr), -1).mean(axis=1) >= BLACK_SHARE
    if black.any():
        raise BadOutput(f"the pipeline returned (nearly) all-black images: {_which(black)}: {_FLAT_HINT}")
    if constant.any():
        raise BadOutput(f"the pipeline returned images of one flat colour: {_which(constant)}: {_FLAT_HINT}")
