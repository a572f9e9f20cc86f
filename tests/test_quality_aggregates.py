"""Quality aggregates that mean what they say (issue 18, item 3): PSNR pooled over the batch's MSE with the
per-image spread and identical count beside it, the SSIM variant named and measured against scikit-image's,
and the card and labels telling a pooled figure from an older run's mean of per-image dB.

Fixed images: a 32 px synthetic scene (gradients, a rectangle, a disc) and, against it, itself, a seeded
Gaussian-noise copy, a 3x3 box blur and a one-pixel shift.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure

from app import cards
from studio_core.measure.quality import PSNR_CAP_DB, image_metrics
from studio_core.store.store import RunStore
from studio_core.study import labels

SSIM_BORDER = 5  # the 11x11 window's half width: scikit-image leaves this margin out, torchmetrics pads it


def _scene(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.stack([255 * x, 255 * y, 128 + 100 * np.sin(6 * x + 3 * y)], -1)
    img[size // 4:size // 2, size // 4:3 * size // 4] = (230, 40, 60)
    img[(x - 0.7) ** 2 + (y - 0.7) ** 2 < 0.03] = (20, 20, 200)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _noise(img: np.ndarray, sigma: float = 12.0) -> np.ndarray:
    return np.clip(img + np.random.default_rng(0).normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def _blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    return (sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9).round().astype(np.uint8)


def _shift(img: np.ndarray) -> np.ndarray:
    return np.roll(img, 1, axis=1)


def _by_hand_db(mse: float) -> float:
    return 10 * math.log10(1 / mse)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float((((a.astype(np.float64) - b.astype(np.float64)) / 255) ** 2).mean())


# ------------------------------------------------------------------------------------------ PSNR
def test_pooled_psnr_of_identical_noise_and_blur_is_the_pooled_mse_not_the_db_mean():
    ref = _scene()
    batch, refs = np.stack([ref, _noise(ref), _blur(ref)]), np.stack([ref] * 3)
    m = image_metrics(batch, refs)
    pooled = _by_hand_db(np.mean([_mse(a, b) for a, b in zip(batch, refs)]))
    per_image = [PSNR_CAP_DB, _by_hand_db(_mse(batch[1], ref)), _by_hand_db(_mse(batch[2], ref))]
    assert m["psnr"] == pytest.approx(pooled, abs=1e-9) and m["psnr_method"] == labels.PSNR_POOLED
    assert m["psnr_image_mean"] == pytest.approx(np.mean(per_image), abs=1e-9)  # the old figure, kept to compare
    # the identical image lifted the old mean by over 20 dB; pooled, it adds zero error to a third of the
    # pixels, so the figure stays within 10·log10(3) dB of the best image that differs
    assert m["psnr_image_mean"] - m["psnr"] > 20 and 0 < m["psnr"] - max(per_image[1:]) < 10 * math.log10(3)
    assert m["identical_images"] == 1
    # the spread is over the images that differ: an identical image's dB is infinite, not 100
    assert (m["psnr_min"], m["psnr_max"]) == pytest.approx((per_image[2], per_image[1]), abs=1e-9)
    assert m["psnr_std"] == pytest.approx(np.std(per_image[1:]), abs=1e-9)


def test_all_identical_images_get_the_cap_and_their_count_and_no_spread():
    ref = _scene()
    m = image_metrics(np.stack([ref, ref]), np.stack([ref, ref]))
    assert m["psnr"] == PSNR_CAP_DB and m["psnr_image_mean"] == PSNR_CAP_DB and m["identical_images"] == 2
    assert not {"psnr_std", "psnr_min", "psnr_max"} & set(m)  # no image differs: nothing to spread
    one_level = ref.copy()
    one_level[0, 0, 0] ^= 1  # one channel of one pixel one level off is not identical
    assert image_metrics(one_level[None], ref[None])["identical_images"] == 0


def test_new_quality_columns_are_stored_as_numbers_and_read_back(tmp_path):
    ref = _scene()
    store = RunStore(tmp_path)
    same = store.start_run({"prompts": ["a", "b"], "seeds": [0]}, config_hash="same")
    store.finish_run(same, image_metrics(np.stack([ref, ref]), np.stack([ref, ref])))  # no spread columns
    mixed = store.start_run({"prompts": ["a", "b"], "seeds": [0]}, config_hash="mixed")
    store.finish_run(mixed, image_metrics(np.stack([ref, _noise(ref)]), np.stack([ref, ref])))
    row = store.get_run(mixed)
    assert isinstance(row["psnr_min"], float) and row["psnr_min"] == row["psnr_max"] and row["identical_images"] == 1
    assert row["psnr_method"] == labels.PSNR_POOLED and row["ssim_method"] == labels.SSIM_METHOD
    assert store.get_run(same)["psnr_min"] is None and store.get_run(same)["identical_images"] == 2


# ------------------------------------------------------------------------------------------ SSIM
def test_ssim_is_torchmetrics_full_map_and_differs_from_scikit_image_only_at_the_border():
    """Measured on these 32 px images: torchmetrics' SSIM (reflect-padded, mean over the full 32x32 map) is
    scikit-image's valid-region SSIM (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=255``, mean over the 22x22 interior) -0.041 for noise, +0.052 for blur, +0.015 for the shift;
    on the embedded model's 32 px renders (benchmarks/psnr_pooling.py: 8 steps, 4 images per sampler) it was
    +0.008 (DPM++ 2M) to +0.063 (Euler a).
    The 5 px border is 53% of a 32 px map; inside it the two maps agree to 1e-12."""
    ref = _scene()
    diffs = []
    for out in (_noise(ref), _blur(ref), _shift(ref)):
        m = image_metrics(out[None], ref[None])
        ours = m["ssim"]
        assert m["ssim_method"] == labels.SSIM_METHOD and "reflect-padded full map" in m["ssim_method"]
        theirs = structural_similarity(out, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, channel_axis=-1)
        diffs.append(ours - theirs)
        a, b = (torch.from_numpy(x[None]).permute(0, 3, 1, 2).double() / 255 for x in (out, ref))
        _, full = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True)
        assert float(full.mean()) == pytest.approx(ours, abs=1e-12)  # ours is the mean of the full map
        inner = full[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]
        assert float(inner.mean()) == pytest.approx(theirs, abs=1e-12)
    assert diffs == pytest.approx([-0.041, 0.052, 0.015], abs=0.002)
    assert all(abs(d) > 0.01 for d in diffs)  # the variants really differ: the name says which one this is


# ------------------------------------------------------------------------------------------ card and labels
def _row(metrics: dict, **kw) -> dict:
    row = {"id": 5, "status": "ok", "n_images": 3, "prompts": ["a"], "seeds": [0, 1, 2], **metrics}
    row.update(kw)
    return row


def test_card_names_the_pooled_method_and_shows_the_per_image_spread():
    ref = _scene()
    m = image_metrics(np.stack([ref, _noise(ref), _blur(ref)]), np.stack([ref] * 3))
    text = cards.metrics_card(_row(m))
    lo, hi = labels.number(m["psnr_min"]), labels.number(m["psnr_max"])
    assert (f"PSNR {labels.number(m['psnr'])} dB (pooled over 3 images; per image {lo}–{hi} dB, 1 identical)"
            in text), text
    assert "PSNR: pooled MSE: 10·log10(1/MSE)" in text and labels.SSIM_METHOD in text
    assert "older run" not in text
    capped = cards.metrics_card(_row(image_metrics(np.stack([ref] * 3), np.stack([ref] * 3))))
    assert "PSNR 100.00 dB (the cap: all 3 images are identical to the reference)" in capped


def test_an_old_row_without_psnr_method_is_labelled_as_the_older_mean():
    old = _row({"psnr": 53.2, "psnr_std": 33.1, "ssim": 0.91, "ssim_std": 0.08})
    assert labels.psnr_method(old) == labels.PSNR_OLDER and not labels.psnr_is_pooled(old)
    assert labels.ssim_method(old) == labels.SSIM_METHOD  # SSIM was computed the same way then
    text = cards.metrics_card(old)
    assert "PSNR 53.20 ± 33.10 dB (older run: mean of per-image dB, not pooled)" in text, text
    assert f"PSNR: {labels.PSNR_OLDER}" in text and "pooled over" not in text
    new = _row({"psnr": 29.6, "psnr_method": labels.PSNR_POOLED, "psnr_min": 20.0, "psnr_max": 30.0})
    assert labels.psnr_title([new]) == labels.COLUMN_LABELS["psnr"] == "PSNR (pooled, dB)"
    assert "older runs" in labels.psnr_title([new, old])
    against = cards.baseline_text(new, {**old, "id": 2})
    assert "PSNR Δ mixes methods: this run's is pooled MSE, the baseline's mean of per-image dB (older run)" in against
