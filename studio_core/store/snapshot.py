"""Private snapshots of a live study, so a read-only store (demo mode) never writes into the folder it serves.

SQLite reads a WAL database through the ``-shm`` index beside it: even a ``mode=ro`` connection creates
that file when it is missing and writes read marks into it. So when a WAL study has its ``-wal`` beside
it (a writer has the study open, or died with it open), the read-only store reads a snapshot instead:

1. ``studio.db`` and ``studio.db-wal`` (never ``-shm``) are copied into a private temporary folder
   (``tempfile``: mode 0700);
2. an ordinary connection there replays the log (SQLite's own recovery: whole commits only, in checksum
   order) into one rollback-journal file, checked with ``PRAGMA quick_check``;
3. that file's bytes are what the store's connection reads (``sqlite3.Connection.deserialize``), and the
   folder is removed at once: no copy of the study stays on disk, even if the reader is killed later.

A copy is torn when the writer restarts its log (new salts in its header) while it is taken: the log's
inode and header are compared before and after, and the copy is taken again (``SNAPSHOT_TRIES`` in all).
Frames appended meanwhile are harmless (recovery stops at the last whole commit), and so is a checkpoint
that writes the main file as it is copied: every page it writes comes from a frame the log copy, taken
after, still holds, and the replay writes that frame (or a newer one) over it. With no log, the main file
is the whole database and must not change while it is copied.

Following a writer: ``source_state`` is what each read compares (the files' inode, size and mtime, and the
``-shm`` index's header, which changes with every commit and checkpoint even within one tick of the file
clock). A changed study is copied again, but a snapshot that took ``t`` seconds is followed by the next one
no sooner than ``SNAPSHOT_COST_SHARE * t`` later (at most ``MAX_SNAPSHOT_GAP_S``), so a busy writer cannot
make every read copy the database. A writer that restarts its log faster than the study can be copied
tears every try (``SnapshotTorn``); the reader then keeps its last snapshot and tries again later.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from studio_core.errors import StoreError

__all__ = ["MAX_SNAPSHOT_GAP_S", "SNAPSHOT_COST_SHARE", "SNAPSHOT_TRIES", "Frozen", "SnapshotTorn", "read_image",
           "source_state", "take_snapshot"]

SNAPSHOT_TRIES = 5
SNAPSHOT_COST_SHARE = 10  # a reader spends at most about a tenth of its time copying a busy study
MAX_SNAPSHOT_GAP_S = 1.0  # ... and sees a commit at most about a second after it was made
TORN = "a writer restarted or removed its log while it was copied; try again"
SHM_HEADER_BYTES = 136  # the WAL index's two header copies (48 bytes each) and its checkpoint info (40)


class SnapshotTorn(StoreError):
    """Every copy was torn: the writer restarted its log faster than the study could be copied."""


def _side(db_path: Path, suffix: str) -> Path:
    return db_path.with_name(db_path.name + suffix)


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _head(path: Path, n: int) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except FileNotFoundError:
        return None


def source_state(db_path: Path) -> tuple:
    """What a read compares to see whether the study changed: the main file's and the log's (inode, size,
    mtime) and the header of the ``-shm`` index (read, never written)."""
    return _stat(db_path), _stat(_side(db_path, "-wal")), _head(_side(db_path, "-shm"), SHM_HEADER_BYTES)


def _generation(db_path: Path) -> tuple:
    """What must not change while a copy is taken: the log's inode and header (a restarted log has new
    salts), or without a log, the main file."""
    wal = _side(db_path, "-wal")
    wal_stat, db_stat = _stat(wal), _stat(db_path)
    if wal_stat is None:
        return db_stat, None, None
    return db_stat and db_stat[0], wal_stat[0], _head(wal, 32)


@dataclass(frozen=True)
class Frozen:
    """What a read-only connection reads: the study as it stood at ``state``. No new snapshot is taken before
    ``not_before`` (``time.monotonic``)."""

    state: tuple
    not_before: float = 0.0

    @classmethod
    def after_snapshot(cls, state: tuple, started: float) -> Frozen:
        """The view of a snapshot begun at ``started``: the next waits a multiple of what this one cost."""
        done = time.monotonic()
        return cls(state, done + min(MAX_SNAPSHOT_GAP_S, SNAPSHOT_COST_SHARE * (done - started)))

    def changed(self, db_path: Path) -> bool:
        return source_state(db_path) != self.state

    def postponed(self) -> Frozen:
        """The same view, tried again no sooner than ``MAX_SNAPSHOT_GAP_S`` from now (after a torn copy)."""
        return Frozen(self.state, time.monotonic() + MAX_SNAPSHOT_GAP_S)

    def wait_turn(self) -> None:
        """Wait out the gap after the last snapshot, so copying stays a small share of the reader's time."""
        delay = self.not_before - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _replayed(copy: Path) -> tuple[bytes | None, str]:
    """(the image of ``copy`` with its log replayed into it, "") or (None, why it could not be made)."""
    conn = sqlite3.connect(str(copy), isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]  # replays and checkpoints the log
        if mode != "delete":
            return None, f"its log could not be replayed (journal mode stays {mode})"
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            return None, f"the copy fails SQLite's quick_check: {check}"
        return conn.serialize(), ""
    except sqlite3.DatabaseError as exc:
        return None, str(exc)
    finally:
        conn.close()


def take_snapshot(db_path: Path) -> tuple[bytes, tuple]:
    """(image, state): the committed content of a WAL database and its log as one rollback-journal database
    image, and the ``source_state`` it was taken at (read before copying, so a commit made during the copy
    is picked up by the next read). ``StoreError`` naming the file when it cannot be read, or when every try
    was torn (``SnapshotTorn``) or failed its check."""
    why, torn = "", 0
    for _ in range(SNAPSHOT_TRIES):
        state, generation = source_state(db_path), _generation(db_path)
        with tempfile.TemporaryDirectory(prefix="studio-snapshot-") as tmp:
            copy = Path(tmp) / db_path.name
            try:
                shutil.copyfile(db_path, copy)
                if generation[1] is not None:
                    shutil.copyfile(_side(db_path, "-wal"), _side(copy, "-wal"))
            except FileNotFoundError:  # the writer closed and removed its log meanwhile
                why, torn = TORN, torn + 1
                continue
            except OSError as exc:
                raise StoreError(f"cannot take a snapshot of {db_path} to read it: {exc.strerror or exc} "
                                 f"({exc.filename})") from None
            if _generation(db_path) != generation:
                why, torn = TORN, torn + 1
                continue
            image, why = _replayed(copy)
            if image is not None:
                return image, state
    error = SnapshotTorn if torn == SNAPSHOT_TRIES else StoreError
    raise error(f"cannot take a sound snapshot of {db_path} ({SNAPSHOT_TRIES} tries): {why}")


def read_image(conn: sqlite3.Connection, image: bytes) -> sqlite3.Connection:
    """``conn`` reading ``image`` (an in-memory copy) instead of its file, and refusing writes."""
    conn.deserialize(image)
    conn.execute("PRAGMA query_only = 1")
    return conn
