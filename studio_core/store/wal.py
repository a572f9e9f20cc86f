"""The study's write-ahead log (``studio.db-wal``), read by its documented format to refuse one that SQLite
would silently cut short (https://www.sqlite.org/fileformat.html#the_write_ahead_log).

When the first connection opens a study, SQLite replays the log frame by frame while each frame carries
the salts of the log's header and its cumulative checksum holds, keeps everything up to the last commit
frame of that unbroken chain, and ignores the rest without a word; the next checkpoint then resets the
log, and committed runs that lived only there are gone for good. So the log is *damaged* when committed
data would be dropped:

* its header is invalid (magic, version, page size or checksum) while it holds at least one whole frame;
* the chain breaks at a frame, and a later frame carries the header's salts and is a commit frame.

Normal, and not damage: an absent or empty log; a torn tail (a crash mid-transaction leaves part of a
frame, or frames with no commit after them, or a commit frame whose page was never written: SQLite writes
a frame's header and its page separately); frames with other salts (an older generation of the log,
already checkpointed into the database). Left open: damage inside the last commit frame reads like that
torn commit and is not caught.

``refuse_damaged_wal`` keeps a copy of a damaged log (and its ``-shm``) beside it, as
``studio.db-wal.damaged-<UTC time>``, before any SQLite connection touches the study, then raises
``StoreError`` naming the log, the copy and what to do. A log that changes while it is read belongs to a
live writer, whose connection already holds the index and will not replay it: it is not judged.
"""

from __future__ import annotations

import datetime as _dt
import filecmp
import os
import shutil
import struct
from pathlib import Path

from studio_core.errors import StoreError

__all__ = ["damaged_wal_reason", "refuse_damaged_wal", "wal_path"]

WAL_MAGIC = 0x377F0682  # the low bit says the checksum reads big-endian words
WAL_VERSION = 3007000
HEADER = struct.Struct(">8I")  # magic, version, page size, checkpoint seq, salt-1, salt-2, checksum-1, -2
FRAME = struct.Struct(">6I")  # page number, database size after commit (0: not a commit), salt-1, -2, checksums
MASK = 0xFFFFFFFF


def wal_path(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + "-wal")


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) continued from ``(s0, s1)``."""
    words = iter(struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data))
    for a, b in zip(words, words):
        s0 = (s0 + a + s1) & MASK
        s1 = (s1 + b + s0) & MASK
    return s0, s1


def _db_page_size(db_path: Path) -> int:
    """The main file's page size (header offset 16, big-endian; 1 means 65536), 4096 when unreadable."""
    try:
        with open(db_path, "rb") as fh:
            raw = fh.read(18)[16:18]
    except OSError:
        return 4096
    size = int.from_bytes(raw, "big") if len(raw) == 2 else 4096
    return 65536 if size == 1 else size if size >= 512 else 4096


def _damage(log: bytes, db_page_size: int) -> str | None:
    """What SQLite would drop from the log ``log`` on replaying it, or None when it drops nothing committed."""
    if len(log) < HEADER.size:
        return None
    magic, version, page_size, _, salt1, salt2, ck1, ck2 = HEADER.unpack_from(log)
    big_endian = bool(magic & 1)
    header_ok = ((magic & ~1) == WAL_MAGIC and version == WAL_VERSION and 512 <= page_size <= 65536
                 and (page_size & (page_size - 1)) == 0
                 and _checksum(log[:24], 0, 0, big_endian) == (ck1, ck2))
    frame_size = FRAME.size + (page_size if header_ok else db_page_size)
    n_frames = (len(log) - HEADER.size) // frame_size
    if not header_ok:
        if n_frames == 0:
            return None
        return (f"its header is invalid, so SQLite would ignore all {n_frames} frame(s) it holds "
                f"({_commits(log, frame_size, n_frames, 0, None)} of them commit frames)")
    sums = (ck1, ck2)
    for index in range(n_frames):
        at = HEADER.size + index * frame_size
        page, commit, f_salt1, f_salt2, f_ck1, f_ck2 = FRAME.unpack_from(log, at)
        ours = (f_salt1, f_salt2) == (salt1, salt2)
        if ours and page != 0:
            sums = _checksum(log[at:at + 8], *sums, big_endian)
            sums = _checksum(log[at + FRAME.size:at + frame_size], *sums, big_endian)
        if not ours or page == 0 or sums != (f_ck1, f_ck2):
            lost = _commits(log, frame_size, n_frames, index + 1, (salt1, salt2))
            if not lost:
                return None
            return (f"frame {index + 1} of {n_frames} breaks its checksum chain, and the {lost} committed "
                    f"transaction(s) after it would be lost")
    return None


def _commits(log: bytes, frame_size: int, n_frames: int, first: int, salts: tuple[int, int] | None) -> int:
    """How many whole frames from index ``first`` on are commit frames (of this generation: ``salts``)."""
    count = 0
    for index in range(first, n_frames):
        _, commit, salt1, salt2, _, _ = FRAME.unpack_from(log, HEADER.size + index * frame_size)
        count += commit != 0 and (salts is None or (salt1, salt2) == salts)
    return count


def _read(path: Path) -> bytes:
    """The log's bytes; empty when there is none to read (no log, no folder, or one SQLite cannot read either)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def damaged_wal_reason(db_path: str | Path) -> str | None:
    """Why the write-ahead log beside ``db_path`` would lose committed data when SQLite replays it, naming
    the file; None for a sound, torn-tailed, empty or absent log, or one a live writer keeps changing."""
    db_path = Path(db_path)
    wal = wal_path(db_path)
    log = _read(wal)
    for _ in range(3):  # a damaged verdict stands only on a log that did not change while it was read
        damage = _damage(log, _db_page_size(db_path)) if log else None
        if damage is None:
            return None
        again = _read(wal)
        if again == log:
            return f"the study's write-ahead log {wal} is damaged: {damage}"
        log = again
    return None


def _keep_copy(path: Path, stamp: str) -> Path:
    """``path`` copied beside itself as ``<name>.damaged-<stamp>``, or an identical copy already there."""
    for earlier in sorted(path.parent.glob(f"{path.name}.damaged-*")):
        if earlier.is_file() and filecmp.cmp(earlier, path, shallow=False):
            return earlier
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copy2(path, tmp)
    os.replace(tmp, target)
    return target


def refuse_damaged_wal(db_path: str | Path, *, keep_copy: bool) -> None:
    """Raise ``StoreError`` when the study's write-ahead log is damaged (``damaged_wal_reason``). With
    ``keep_copy`` the log and its ``-shm`` are first copied beside it, since the first connection to open
    the study would replay only the sound part and its last one would reset the log."""
    db_path = Path(db_path)
    reason = damaged_wal_reason(db_path)
    if reason is None:
        return
    if not keep_copy:  # a read-only open changes no file: nothing to keep
        raise StoreError(f"{reason}. Refusing to read the study (nothing was changed): restore it from a backup")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    wal = wal_path(db_path)
    try:
        copy = _keep_copy(wal, stamp)
        shm = db_path.with_name(db_path.name + "-shm")
        if shm.is_file():
            _keep_copy(shm, stamp)
    except OSError as exc:
        raise StoreError(f"{reason}. Refusing to open the study; no copy of the log could be kept beside it "
                         f"({exc.strerror}): copy {wal} somewhere safe, then restore the study from a backup") from None
    raise StoreError(f"{reason}. Refusing to open the study, which would make that loss permanent; a copy of "
                     f"the log is kept at {copy}. Restore the study from a backup (the copy holds what was lost, "
                     f"for recovery), or, to go on without it, run: sqlite3 {db_path} "
                     f"'PRAGMA wal_checkpoint(TRUNCATE)'")
