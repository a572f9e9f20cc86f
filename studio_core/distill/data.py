"""Image-caption data for distillation: the embedded emoji set, or a user's own folder.

A user's folder takes one of two layouts (the first is Hugging Face's ``ImageFolder``, so a folder made for
``datasets.load_dataset("imagefolder", ...)`` or diffusers' text-to-image examples works as it is)::

    FOLDER/metadata.jsonl        one {"file_name": "cat.png", "text": "a cat on a sofa"} per line
    FOLDER/cat.png ...           (file_name relative to FOLDER; "caption" is taken where "text" is absent)

    FOLDER/cat.png + FOLDER/cat.txt    an image and a caption file of the same stem, for every image

Images (.png, .jpg, .jpeg, .webp, .bmp) are read as RGB, resized on their short side and centre-cropped to the
training size. Everything is checked before any work: a folder that is missing, has no images, an image with
no caption (or an empty one), a caption naming a file that is not there, or an image that cannot be read gives
``DataFolderError`` naming the folder, the file and what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio_core.errors import SpecError

__all__ = ["IMAGE_SUFFIXES", "DataFolderError", "DistillData", "emoji_data", "folder_data", "read_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAYOUT = ("metadata.jsonl with one {\"file_name\": ..., \"text\": ...} per line, or IMAGE.png with IMAGE.txt "
          "beside each image (docs/distillation.md)")


class DataFolderError(SpecError):
    """A data folder that cannot be trained on; the message names the folder, the file and what is missing."""

    def __init__(self, folder: Path | str, problem: str):
        super().__init__("--data", str(folder), f"{problem}; the layout is {LAYOUT}")


@dataclass(frozen=True)
class DistillData:
    """Training images (N, H, W, 3) uint8 with their captions, and where they came from."""

    images: np.ndarray
    captions: list[str]
    source: str  # "emoji (embedded data set, training split)" or the folder's path

    def __len__(self) -> int:
        return len(self.captions)


def emoji_data(cache_dir: str | Path, size: int, limit: int | None = None) -> DistillData:
    """The embedded model's training split at ``size`` px (its held-out captions stay held out)."""
    from studio_core.embedded.training.data import load_or_build

    ds = load_or_build(cache_dir, size)
    idx = ds.train_indices[:limit] if limit else ds.train_indices
    return DistillData(ds.images[idx], [ds.captions[i] for i in idx], "emoji (embedded data set, training split)")


def read_folder(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a data folder in either layout, checked; ``DataFolderError`` otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFolderError(folder, "no such folder" if not folder.exists() else "not a folder")
    meta = folder / "metadata.jsonl"
    pairs: list[tuple[Path, str]] = []
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFolderError(folder, f"metadata.jsonl line {n} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise DataFolderError(folder, f"metadata.jsonl line {n} has no \"file_name\"")
            text = row.get("text", row.get("caption"))
            if not isinstance(text, str) or not text.strip():
                raise DataFolderError(folder, f"metadata.jsonl line {n} ({row['file_name']}) has no caption "
                                              "(a non-empty \"text\")")
            path = folder / str(row["file_name"])
            if not path.is_file():
                raise DataFolderError(folder, f"metadata.jsonl line {n} names {row['file_name']}, which is not there")
            pairs.append((path, text.strip()))
    else:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataFolderError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) and no metadata.jsonl")
        for path in images:
            txt = path.with_suffix(".txt")
            if not txt.is_file():
                raise DataFolderError(folder, f"{path.name} has no caption: {txt.name} is missing")
            text = txt.read_text(encoding="utf-8").strip()
            if not text:
                raise DataFolderError(folder, f"{txt.name} is empty")
            pairs.append((path, text))
    if not pairs:
        raise DataFolderError(folder, "metadata.jsonl lists no images")
    return pairs


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFolderError(path.parent, f"{path.name} cannot be read as an image ({exc})") from None
    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                   Image.Resampling.LANCZOS)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def folder_data(folder: str | Path, size: int, limit: int | None = None) -> DistillData:
    """A user's image-caption folder at ``size`` px (see the module docstring for its layout)."""
    pairs = read_folder(folder)[:limit] if limit else read_folder(folder)
    images = np.stack([_load_image(p, size) for p, _ in pairs])
    return DistillData(images, [c for _, c in pairs], str(Path(folder).resolve()))
