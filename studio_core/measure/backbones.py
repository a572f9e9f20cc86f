"""Standard backbones for LPIPS and FID, defined here with torchvision's exact state-dict names and shapes, so
torchvision's own weight files load into them with ``load_state_dict(strict=True)``. torchvision itself is never
imported (its wheels here are CUDA builds that fail with the CPU torch), and nothing is ever downloaded.

- ``alexnet``: AlexNet's ``features`` (torchvision's single-tower variant, Krizhevsky 2014), tapped after
  relu1..relu5 for LPIPS (alex).
- ``vgg16``: VGG16's ``features`` (Simonyan & Zisserman 2015), tapped after relu1_2, relu2_2, relu3_3, relu4_3
  and relu5_3 for LPIPS (vgg).
- ``inception_v3``: Inception v3 (Szegedy et al. 2016) up to ``Mixed_7c`` and the average pool: the 2048-d
  pool features that FID and KID compare.

``load_backbone(kind, path)`` keeps only the keys the part uses (AlexNet/VGG: ``features.*``; Inception: all but
``fc.*`` and ``AuxLogits.*``), refuses a file that does not fit with a one-line ``ModelLoadError`` naming the
file and the first mismatch, and loads each file once per process (eval mode, no gradients).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from studio_core.errors import ModelLoadError

__all__ = ["BACKBONES", "Backbone", "InceptionV3Features", "TappedFeatures", "alexnet_features", "load_backbone",
           "vgg16_features"]


class TappedFeatures(nn.Module):
    """A torchvision ``features`` stack (kept under that name for the keys) that returns the activations
    after each layer listed in ``taps``, and stops after the last one."""

    def __init__(self, layers: list[nn.Module], taps: tuple[int, ...]):
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def alexnet_features() -> TappedFeatures:
    """torchvision's ``AlexNet().features``, tapped at relu1..relu5 (indices 1, 4, 7, 9, 11) as LPIPS does."""
    layers = [nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
              nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
              nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
              nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
              nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2)]
    return TappedFeatures(layers, taps=(1, 4, 7, 9, 11))


VGG16_CHANNELS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16_features() -> TappedFeatures:
    """torchvision's ``vgg16().features`` (configuration D, no batch norm), tapped at the last ReLU before each
    max-pool: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (indices 3, 8, 15, 22, 29)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CHANNELS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    taps = tuple(i - 1 for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d))
    return TappedFeatures(layers, taps=taps)


# ------------------------------------------------------------------------------------------------ Inception v3
class _ConvBN(nn.Module):
    """Conv (no bias) + batch norm (eps 0.001) + ReLU: torchvision's ``BasicConv2d``, keys ``conv.*``, ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


# A block is a list of branches, concatenated on channels. A branch is (pool, steps): pool is None, "avg" (3x3,
# stride 1, pad 1, before the convs) or "max" (3x3, stride 2, no convs); a step is one conv
# (name, c_in, c_out, kernel, stride, padding) or a list of convs applied side by side and concatenated.
ConvSpec = tuple[str, int, int, int | tuple[int, int], int, int | tuple[int, int]]
Branch = tuple[str | None, list[ConvSpec | list[ConvSpec]]]


def _c(name: str, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
       padding: int | tuple[int, int] = 0) -> ConvSpec:
    return (name, c_in, c_out, kernel, stride, padding)


def _block_a(c: int, pool_features: int) -> list[Branch]:
    """35x35 block: 1x1, 5x5, double 3x3 and pooled 1x1 branches (torchvision's InceptionA)."""
    return [(None, [_c("branch1x1", c, 64, 1)]),
            (None, [_c("branch5x5_1", c, 48, 1), _c("branch5x5_2", 48, 64, 5, padding=2)]),
            (None, [_c("branch3x3dbl_1", c, 64, 1), _c("branch3x3dbl_2", 64, 96, 3, padding=1),
                    _c("branch3x3dbl_3", 96, 96, 3, padding=1)]),
            ("avg", [_c("branch_pool", c, pool_features, 1)])]


def _block_b(c: int) -> list[Branch]:
    """35 -> 17 reduction (torchvision's InceptionB)."""
    return [(None, [_c("branch3x3", c, 384, 3, stride=2)]),
            (None, [_c("branch3x3dbl_1", c, 64, 1), _c("branch3x3dbl_2", 64, 96, 3, padding=1),
                    _c("branch3x3dbl_3", 96, 96, 3, stride=2)]),
            ("max", [])]


def _block_c(c: int, c7: int) -> list[Branch]:
    """17x17 block with factorised 7x7 convolutions (torchvision's InceptionC)."""
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of a 1x7 and a 7x1 conv
    return [(None, [_c("branch1x1", c, 192, 1)]),
            (None, [_c("branch7x7_1", c, c7, 1), _c("branch7x7_2", c7, c7, row[0], padding=row[1]),
                    _c("branch7x7_3", c7, 192, col[0], padding=col[1])]),
            (None, [_c("branch7x7dbl_1", c, c7, 1), _c("branch7x7dbl_2", c7, c7, col[0], padding=col[1]),
                    _c("branch7x7dbl_3", c7, c7, row[0], padding=row[1]),
                    _c("branch7x7dbl_4", c7, c7, col[0], padding=col[1]),
                    _c("branch7x7dbl_5", c7, 192, row[0], padding=row[1])]),
            ("avg", [_c("branch_pool", c, 192, 1)])]


def _block_d(c: int) -> list[Branch]:
    """17 -> 8 reduction (torchvision's InceptionD)."""
    return [(None, [_c("branch3x3_1", c, 192, 1), _c("branch3x3_2", 192, 320, 3, stride=2)]),
            (None, [_c("branch7x7x3_1", c, 192, 1), _c("branch7x7x3_2", 192, 192, (1, 7), padding=(0, 3)),
                    _c("branch7x7x3_3", 192, 192, (7, 1), padding=(3, 0)),
                    _c("branch7x7x3_4", 192, 192, 3, stride=2)]),
            ("max", [])]


def _block_e(c: int) -> list[Branch]:
    """8x8 block whose 3x3 branches end in side-by-side 1x3 and 3x1 convs (torchvision's InceptionE)."""
    def split(a: str, b: str) -> list[ConvSpec]:
        return [_c(a, 384, 384, (1, 3), padding=(0, 1)), _c(b, 384, 384, (3, 1), padding=(1, 0))]

    return [(None, [_c("branch1x1", c, 320, 1)]),
            (None, [_c("branch3x3_1", c, 384, 1), split("branch3x3_2a", "branch3x3_2b")]),
            (None, [_c("branch3x3dbl_1", c, 448, 1), _c("branch3x3dbl_2", 448, 384, 3, padding=1),
                    split("branch3x3dbl_3a", "branch3x3dbl_3b")]),
            ("avg", [_c("branch_pool", c, 192, 1)])]


class _Mixed(nn.Module):
    """One Inception block built from its branch plan; each conv registered under torchvision's name."""

    def __init__(self, branches: list[Branch]):
        super().__init__()
        self.plan = branches
        for _, steps in branches:
            for step in steps:
                for name, *args in step if isinstance(step, list) else [step]:
                    self.add_module(name, _ConvBN(*args))

    def _run(self, step: ConvSpec | list[ConvSpec], x: torch.Tensor) -> torch.Tensor:
        if isinstance(step, list):
            return torch.cat([self.get_submodule(s[0])(x) for s in step], 1)
        return self.get_submodule(step[0])(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for pool, steps in self.plan:
            if pool == "avg":
                h = F.avg_pool2d(x, 3, stride=1, padding=1)
            elif pool == "max":
                h = F.max_pool2d(x, 3, stride=2)
            else:
                h = x
            for step in steps:
                h = self._run(step, h)
            outs.append(h)
        return torch.cat(outs, 1)


class InceptionV3Features(nn.Module):
    """torchvision's ``Inception3`` up to ``Mixed_7c`` and the average pool: (N, 3, 299, 299) inputs in the
    google weights' range ([-1, 1], what ``transform_input=True`` makes of ImageNet-normalised pixels) to (N, 2048)
    pool features. The children are registered in the order they run."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = _Mixed(_block_a(192, pool_features=32))
        self.Mixed_5c = _Mixed(_block_a(256, pool_features=64))
        self.Mixed_5d = _Mixed(_block_a(288, pool_features=64))
        self.Mixed_6a = _Mixed(_block_b(288))
        self.Mixed_6b = _Mixed(_block_c(768, c7=128))
        self.Mixed_6c = _Mixed(_block_c(768, c7=160))
        self.Mixed_6d = _Mixed(_block_c(768, c7=160))
        self.Mixed_6e = _Mixed(_block_c(768, c7=192))
        self.Mixed_7a = _Mixed(_block_d(768))
        self.Mixed_7b = _Mixed(_block_e(1280))
        self.Mixed_7c = _Mixed(_block_e(2048))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x.flatten(1)


# ------------------------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class Backbone:
    """A backbone the studio can load from a torchvision file: how to build it, which of the file's keys it
    does not use, and the file name torchvision's weights come under (for messages)."""

    title: str
    build: Callable[[], nn.Module]
    unused_prefixes: tuple[str, ...]
    example_file: str


BACKBONES: dict[str, Backbone] = {
    "alexnet": Backbone("torchvision's AlexNet", alexnet_features, ("classifier.",), "alexnet-owt-7be5be79.pth"),
    "vgg16": Backbone("torchvision's VGG16", vgg16_features, ("classifier.",), "vgg16-397923af.pth"),
    "inception_v3": Backbone("torchvision's Inception v3", InceptionV3Features, ("fc.", "AuxLogits."),
                             "inception_v3_google-0cc3c7bd.pth"),
}

_LOADED: dict[tuple[str, str, str], nn.Module] = {}
_LOCK = threading.Lock()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``'d state dict (weights only: no code in the file is run)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file (truncated, not a pickle, code in it) gets one clear line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ModelLoadError(f"{path.name}: not a readable PyTorch state dict ({type(e).__name__}: {first})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path.name}: not a state dict of tensors (found {type(state).__name__})")
    return state


def _first_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``found`` from loading strictly into a module whose state is ``expected``, or None."""
    missing = [k for k in expected if k not in found]
    if missing:
        return f"{len(missing)} keys missing, e.g. {missing[0]}"
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        return f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}"
    for k, v in expected.items():
        if found[k].shape != v.shape:
            return f"{k} has shape {tuple(found[k].shape)}, expected {tuple(v.shape)}"
    return None


def load_backbone(kind: str, path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The ``kind`` backbone (a key of ``BACKBONES``) with the weights of torchvision's state-dict file
    ``path``, in eval mode without gradients; loaded once per process, file and device."""
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone {kind!r}; known: {', '.join(BACKBONES)}")
    path = Path(path).resolve()
    key = (kind, str(path), str(device))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        spec = BACKBONES[kind]
        model = spec.build()
        expected = model.state_dict()
        state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(spec.unused_prefixes)}
        for k in expected:  # files saved before BatchNorm counted its batches lack these; eval never reads them
            if k.endswith("num_batches_tracked") and k not in state:
                state[k] = torch.zeros((), dtype=torch.long)
        problem = _first_mismatch(expected, state)
        if problem:
            raise ModelLoadError(f"{path.name} does not fit {spec.title} ({problem}); expected torchvision's state "
                                 f"dict, e.g. {spec.example_file}")
        model.load_state_dict(state, strict=True)
        model = model.to(device).eval().requires_grad_(False)
        _LOADED[key] = model
        return model
