"""The studio's own feature network for the emoji domain: a small CNN classifier over every emoji, whose
penultimate layer is the feature space of FD-emoji / KID-emoji / precision-recall, whose stage outputs give
the perceptual distance, and whose class head gives a classifier-based prompt fidelity.

Like the Fréchet LeNet distance on MNIST, it is a domain network: its figures are meaningful between runs
of the emoji models and are **not comparable with published FID or LPIPS** (those use Inception v3 and
AlexNet on ImageNet). It is trained by ``python -m studio_core.embedded.training features`` and shipped in
``studio_core/embedded/emoji-features/`` (weights in fp16, its card generated from its reports).

Input: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [0, 1], any size; resized (area) to the
network's 32 px before the stem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FEATURE_NET_DIR", "EmojiFeatureNet", "FeatureNetConfig", "as_input", "load_feature_net"]

FEATURE_NET_DIR = Path(__file__).resolve().parents[1] / "embedded" / "emoji-features"


@dataclass(frozen=True)
class FeatureNetConfig:
    """The architecture: conv stages (two 3x3 conv + BN + ReLU each, then 2x2 max-pool), global average
    pool to the feature vector, a linear class head."""

    n_classes: int
    channels: tuple[int, ...] = (32, 64, 128, 192)
    image_size: int = 32
    captions: list[str] = field(default_factory=list, compare=False, repr=False)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def as_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1] -> float (N, 3, size, size) in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float() / 255.0
    x = x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear",
                          align_corners=None if x.shape[-1] > size else False)
    return x * 2 - 1


class EmojiFeatureNet(nn.Module):
    """VGG-style classifier; ``features`` = penultimate layer, ``stages`` = each stage's output."""

    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        chans = (3, *config.channels)
        self.stages = nn.ModuleList(_block(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Linear(config.channels[-1], config.n_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.channels[-1]

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's activations (before its pooling) for inputs already in [-1, 1] at 32 px."""
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(x)
            if i < len(self.stages) - 1:
                x = F.max_pool2d(x, 2)
        return outs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (global average pool of the last stage) of prepared inputs."""
        return self.stage_outputs(x)[-1].mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor, batch: int = 256) -> torch.Tensor:
        """(N, feature_dim) float64 penultimate features of images (see ``as_input``)."""
        self.eval()
        out = [self.embed(as_input(images[i:i + batch], self.config.image_size)) for i in range(0, len(images), batch)]
        return torch.cat(out).double() if out else torch.zeros(0, self.feature_dim, dtype=torch.float64)

    @torch.no_grad()
    def logits(self, images: np.ndarray | torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self(as_input(images[i:i + batch], self.config.image_size))
                          for i in range(0, len(images), batch)])

    def save(self, folder: Path, extra: dict | None = None) -> None:
        """``config.json`` (architecture and class captions) and ``model.safetensors`` (fp16)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        cfg["channels"] = list(cfg["channels"])
        cfg.update(extra or {})
        (folder / "config.json").write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
                 for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))


_LOADED: dict[str, EmojiFeatureNet] = {}


def load_feature_net(folder: str | Path = FEATURE_NET_DIR) -> EmojiFeatureNet:
    """The network saved in ``folder`` (fp32 in memory, eval mode), loaded once per process."""
    from safetensors.torch import load_file

    folder = Path(folder).resolve()
    key = str(folder)
    if key in _LOADED:
        return _LOADED[key]
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not (cfg_path.is_file() and weights.is_file()):
        raise FileNotFoundError(f"no emoji feature network in {folder} (config.json and model.safetensors "
                                "expected): train one with `python -m studio_core.embedded.training features`")
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    config = FeatureNetConfig(n_classes=raw["n_classes"], channels=tuple(raw["channels"]),
                              image_size=raw["image_size"], captions=raw.get("captions", []))
    net = EmojiFeatureNet(config)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()})
    _LOADED[key] = net.eval()
    return net
