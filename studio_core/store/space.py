"""Disk space of a study folder: how much a run may write, a refusal before it starts, and write errors.

A run writes its images (PNG files named by their hash), the images of its reference when none is stored
yet, and a few database rows. ``needed_bytes`` bounds that from above by each image's raw RGB size (a PNG
of 8-bit RGB pixels is at most that plus its row filter bytes and a few headers), a fixed allowance per row,
and ``MARGIN_BYTES`` on top, so the write-ahead log, SQLite's temporary pages and the other processes on the
disk have room. ``check_free_space`` refuses a run that would not fit with ``NoSpace`` before any row is
written (like a bad spec, nothing is recorded).

A write that fails anyway (the disk filled up during the run, a quota, a failing disk) is recognised by
``is_write_error`` (``is_disk_full`` for the full-disk kinds), whether it comes from Python's file calls
(``OSError`` with ``errno``) or from SQLite (``SQLITE_FULL``, ``SQLITE_IOERR``, ``SQLITE_READONLY``), and
``write_error_reason`` says it in words a user can act on.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from studio_core.errors import NoSpace

__all__ = ["MARGIN_BYTES", "ROW_BYTES", "check_free_space", "is_disk_full", "is_write_error", "needed_bytes",
           "size_text", "write_error_reason"]

MARGIN_BYTES = 32 * 2**20  # kept free beyond a run's own worst case: the WAL, SQLite's temp pages, other writers
ROW_BYTES = 64 * 2**10  # a run or reference row with its JSON columns, and its index entries, is far smaller
_PNG_OVERHEAD = 1024  # signature, IHDR, IEND and zlib block headers of one PNG, rounded up

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_WRITE_ERRNOS = _FULL_ERRNOS | {errno.EIO, errno.EROFS}
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL: "database or disk is full" (also a max_page_count reached)
_SQLITE_WRITE_CODES = {_SQLITE_FULL, 10, 8}  # SQLITE_IOERR, SQLITE_READONLY (a folder remounted read-only)


def size_text(n_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1, one decimal: '1.2 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} B" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def _png_bound(height: int, width: int) -> int:
    """The most bytes one (height, width) RGB PNG takes: raw pixels, a filter byte per row, headers."""
    raw = height * (3 * width + 1)
    return raw + raw // 1000 + _PNG_OVERHEAD  # zlib's stored blocks add 5 bytes per 32 KiB at worst


def needed_bytes(n_images: int, height: int, width: int, reference_missing: bool) -> int:
    """The most a run of ``n_images`` at ``height`` x ``width`` px writes to its study folder, plus
    ``MARGIN_BYTES``: its images, its reference's images when none is stored yet, and its rows."""
    images = n_images * (2 if reference_missing else 1)
    rows = 1 + images + (1 if reference_missing else 0)  # the run, one index row per image, the reference
    return images * _png_bound(height, width) + rows * ROW_BYTES + MARGIN_BYTES


def check_free_space(data_dir: str | Path, needed: int, what: str = "this run",
                     reference_missing: bool = False) -> int:
    """The free bytes of ``data_dir``'s disk; ``NoSpace`` naming the folder, what is free and what ``what``
    needs when that is less than ``needed``."""
    data_dir = Path(data_dir)
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        parts = "images, its reference's images" if reference_missing else "images"
        raise NoSpace(f"not enough free space for this run: the study folder {data_dir} has {size_text(free)} "
                      f"free, and {what} needs up to {size_text(needed)} ({parts} and rows, plus a "
                      f"{size_text(MARGIN_BYTES)} margin). Free some space or use another study folder "
                      "(--data-dir)")
    return free


def _causes(exc: BaseException):
    """``exc`` and the exceptions it was raised from or during, innermost last, each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _sqlite_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of a sqlite3 error (the extended code's low byte), or None."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return None if code is None else code & 0xFF


def is_disk_full(exc: BaseException) -> bool:
    """A write refused for lack of space: ``ENOSPC`` or ``EDQUOT`` (a quota), or SQLite's ``SQLITE_FULL``
    (of the disk, or of the database's ``max_page_count``); also when it caused ``exc``."""
    return any((isinstance(e, OSError) and e.errno in _FULL_ERRNOS) or _sqlite_code(e) == _SQLITE_FULL
               for e in _causes(exc))


def is_write_error(exc: BaseException) -> bool:
    """A write the study folder's disk refused: full (``is_disk_full``), an I/O error (``EIO``,
    ``SQLITE_IOERR``) or a file system that became read-only (``EROFS``, ``SQLITE_READONLY``)."""
    return any((isinstance(e, OSError) and e.errno in _WRITE_ERRNOS) or _sqlite_code(e) in _SQLITE_WRITE_CODES
               for e in _causes(exc))


def _cause_text(exc: BaseException) -> str:
    """The operating system's words for the write error ('No space left on device'), else SQLite's."""
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return e.strerror or os.strerror(e.errno)
    for e in _causes(exc):
        if _sqlite_code(e) in _SQLITE_WRITE_CODES:
            return str(e)
    return f"{type(exc).__name__}: {exc}"


def _where(exc: BaseException, data_dir: Path) -> str:
    """'the study folder X', or the other folder whose file could not be written (a cache, a temp file)."""
    for e in _causes(exc):
        name = getattr(e, "filename", None) if isinstance(e, OSError) else None
        if name:
            path = Path(os.fsdecode(name)).resolve()
            if path != data_dir and data_dir not in path.parents:
                return f"the folder {path.parent}"
    return f"the study folder {data_dir}"


def write_error_reason(exc: BaseException, data_dir: str | Path) -> str:
    """The recorded reason of a run cut off by a write error: which folder, the system's words, what to do."""
    data_dir = Path(data_dir).resolve()
    where = _where(exc, data_dir)
    if is_disk_full(exc):
        return (f"the disk of {where} is full ({_cause_text(exc)}) while writing the run's images/rows; "
                "free space, and run again")
    return (f"{where} could not be written ({_cause_text(exc)}) while writing the run's images/rows; check the "
            "disk (a failing or read-only file system), and run again")
