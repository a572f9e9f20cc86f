"""Standard image metrics from backbone weights kept on disk: LPIPS (alex or vgg), FID and KID on Inception-v3
pool features, and CLIP-score. Nothing is ever downloaded: ``--metric-weights DIR`` names a folder holding any of

- ``alexnet*.pth`` / ``vgg16*.pth``: torchvision's AlexNet / VGG16 state dicts, for LPIPS (Zhang et al. 2018)
  with torchmetrics' shipped linear heads;
- ``inception_v3*.pth``: torchvision's Inception v3 state dict, for FID / KID on its 2048-d pool features. These
  are torchvision's weights, close to but not the TF-FID network of published FID, and every row says so;
- ``clip/``: a transformers ``CLIPModel`` folder with its tokenizer, for CLIP-score (Hessel et al. 2021).

A metric whose weights are missing is not scored; ``MetricWeights.unavailable_reason`` says why and what to put
where. Images are uint8 ``(N, H, W, 3)``; every model runs in eval mode without gradients and is loaded once per
process (``backbones.load_backbone``, ``_load_clip``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from studio_core.errors import ModelLoadError
from studio_core.measure.backbones import load_backbone
from studio_core.measure.distribution import feature_stats, frechet_distance, kid

__all__ = ["FID_KID_SUBSETS", "FID_KID_SUBSET_SIZE", "FID_METHOD", "METRICS", "MetricWeights", "clip_score",
           "configured_weights", "fid_kid", "how_to_provide", "inception_features", "lpips", "reference_images", "run_scores"]

FID_METHOD = ("FD on torchvision Inception-v3 weights (2048-d pool features, 299 px bilinear); close to but not "
              "the TF-FID network of published FID")
FID_KID_SUBSETS = 100  # KID: subsets of min(n, 1000) drawn with a fixed seed (torchmetrics' defaults)
FID_KID_SUBSET_SIZE = 1000
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel normalisation (CLIPImageProcessor defaults)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' ScalingLayer: inputs in [-1, 1] to ImageNet-like statistics
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16}  # smallest side each backbone reaches its fifth tap with
BATCH = 16


@dataclass(frozen=True)
class _Need:
    """What one metric needs from the folder, in the words of its 'unavailable' message."""

    title: str
    field: str
    pattern: str
    what: str
    example: str
    lpips_net: str | None = None  # LPIPS also needs torchmetrics' linear heads for this net


METRICS: dict[str, _Need] = {
    "lpips": _Need("LPIPS", "alexnet", "alexnet*.pth", "torchvision's AlexNet state dict",
                   "alexnet-owt-7be5be79.pth", "alex"),
    "lpips_vgg": _Need("LPIPS (vgg)", "vgg16", "vgg16*.pth", "torchvision's VGG16 state dict", "vgg16-397923af.pth",
                       "vgg"),
    "fid": _Need("FID/KID", "inception_v3", "inception_v3*.pth", "torchvision's Inception v3 state dict",
                 "inception_v3_google-0cc3c7bd.pth"),
    "clip": _Need("CLIP-score", "clip", "clip/ folder",
                  "a transformers CLIPModel and its CLIPTokenizer (save_pretrained) under clip/",
                  "e.g. openai/clip-vit-large-patch14"),
}
_LPIPS_NETS = {"alex": "lpips", "vgg": "lpips_vgg"}


def _first(folder: Path, pattern: str, skip: str | None = None) -> Path | None:
    found = sorted(p for p in folder.glob(pattern) if p.is_file() and not (skip and p.name.startswith(skip)))
    return found[0] if found else None


@dataclass(frozen=True)
class MetricWeights:
    """The standard backbones a ``--metric-weights`` folder holds (a path per backbone, None where absent)."""

    folder: Path | None = None
    alexnet: Path | None = None
    vgg16: Path | None = None
    inception_v3: Path | None = None
    clip: Path | None = None

    @classmethod
    def from_dir(cls, path: str | Path) -> MetricWeights:
        """What ``path`` holds; a missing path or a file is refused with a one-line ValueError."""
        folder = Path(path).expanduser()
        if not folder.exists():
            raise ValueError(f"--metric-weights {folder}: no such folder")
        if not folder.is_dir():
            raise ValueError(f"--metric-weights {folder}: not a folder")
        clip = folder / "clip"
        return cls(folder=folder.resolve(), alexnet=_first(folder, "alexnet*.pth"),
                   vgg16=_first(folder, "vgg16*.pth", skip="vgg16_bn"),  # the batch-norm VGG is another network
                   inception_v3=_first(folder, "inception_v3*.pth"),
                   clip=clip.resolve() if (clip / "config.json").is_file() else None)

    def unavailable_reason(self, metric: str) -> str | None:
        """Why ``metric`` (a key of ``METRICS``) cannot be scored with these weights, or None when it can."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        need = METRICS[metric]
        if self.folder is None:
            return (f"{need.title} unavailable: no --metric-weights folder given; put {need.what} ({need.example}) "
                    "in a folder and pass --metric-weights DIR; nothing is downloaded")
        if getattr(self, need.field) is None:
            return (f"{need.title} unavailable: no {need.pattern} in {self.folder}; put {need.what} there "
                    f"({need.example}) and pass --metric-weights DIR; nothing is downloaded")
        if need.lpips_net and not ((heads := _lpips_heads_path(need.lpips_net)) and heads.is_file()):
            return (f"{need.title} unavailable: torchmetrics' linear heads (lpips_models/{need.lpips_net}.pth) are "
                    "not installed; install torchmetrics==1.9.0 (requirements.txt)")
        if metric == "clip" and not any((self.clip / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            return (f"{need.title} unavailable: {self.clip} has no tokenizer (tokenizer.json or vocab.json + "
                    "merges.txt); save the CLIPTokenizer there too")
        return None

    def path_for(self, metric: str) -> Path:
        """The weights ``metric`` uses; ``ModelLoadError`` with the reason when they are not there."""
        reason = self.unavailable_reason(metric)
        if reason:
            raise ModelLoadError(reason)
        return getattr(self, METRICS[metric].field)


def how_to_provide() -> str:
    """One paragraph for the model card and README: which files give which standard metric."""
    return ("Standard metrics need standard backbone weights on disk; the studio never downloads them. Put any of "
            "these in one folder and pass --metric-weights DIR: torchvision's AlexNet state dict "
            "(alexnet-owt-7be5be79.pth) for LPIPS, its VGG16 state dict (vgg16-397923af.pth) for LPIPS (vgg), its "
            "Inception v3 state dict (inception_v3_google-0cc3c7bd.pth) for FID and KID, and a transformers "
            "CLIPModel folder saved with its tokenizer as clip/ for CLIP-score. LPIPS uses torchmetrics' linear "
            "heads, which come with torchmetrics. FID here is the Fréchet distance on torchvision's Inception v3 "
            "weights: close to, but not, the TF-FID network of published FID. Metrics whose weights are missing "
            "are left out, and the run says why.")


# ------------------------------------------------------------------------------------------------ LPIPS
def _check_images(name: str, images: np.ndarray) -> None:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{name} must be uint8 (N, H, W, 3) images, got {got}")


def _lpips_heads_path(net: str) -> Path | None:
    """Where torchmetrics keeps LPIPS' linear heads (beside ``functional/image/lpips.py``); None without it."""
    spec = importlib.util.find_spec("torchmetrics")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "functional" / "image" / "lpips_models" / f"{net}.pth"


_HEADS: dict[str, list[torch.Tensor]] = {}
_LOCK = threading.Lock()


def _lpips_heads(net: str) -> list[torch.Tensor]:
    """The five 1x1 linear heads (``lin{i}.model.1.weight``, shape (1, C, 1, 1)) torchmetrics ships for ``net``."""
    with _LOCK:
        if net not in _HEADS:
            state = torch.load(_lpips_heads_path(net), map_location="cpu", weights_only=True)
            _HEADS[net] = [state[f"lin{i}.model.1.weight"].float() for i in range(5)]
        return _HEADS[net]


def _unit_channels(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each position's channel vector scaled to unit length, as torchmetrics' ``_normalize_tensor``."""
    return x / torch.sqrt(eps + x.square().sum(dim=1, keepdim=True))


def _lpips_input(images: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> [-1, 1] (N, 3, H, W) through LPIPS' scaling layer."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    shift = torch.tensor(LPIPS_SHIFT, device=device)[None, :, None, None]
    scale = torch.tensor(LPIPS_SCALE, device=device)[None, :, None, None]
    return (x - shift) / scale


@torch.no_grad()
def lpips(images: np.ndarray, reference: np.ndarray, weights: MetricWeights, net: str = "alex",
          device: str | torch.device = "cpu") -> np.ndarray:
    """Per-image LPIPS (Zhang et al. 2018) of uint8 images against their reference, as torchmetrics computes it:
    scaling layer, the backbone's five ReLU taps, channel normalisation, squared difference, 1x1 linear head,
    spatial mean, summed over taps."""
    # 1. Check inputs
    if net not in _LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(_LPIPS_NETS)}, got {net!r}")
    _check_images("images", images)
    _check_images("reference", reference)
    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} differ in shape")
    if min(images.shape[1:3]) < LPIPS_MIN_SIZE[net]:
        raise ValueError(f"LPIPS ({net}) needs images of at least {LPIPS_MIN_SIZE[net]} px a side, "
                         f"got {images.shape[1]}x{images.shape[2]}")
    # 2. Load the backbone and the heads
    kind = "alexnet" if net == "alex" else "vgg16"
    backbone = load_backbone(kind, weights.path_for(_LPIPS_NETS[net]), device)
    heads = [h.to(device) for h in _lpips_heads(net)]
    # 3. Score in batches
    out = []
    for s in range(0, len(images), BATCH):
        taps_a = backbone(_lpips_input(images[s:s + BATCH], device))
        taps_b = backbone(_lpips_input(reference[s:s + BATCH], device))
        d = sum(F.conv2d((_unit_channels(a) - _unit_channels(b)).square(), head).mean(dim=(1, 2, 3))
                for a, b, head in zip(taps_a, taps_b, heads))
        out.append(d.double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# ------------------------------------------------------------------------------------------------ FID / KID
@torch.no_grad()
def inception_features(images: np.ndarray, weights: MetricWeights,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, 2048) float64 Inception-v3 pool features of uint8 images: resized to 299x299 (bilinear), mapped to
    [-1, 1], which is what torchvision's ImageNet normalisation followed by ``transform_input=True`` (the google
    weights' setting) makes of [0, 1] pixels."""
    _check_images("images", images)
    model = load_backbone("inception_v3", weights.path_for("fid"), device)
    out = []
    for s in range(0, len(images), BATCH):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + BATCH])).to(device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x / 255.0, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(model(x * 2 - 1).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2048, dtype=torch.float64)


def _frechet(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance (Heusel et al. 2017) of two feature sets' Gaussians. With fewer samples than dimensions,
    the means and covariances lie in the span of the samples, so they are compared in an orthonormal basis of it
    (QR of the stacked samples): the distance is unchanged by that rotation, an n x n eigenproblem replaces the
    2048 x 2048 one, and the real samples' coordinates beyond the first len(real) are exact zeros, so the zero
    eigenvalues they give add no round-off to the trace."""
    if len(real) + len(fake) < real.shape[1]:
        basis, _ = torch.linalg.qr(torch.cat([real, fake]).T)  # (D, n), orthonormal columns spanning the samples
        real, fake = real @ basis, fake @ basis
    mu_r, s_r = feature_stats(real)
    mu_f, s_f = feature_stats(fake)
    return frechet_distance(mu_r, s_r, mu_f, s_f)


_REAL_FEATURES: dict[tuple[str, str, str], torch.Tensor] = {}  # (weights, device, content hash) -> features


def _real_inception_features(images: np.ndarray, weights: MetricWeights, device: str | torch.device) -> torch.Tensor:
    """``inception_features`` of a real set, computed once per process for the same weights and pixels: every run of
    a study compares its distribution set with the same real set (thousands of 299 px Inception passes)."""
    key = (str(weights.path_for("fid")), str(device), hashlib.sha256(np.ascontiguousarray(images).data).hexdigest())
    if key not in _REAL_FEATURES:
        _REAL_FEATURES[key] = inception_features(images, weights, device)
    return _REAL_FEATURES[key]


def fid_kid(real_images: np.ndarray, fake_images: np.ndarray, weights: MetricWeights,
            device: str | torch.device = "cpu") -> dict:
    """FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018, ± std over subsets) of two uint8 image sets on
    torchvision's Inception-v3 pool features; ``fid_method`` names the network, weights and KID settings."""
    if len(real_images) < 2 or len(fake_images) < 2:
        raise ValueError(f"FID/KID need at least 2 images in each set, got {len(real_images)} real and "
                         f"{len(fake_images)} generated")
    real = _real_inception_features(real_images, weights, device)
    fake = inception_features(fake_images, weights, device)
    kid_mean, kid_std = kid(real, fake, subsets=FID_KID_SUBSETS, subset_size=FID_KID_SUBSET_SIZE, seed=0)
    m = min(FID_KID_SUBSET_SIZE, len(real), len(fake))
    return {"fid": _frechet(real, fake), "fid_kid": kid_mean, "fid_kid_std": kid_std,
            "fid_n": len(fake_images),
            "fid_method": (f"{FID_METHOD}; weights {weights.inception_v3.name}; real set: {len(real)} images; "
                           f"KID: polynomial kernel, {FID_KID_SUBSETS} subsets of {m}, ± std")}


# ------------------------------------------------------------------------------------------------ CLIP-score
_CLIP: dict[tuple[str, str], tuple] = {}


def _load_clip(folder: Path, device: str | torch.device) -> tuple:
    """(CLIPModel, CLIPTokenizer, pixel mean, pixel std) from a local folder, once per process and device."""
    from transformers import CLIPModel, CLIPTokenizer

    key = (str(folder), str(device))
    with _LOCK:
        if key not in _CLIP:
            try:
                model = CLIPModel.from_pretrained(folder, local_files_only=True)
                tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as e:
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise ModelLoadError(f"{folder}: not a CLIPModel folder with its tokenizer ({first})") from e
            mean, std = CLIP_MEAN, CLIP_STD
            pre = folder / "preprocessor_config.json"  # a saved processor states its own normalisation
            if pre.is_file():
                cfg = json.loads(pre.read_text(encoding="utf-8"))
                mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
            _CLIP[key] = (model.to(device).eval().requires_grad_(False), tokenizer, mean, std)
        return _CLIP[key]


def _clip_pixels(images: np.ndarray, size: int, mean: tuple, std: tuple,
                 device: str | torch.device) -> torch.Tensor:
    """CLIP's preprocessing without CLIPImageProcessor (it needs torchvision here): shortest side to ``size``
    (bicubic, antialiased, on uint8 as PIL does it: within one level of PIL's result), centre crop ``size`` x
    ``size``, CLIP mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True)  # uint8 in, uint8 out
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size].to(device).float() / 255.0
    mean_t, std_t = (torch.tensor(v, device=device)[None, :, None, None] for v in (mean, std))
    return (x - mean_t) / std_t


@torch.no_grad()
def clip_score(images: np.ndarray, prompts: list[str], weights: MetricWeights,
               device: str | torch.device = "cpu") -> tuple[float, float]:
    """CLIP-score (Hessel et al. 2021, torchmetrics' scale): 100 * max(cos(image, prompt), 0) per image, its mean
    and std over the images. torchmetrics clamps the mean instead; the two agree whenever every cosine is >= 0."""
    _check_images("images", images)
    if len(prompts) != len(images):
        raise ValueError(f"CLIP-score needs one prompt per image: {len(images)} images, {len(prompts)} prompts")
    model, tokenizer, mean, std = _load_clip(weights.path_for("clip"), device)
    size = model.config.vision_config.image_size
    max_len = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    scores = []
    for s in range(0, len(images), BATCH):
        text = tokenizer(list(prompts[s:s + BATCH]), padding=True, truncation=True, max_length=max_len,
                         return_tensors="pt").to(device)
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    pixel_values=_clip_pixels(images[s:s + BATCH], size, mean, std, device))
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        scores.append(100 * (img * txt).sum(-1).clamp(min=0).double().cpu())
    if not scores:
        raise ValueError("CLIP-score needs at least one image")
    all_scores = torch.cat(scores)
    return float(all_scores.mean()), float(all_scores.std(unbiased=False))



# ------------------------------------------------------------------------------------------------ a run's scores
REFERENCE_IMAGES = "reference-images"  # in the weights folder: the real set for FID/KID of a model outside emoji
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def configured_weights() -> MetricWeights:
    """The folder ``--metric-weights`` named (``$STUDIO_METRIC_WEIGHTS``), or none: every metric then says why it
    is unavailable."""
    folder = os.environ.get("STUDIO_METRIC_WEIGHTS")
    return MetricWeights.from_dir(folder) if folder else MetricWeights()


def reference_images(weights: MetricWeights, size: tuple[int, int]) -> np.ndarray | None:
    """The user's real set for FID/KID (``DIR/reference-images/*.png|jpg|webp``) as uint8 RGB at ``size``
    (height, width), or None when the folder has none."""
    from PIL import Image

    folder = weights.folder / REFERENCE_IMAGES if weights.folder else None
    if folder is None or not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        return None
    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)))
    return np.stack(out)


def run_scores(weights: MetricWeights, images: np.ndarray, reference: np.ndarray, prompts: list[str],
               device: str = "cpu", dist: np.ndarray | None = None,
               real: np.ndarray | None = None) -> tuple[dict, list[str]]:
    """A run's standard metrics from local weights, and a note for each one left out: LPIPS (alex) of its images
    against the same-seed reference, CLIP-score of its images against their prompts, and FID/KID of its
    distribution set ``dist`` against the real set ``real`` (when both are given)."""
    if weights.folder is None:
        return {}, ["LPIPS, FID and CLIP-score unavailable: no --metric-weights folder (see the README; nothing is "
                    "downloaded)"]
    out: dict = {}
    notes = []
    why = weights.unavailable_reason("lpips")
    if why or min(images.shape[1:3]) < LPIPS_MIN_SIZE["alex"]:
        notes.append(why or f"LPIPS unavailable: images under {LPIPS_MIN_SIZE['alex']} px a side")
    else:
        d = lpips(images, reference, weights, "alex", device)
        out.update(lpips=float(d.mean()), lpips_std=float(d.std()),
                   lpips_method=f"LPIPS (Zhang et al. 2018), AlexNet {weights.alexnet.name}, torchmetrics linear heads")
    why = weights.unavailable_reason("clip")
    if why:
        notes.append(why)
    else:
        mean, std = clip_score(images, prompts, weights, device)
        out.update(clip_score=mean, clip_score_std=std, clip_method=f"CLIP-score (Hessel et al. 2021), {weights.clip}")
    if dist is not None:
        why = weights.unavailable_reason("fid")
        if why:
            notes.append(why)
        elif real is None:
            notes.append(f"FID unavailable for this model: put its real set in {weights.folder / REFERENCE_IMAGES}")
        else:
            out.update(fid_kid(real, dist, weights, device))
    return out, notes
