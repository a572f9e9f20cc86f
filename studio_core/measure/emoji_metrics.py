"""Quality in the emoji domain, on the studio's own feature network (``feature_net``): the scores a run of an
emoji model gets beside PSNR/SSIM.

- On the run's own images: the **perceptual distance** to the same-seed reference (``distribution.perceptual_distance``,
  mean ± std over the images) and the **classifier fidelity** (top-1 / top-5 of each caption's class).
- On a **distribution set** (the spec's ``distribution`` images: that many training captions, evenly spread over
  the sorted training split, seed = the run's first seed + i), generated with the run's settings and timed apart
  from its latency: **FD-emoji** (Fréchet distance of the penultimate features), **KID-emoji** (± std over subsets),
  **improved precision / recall** (k = 3) against as many training renders (a fixed-seed subset, since the
  method compares sets of one size), and the classifier
  fidelity over the set.

The real set is every training-split render at the run's size (emoji-sd's 32 px, emoji-flux's 64 px: the
network resizes both sets to its 32 px input, so both go through the same resampling); its features are
computed once per feature network and size and kept in the study's ``cache/`` (``distribution.real_features``).
The figures are meaningful between runs of emoji models at the same n; they are not comparable with published
FID or LPIPS.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from studio_core.measure.feature_net import FEATURE_NET_DIR, EmojiFeatureNet, load_feature_net
from studio_core.spec import ModelInfo

__all__ = ["DIST_KID_SUBSETS", "DIST_KID_SUBSET_SIZE", "DIST_PR_K", "FEATURE_NET_METHOD", "dataset_split",
           "distribution_captions", "distribution_scores", "emoji_image_scores", "is_emoji_domain", "training_renders",
           "unavailable_reason"]

DIST_KID_SUBSETS = 100  # KID: subsets of min(n, 1000) drawn with a fixed seed (torchmetrics' defaults)
DIST_KID_SUBSET_SIZE = 1000
DIST_PR_K = 3  # improved precision / recall's k (Kynkäänniemi et al. 2019)
FEATURE_NET_METHOD = "emoji feature network (studio-trained CNN, penultimate layer); not comparable with published FID"

_DIGESTS: dict[str, str] = {}


def is_emoji_domain(info: ModelInfo) -> bool:
    """The embedded models and folders whose ``studio_defaults.json`` says ``"domain": "emoji"`` (students made by
    the studio): the models the feature network knows."""
    return info.is_embedded or info.domain == "emoji"


def unavailable_reason(info: ModelInfo) -> str | None:
    """Why the emoji-domain metrics do not apply to this model, or None when they do."""
    if is_emoji_domain(info):
        return None
    return ("FD-emoji, KID, precision/recall and the perceptual distance are unavailable for this model: the studio's "
            "feature network knows only the emoji domain (for any model, give --metric-weights DIR with standard "
            "backbones for LPIPS, FID/KID and CLIP-score)")


def _digest(folder: Path) -> str:
    key = str(folder)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return _DIGESTS[key]


def distribution_captions(captions: list[str], held_out: np.ndarray, n: int) -> list[str]:
    """``n`` training captions spread evenly over the sorted training split (deterministic, no repeats while
    n is at most the split's size, then cycling)."""
    train = sorted(c for c, h in zip(captions, held_out) if not h)
    if n <= len(train):
        idx = np.linspace(0, len(train) - 1, n).round().astype(int)
    else:
        idx = np.arange(n) % len(train)
    return [train[i] for i in idx]


def _classifier_topk(net: EmojiFeatureNet, images: np.ndarray, captions: list[str]) -> dict:
    """Top-1 / top-5 of each image's caption among the network's classes (images whose caption it lacks are
    left out)."""
    index = {c: i for i, c in enumerate(net.config.captions)}
    keep = [i for i, c in enumerate(captions) if c in index]
    if not keep:
        return {}
    logits = net.logits(images[keep])
    labels = torch.tensor([index[captions[i]] for i in keep])
    top = logits.topk(5, dim=1).indices
    hit = top == labels[:, None]
    return {"classifier_top1": float(hit[:, 0].float().mean()), "classifier_top5": float(hit.any(1).float().mean()),
            "classifier_n": len(keep)}


def emoji_image_scores(images: np.ndarray, reference: np.ndarray, captions: list[str],
                       folder: Path = FEATURE_NET_DIR) -> dict:
    """The perceptual distance to the same-seed reference (mean ± std) and the classifier fidelity, of the
    run's own uint8 images."""
    from studio_core.measure.distribution import perceptual_distance

    net = load_feature_net(folder)
    d = perceptual_distance(net, images, reference)
    out = {"perceptual_emoji": float(d.mean()), "perceptual_emoji_std": float(d.std())}
    out.update(_classifier_topk(net, images, captions))
    return out


def distribution_scores(images: np.ndarray, captions: list[str], size: int, cache_dir: Path,
                        folder: Path = FEATURE_NET_DIR) -> dict:
    """FD-emoji, KID-emoji (± std over subsets), precision / recall and the classifier fidelity of a distribution
    set's uint8 images against the training renders at ``size``; ``dist_score_ms`` is the time this took
    (features of the set and the metrics; the real set's features come from the cache after the first time)."""
    from studio_core.measure.distribution import feature_stats, frechet_distance, kid, precision_recall, real_features

    t0 = time.perf_counter()
    folder = Path(folder).resolve()
    net = load_feature_net(folder)
    real_all, real_captions = real_features(net, size, cache_dir, _digest(folder))
    captions_all, held_out = dataset_split(cache_dir, size)
    train = {c for c, h in zip(captions_all, held_out) if not h}
    real = real_all[[i for i, c in enumerate(real_captions) if c in train]]
    fake = net.features(images)
    mu_r, s_r = feature_stats(real)
    mu_f, s_f = feature_stats(fake)
    kid_mean, kid_std = kid(real, fake, subsets=DIST_KID_SUBSETS, subset_size=DIST_KID_SUBSET_SIZE, seed=0)
    # improved precision/recall compare sets of one size (Kynkäänniemi et al. 2019): k-NN balls of 100 generated
    # images are far wider than those of 3,500 renders, which inflates recall; a fixed-seed subset of as many renders
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:len(fake)]
    precision, recall = precision_recall(real[pick], fake, k=DIST_PR_K)
    m = min(DIST_KID_SUBSET_SIZE, len(real), len(fake))
    out = {
        "fd_emoji": frechet_distance(mu_r, s_r, mu_f, s_f), "kid_emoji": kid_mean, "kid_emoji_std": kid_std,
        "precision_emoji": precision, "recall_emoji": recall, "dist_n": len(images),
        "dist_method": (f"{FEATURE_NET_METHOD}; weights {_digest(folder)[:12]}; real set: {len(real)} training "
                        f"renders at {size} px; KID: polynomial kernel, {DIST_KID_SUBSETS} subsets of {m}, ± std; "
                        f"precision/recall: k={DIST_PR_K} against {min(len(real), len(fake))} renders (a fixed-seed subset)"),
    }
    out.update({f"dist_{k}": v for k, v in _classifier_topk(net, images, captions).items()})
    out["dist_score_ms"] = (time.perf_counter() - t0) * 1000
    return out


def training_renders(cache_dir: Path, size: int) -> np.ndarray:
    """The training split's renders at ``size``: the real set of the emoji models' FID/KID from local weights."""
    from studio_core.embedded.training.data import load_or_build

    ds = load_or_build(cache_dir, size)
    return ds.images[~np.asarray(ds.held_out)]


def dataset_split(cache_dir: Path, size: int) -> tuple[list[str], np.ndarray]:
    """Every caption of the emoji data set at ``size`` and its held-out flags."""
    from studio_core.embedded.training.data import load_or_build

    ds = load_or_build(cache_dir, size)
    return list(ds.captions), np.asarray(ds.held_out)
