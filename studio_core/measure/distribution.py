"""Distribution quality of a run's images in the emoji feature network's space, without a model hub.

Set-level metrics compare the features (``EmojiFeatureNet.features``) of generated images with those of
every emoji render: the Fréchet distance of the two Gaussians (FD-emoji, computed as torchmetrics' FID),
the kernel distance (KID-emoji, torchmetrics' estimator with a seeded generator), and improved precision
and recall (k-NN balls). ``perceptual_distance`` is a per-image LPIPS-style distance on the network's
stage outputs. All are domain figures: comparable between runs of the emoji models, **not** with
published FID / KID / LPIPS (Inception v3 and AlexNet on ImageNet).

``real_features`` computes the real set's features once per (weights, size) and keeps them beside the
rendered data set as ``emoji-features-<digest12>-<size>.npz`` and in the process.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from studio_core.measure.feature_net import EmojiFeatureNet, as_input

__all__ = ["feature_stats", "frechet_distance", "kid", "perceptual_distance", "precision_recall", "real_features"]

_CDIST_CHUNK_ELEMENTS = 1 << 22  # 4 Mi float64 distances (32 MB) per block: 5,000 x 5,000 stays well under 200 MB
_LPIPS_EPS = 1e-10
_REAL_FEATURES: dict[tuple[str, str, int], tuple[torch.Tensor, list[str]]] = {}  # (cache dir, digest, size)


def _as_features(name: str, feats: torch.Tensor) -> torch.Tensor:
    """``feats`` as a float64 (N, D) tensor, or a ValueError naming ``name`` and its shape."""
    x = torch.as_tensor(feats)
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _same_dim(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real features have {real.shape[1]} dimensions and fake features {fake.shape[1]}")


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64) of (N, D) features: the Gaussian of Heusel et al. (2017)."""
    x = _as_features("features", feats)
    if len(x) < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {len(x)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance of two Gaussians (Heusel et al. 2017), computed as torchmetrics 1.9's FID in float64."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"expected means (D,) and covariances (D, D); got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    # Tr(sqrt(S1 S2)) from the eigenvalues of S1 S2 (real and >= 0 in exact arithmetic; round-off is dropped)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a (D, D) eigenproblem with D ~ 200: threads only contend (0.01 s vs seconds, loaded)
    try:
        eig = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp_min(0)
    finally:
        torch.set_num_threads(threads)
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * eig.sqrt().sum())


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef: float) -> torch.Tensor:
    """Unbiased MMD^2 of two equal-size sets under (gamma <x, y> + coef)^degree (torchmetrics' estimator)."""
    m = len(x)
    k_xx = (x @ x.T * gamma + coef) ** degree
    k_yy = (y @ y.T * gamma + coef) ** degree
    k_xy = (x @ y.T * gamma + coef) ** degree
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / m ** 2


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel distance (Bińkowski et al. 2018): mean and population std (as torchmetrics' KID returns,
    ``std(unbiased=False)``) of the polynomial-kernel MMD^2 over ``subsets`` random subsets of size
    min(subset_size, len(real), len(fake)), drawn with a generator seeded by ``seed``."""
    real, fake = _as_features("real features", real), _as_features("fake features", fake)
    _same_dim(real, fake)
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples: subset_size {subset_size}, "
                         f"{len(real)} real and {len(fake)} fake samples")
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m]]
        y = fake[torch.randperm(len(fake), generator=gen)[:m]]
        scores.append(_poly_mmd2(x, y, degree, gamma, coef))
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


def _rows_per_block(n_cols: int) -> int:
    """Rows of a distance block against ``n_cols`` points that keep it near ``_CDIST_CHUNK_ELEMENTS``."""
    return max(1, _CDIST_CHUNK_ELEMENTS // max(n_cols, 1))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each sample's distance to its k-th nearest other sample of the same set."""
    step = _rows_per_block(len(x))
    radii = []
    for start in range(0, len(x), step):
        d = torch.cdist(x[start:start + step], x)
        rows = torch.arange(len(d))
        d[rows, rows + start] = float("inf")  # by index: the distance to oneself is not always exactly 0
        radii.append(d.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``points`` within at least one centre's ball."""
    step = _rows_per_block(len(centres))
    inside = [(torch.cdist(points[s:s + step], centres) <= radii).any(dim=1) for s in range(0, len(points), step)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls and exact pairwise
    distances (``torch.cdist``, in blocks)."""
    real, fake = _as_features("real features", real), _as_features("fake features", fake)
    _same_dim(real, fake)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision and recall with k={k} need more than {k} samples in each set: "
                         f"{len(real)} real, {len(fake)} fake")
    precision = _share_inside(fake, real, _knn_radii(real, k))
    recall = _share_inside(real, fake, _knn_radii(fake, k))
    return precision, recall


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + _LPIPS_EPS)


@torch.no_grad()
def perceptual_distance(net: EmojiFeatureNet, images: np.ndarray, reference: np.ndarray,
                        batch: int = 256) -> np.ndarray:
    """Per-image LPIPS-style distance (Zhang et al. 2018, without the learned linear weights) on the
    feature network's stage outputs: unit channel vectors, squared difference, mean over channels and
    positions, summed over the stages."""
    for name, arr in (("images", images), ("reference", reference)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{name} must be a uint8 (N, H, W, 3) array, got "
                             f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}")
    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} differ in shape")
    net.eval()
    size = net.config.image_size
    out = []
    for i in range(0, len(images), batch):
        a = net.stage_outputs(as_input(images[i:i + batch], size))
        b = net.stage_outputs(as_input(reference[i:i + batch], size))
        out.append(sum((_unit_channels(fa) - _unit_channels(fb)).square().mean(dim=(1, 2, 3)) for fa, fb in zip(a, b)))
    return torch.cat(out).double().numpy() if out else np.zeros(0, dtype=np.float64)


def _load_cached(path: Path, dim: int) -> tuple[torch.Tensor, list[str]] | None:
    """The features and captions kept in ``path``; None when it is missing, unreadable or not this network's
    (an interrupted or foreign file is recomputed rather than trusted)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            feats, captions = torch.from_numpy(z["features"]), z["captions"].tolist()
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if feats.ndim != 2 or feats.shape != (len(captions), dim) or feats.dtype != torch.float64:
        return None
    return feats, captions


def real_features(net: EmojiFeatureNet, size: int, cache_dir: Path,
                  weights_digest: str) -> tuple[torch.Tensor, list[str]]:
    """Features of every emoji render at ``size`` px (training and held-out) with their captions: computed
    once per weights digest and size, kept in ``cache_dir`` (an unreadable file is recomputed) and in this
    process."""
    from studio_core.embedded.training import data as emoji_data

    if not re.fullmatch(r"[0-9a-fA-F]{12,}", weights_digest or ""):
        raise ValueError(f"weights_digest must be a hex digest of at least 12 characters, got {weights_digest!r}")
    cache_dir = Path(cache_dir)
    key = (str(cache_dir.resolve()), weights_digest[:12].lower(), size)
    if key in _REAL_FEATURES:
        return _REAL_FEATURES[key]
    path = cache_dir / f"emoji-features-{key[1]}-{size}.npz"
    cached = _load_cached(path, net.feature_dim)
    if cached is not None:
        feats, captions = cached
    else:
        ds = emoji_data.load_or_build(cache_dir, size)
        feats, captions = net.features(ds.images), list(ds.captions)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # per process: two writers never share it
        np.savez(tmp, features=feats.numpy(), captions=np.array(captions, dtype=str))
        os.replace(tmp, path)
    _REAL_FEATURES[key] = (feats, captions)
    return feats, captions
