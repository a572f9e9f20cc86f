"""Whether this user may write a study: a folder it cannot write is not a damaged one, and is told apart
before SQLite's own words for it ("unable to open database file", "attempt to write a readonly database")
could be read as damage.

A writable study needs its folder (SQLite adds ``-wal`` and ``-shm`` files there, the store adds image
files) and each of its files that exists: ``studio.db``, ``studio.db-wal``, ``studio.db-shm`` and
``images/``. ``os.access`` answers for this user, and for a read-only mount; root passes any permission
bits, as it writes past them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["cannot_open", "not_writable_reason", "unreadable_reason"]


def not_writable_reason(data_dir: str | Path) -> str | None:
    """Why this user cannot write the study in ``data_dir`` (naming the folder or file, and what to do),
    or None when it can, or when the folder does not exist yet (creating it reports its own error)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return None
    db = data_dir / "studio.db"
    parts = [data_dir, db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), data_dir / "images"]
    blocked = [p for p in parts if p.exists() and not os.access(p, os.W_OK)]
    if not blocked:
        return None
    what = f"study folder {data_dir}" if blocked[0] == data_dir else f"{blocked[0].name} in study folder {data_dir}"
    return (f"{what} is not writable by this user: browse the study read-only with "
            f"`python app.py --demo {data_dir}`, or give this user write permission to the folder and its files")


def cannot_open(db_path: Path, exc: sqlite3.Error, *, writing: bool) -> str:
    """Why SQLite could not open or read the study at ``db_path``, in one line: for a writer, the folder or
    file this user cannot write when that is the cause; else SQLite's words and, for a damaged file or one
    that is not a database at all, what to do."""
    if writing and (reason := not_writable_reason(db_path.parent)):
        return reason
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    what = f"cannot {'open' if writing else 'read'} {db_path}: {exc}"
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return f"{what} (the file is damaged, or is not a study database): restore it from a copy"
    return what


def unreadable_reason(db_path: Path, exc: BaseException | None) -> str | None:
    """``cannot_open``'s line for a reader when an SQLite error is behind ``exc`` (pandas wraps it in its own
    ``DatabaseError``), else None: for callers outside the store, which never import sqlite3."""
    while exc is not None and not isinstance(exc, sqlite3.DatabaseError):
        exc = exc.__cause__ or exc.__context__
    return None if exc is None else cannot_open(db_path, exc, writing=False)
