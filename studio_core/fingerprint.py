"""The model files' fingerprint: a hash of the content of every file the loader reads.

A run and its reference are only comparable when they come from the same weights, so the fingerprint
(part of every reference key and of the pipeline cache's key) hashes the files themselves, not their
size and time: ``model_index.json`` and, in each component folder it lists, every weights file
(``models.WEIGHT_SUFFIXES``: .safetensors, .bin, .pt, .ckpt), config and tokenizer file.

Hashing is SHA-256, streamed; a file's digest is kept in this process, keyed by its resolved path and
checked against (size, mtime_ns, ctime_ns, inode) before reuse. The ctime is what catches an edit that
keeps the size and sets the old mtime back (``os.utime`` cannot set ctime); the inode catches a file
replaced by rename. A file changed less than ``RACY_S`` seconds before it was hashed is hashed again next
time (git's "racy clean" rule: a coarse file-system clock can give an edit right after the hash the same
times). Nothing is written to disk: a new process hashes each file once (about 1.3 s per GB read from
the page cache, measured; a cold disk is slower), then a call costs one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from studio_core.errors import ModelLoadError
from studio_core.models import WEIGHT_SUFFIXES

__all__ = ["RACY_S", "file_sha256", "model_files", "model_fingerprint"]

RACY_S = 2.0  # a file changed this recently is not trusted to stay cached (coarse file-system clocks)
_READ_CHUNK = 1 << 20
_LOADER_SUFFIXES = WEIGHT_SUFFIXES + (".json", ".txt", ".model")  # weights, configs, tokenizer vocabularies
_DIGESTS: dict[str, tuple[tuple[int, int, int, int], str]] = {}  # resolved path -> (stat key, SHA-256)
_LOCK = threading.Lock()


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content, from this process's cache while its size, times and inode are unchanged."""
    real = os.path.realpath(path)  # a Hugging Face snapshot links each file to a blob
    key = _stat_key(os.stat(real))
    with _LOCK:
        cached = _DIGESTS.get(real)
    if cached and cached[0] == key:
        return cached[1]
    started_ns = time.time_ns()
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
    after = _stat_key(os.stat(real))
    if after == key and max(key[1], key[2]) < started_ns - int(RACY_S * 1e9):
        with _LOCK:
            _DIGESTS[real] = (key, digest.hexdigest())
    return digest.hexdigest()


def model_files(folder: str | Path, index: dict) -> list[Path]:
    """The files the loader reads from a pipeline folder: model_index.json and, in each component folder
    that ``index`` (its model_index.json) lists, the weights, config and tokenizer files, sorted."""
    folder = Path(folder)
    files = [folder / "model_index.json"]
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or not spec or spec[0] is None:
            continue
        sub = folder / name
        if sub.is_dir():
            files += sorted(p for p in sub.iterdir()
                            if p.name.endswith(_LOADER_SUFFIXES) and not p.name.startswith(".") and p.is_file())
    return files


def model_fingerprint(folder: str | Path, index: dict) -> str:
    """16 hex digits of SHA-256 over every loader file's relative path and content hash; ``ModelLoadError``
    naming the file when one cannot be read."""
    folder = Path(folder)
    lines = []
    for p in model_files(folder, index):
        try:
            lines.append(f"{p.relative_to(folder).as_posix()}:{file_sha256(p)}\n")
        except OSError as exc:
            raise ModelLoadError(f"cannot read {p}: {exc.strerror or exc}") from None
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]
