"""The embedded model's training data: Noto Color Emoji glyphs captioned with their CLDR names.

Deterministic builder. Every fully-qualified emoji the ``emoji`` package lists is rendered with the
Debian font ``fonts-noto-color-emoji`` (SIL OFL 1.1) on white; glyphs the font cannot draw (the
".notdef" box, or a sequence the font has no ligature for, which lays out as several glyphs) are
dropped, and identical renders are deduplicated keeping the first in Unicode order. Captions are the
CLDR short names from Unicode's ``emoji-test.txt`` (Debian package ``unicode-data``), falling back to
the ``emoji`` package's English name where that file has no entry.

A fixed ~5% of captions is held out of training: single-skin-tone variants chosen by a stable hash,
so the base emoji and its other tones stay in training and the held-out set measures composition.

``family_of`` and ``caption_kind`` group captions: an emoji with its skin-tone variants (for the
training's sampling weights), and people / flags / the rest (for the fidelity breakdown).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "EMOJI_FONT",
    "EMOJI_TEST_FILE",
    "EmojiDataset",
    "build_dataset",
    "caption_for",
    "caption_kind",
    "family_of",
    "list_emoji",
    "load_or_build",
    "render_emoji",
]

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_FILE = Path("/usr/share/unicode/emoji/emoji-test.txt")
_FONT_PIXEL_SIZE = 109  # the only bitmap strike in Noto Color Emoji (CBDT)
_SKIN_TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
_SINGLE_TONE = re.compile(r": (%s) skin tone$" % "|".join(re.escape(t) for t in _SKIN_TONES))
HELD_OUT_PERCENT = 13  # of single-skin-tone captions; about 5% of all captions
DATASET_VERSION = 1


@dataclass(frozen=True)
class EmojiDataset:
    """Rendered images (N, H, W, 3) uint8 with their captions, characters and split."""

    images: np.ndarray
    captions: list[str]
    chars: list[str]
    held_out: np.ndarray  # bool (N,)
    dropped: dict[str, int]

    @property
    def train_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.held_out)

    @property
    def held_out_indices(self) -> np.ndarray:
        return np.flatnonzero(self.held_out)

    def __len__(self) -> int:
        return len(self.captions)


def _cldr_names(path: Path = EMOJI_TEST_FILE) -> dict[str, str]:
    names: dict[str, str] = {}
    if not path.exists():
        return names
    for line in path.read_text(encoding="utf-8").splitlines():
        if "; fully-qualified" not in line or line.startswith("#"):
            continue
        codes, rest = line.split(";", 1)
        char = "".join(chr(int(c, 16)) for c in codes.split())
        # "fully-qualified     # 😀 E1.0 grinning face"
        names[char] = rest.split("#", 1)[1].strip().split(" ", 2)[2]
    return names


def caption_for(char: str, english_name: str, cldr: dict[str, str]) -> str:
    """CLDR short name of an emoji, or the emoji package's name made to read like one."""
    if char in cldr:
        return cldr[char]
    name = english_name.strip(":").replace("_", " ")
    tones = re.findall(r"(%s) skin tone" % "|".join(_SKIN_TONES), name)
    if tones:
        base = re.sub(r"\s*(%s) skin tone" % "|".join(_SKIN_TONES), "", name).strip()
        name = f"{base}: " + ", ".join(f"{t} skin tone" for t in tones)
    if all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in char):
        name = f"flag: {name}"
    return name


def list_emoji() -> list[tuple[str, str]]:
    """(character, caption) for every fully-qualified emoji, in the emoji package's order."""
    import emoji

    cldr = _cldr_names()
    fully_qualified = emoji.STATUS["fully_qualified"]
    out = []
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != fully_qualified:
            continue
        out.append((char, unicodedata.normalize("NFC", caption_for(char, data["en"], cldr))))
    # Unicode order (code points), so the dataset does not depend on dict ordering in the package
    out.sort(key=lambda pair: [ord(c) for c in pair[0]])
    return out


class _Renderer:
    def __init__(self, size: int):
        from PIL import ImageFont, features

        if not EMOJI_FONT.exists():
            raise FileNotFoundError(
                f"emoji font not found at {EMOJI_FONT}: install the Debian package fonts-noto-color-emoji"
            )
        if not features.check("raqm"):
            raise RuntimeError("Pillow lacks libraqm: emoji ZWJ sequences cannot be shaped")
        self.size = size
        self.font = ImageFont.truetype(str(EMOJI_FONT), _FONT_PIXEL_SIZE, layout_engine=ImageFont.Layout.RAQM)
        self.glyph_box = self.font.getbbox("\U0001F600")  # one glyph's advance box

    def classify(self, char: str) -> str:
        """'ok', 'placeholder' (nothing drawn) or 'not_single_glyph' (no ligature in the font)."""
        x0, y0, x1, y1 = self.font.getbbox(char)
        if x0 >= x1 or y0 >= y1:
            return "placeholder"
        return "ok" if (x0, y0, x1, y1) == self.glyph_box else "not_single_glyph"

    def render(self, char: str) -> np.ndarray:
        from PIL import Image, ImageDraw

        w, h = self.glyph_box[2], self.glyph_box[3]
        canvas = Image.new("RGBA", (w, h), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((0, 0), char, font=self.font, embedded_color=True)
        # fit the glyph's square box into size x size on white, keeping its aspect ratio
        side = max(w, h)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(canvas, ((side - w) // 2, (side - h) // 2))
        small = square.convert("RGB").resize((self.size, self.size), Image.Resampling.LANCZOS)
        return np.asarray(small, dtype=np.uint8)


def render_emoji(char: str, size: int = 64) -> np.ndarray:
    """One emoji as a (size, size, 3) uint8 array on white."""
    return _Renderer(size).render(char)


def _is_held_out(caption: str) -> bool:
    if not _SINGLE_TONE.search(caption):
        return False
    digest = hashlib.sha256(caption.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def build_dataset(size: int = 64, limit: int | None = None) -> EmojiDataset:
    """Render, filter, deduplicate and split. ``limit`` takes the first N emoji (for tests)."""
    renderer = _Renderer(size)
    pairs = list_emoji()
    if limit is not None:
        pairs = pairs[:limit]
    dropped = {"not_single_glyph": 0, "placeholder": 0, "duplicate_render": 0}
    seen: dict[bytes, int] = {}
    images, captions, chars = [], [], []
    for char, caption in pairs:
        verdict = renderer.classify(char)
        if verdict != "ok":
            dropped[verdict] += 1
            continue
        img = renderer.render(char)
        key = hashlib.sha256(img.tobytes()).digest()
        if key in seen:
            dropped["duplicate_render"] += 1
            continue
        seen[key] = len(images)
        images.append(img)
        captions.append(caption)
        chars.append(char)
    held_out = np.array([_is_held_out(c) for c in captions], dtype=bool)
    return EmojiDataset(np.stack(images), captions, chars, held_out, dropped)


def _cache_key(size: int) -> str:
    import emoji
    import PIL

    parts = [DATASET_VERSION, size, emoji.__version__, PIL.__version__, EMOJI_FONT.stat().st_size]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


_BUILT: dict[int, EmojiDataset] = {}  # size -> the data set rendered in this process


def load_or_build(cache_dir: str | Path, size: int = 64) -> EmojiDataset:
    """Build once and keep as .npz in cache_dir (keyed by font, package versions and size); a process that
    rendered it already (for another study's cache) reuses that rendering."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"emoji{size}-{_cache_key(size)}.npz"
    if path.exists():
        if size in _BUILT and _BUILT[size].captions:  # this process already holds it (read or rendered)
            return _BUILT[size]
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        ds = EmojiDataset(z["images"], meta["captions"], meta["chars"], z["held_out"], meta["dropped"])
        return _BUILT.setdefault(size, ds)
    ds = _BUILT.get(size) or _BUILT.setdefault(size, build_dataset(size))  # rendered once per process
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"captions": ds.captions, "chars": ds.chars, "dropped": ds.dropped})
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, images=ds.images, held_out=ds.held_out, meta=np.array(meta))
    tmp.replace(path)
    return ds


def family_of(caption: str) -> str:
    """The caption with its skin-tone modifiers removed: "man scientist: dark skin tone" -> "man scientist"."""
    return _TONE.sub("", caption).strip(" :,")


def caption_kind(caption: str) -> str:
    """Coarse kind used to break fidelity down: people with skin tones, flags, everything else."""
    if _TONE.search(caption):
        return "skin-tone variant"
    return "flag" if caption.startswith("flag") else "other"


_TONE = re.compile(r"[:,]? ?(light|medium-light|medium|medium-dark|dark) skin tone")
