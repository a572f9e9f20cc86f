"""Run outcomes that wait for space: a run's final values its row could not take because a write failed.

When a full disk (or another write error, ``space.is_write_error``) refuses the update that ends a run
(``failed``, ``cancelled``, ``interrupted``), the store keeps the values in memory (``PendingOutcomes``, a
dict of run id -> values) and also tries to append them as one line to ``pending-outcomes.jsonl`` in the
study folder (that may fail too; then memory alone holds them). They are written:

* before every later write of the store (a new run, an image, another run's outcome) and from
  ``RunStore.flush_pending()``; a write that fails again leaves them waiting;
* at interpreter exit (``atexit``; the store is referenced weakly, so a dropped store is not kept alive);
* by the next process that opens the study, when the one that kept them died first: ``RunStore.mark_interrupted``
  gives a ``running`` row whose process ended the outcome recorded in the side file (``recorded``), not
  "process ended", and then keeps only the lines of rows still running (``keep_only``).

A line names its row by id, process id and start time, so a study folder whose database was replaced
meanwhile never gets another row's outcome. A row that is no longer ``running`` when its outcome is written
(another process finished it) is left as it is and the outcome dropped: a finished run is never overwritten.
"""

from __future__ import annotations

import atexit
import json
import os
import sqlite3
import weakref
from pathlib import Path
from typing import Callable

from studio_core.store.space import is_write_error

__all__ = ["SIDECAR", "WAITING_NOTE", "PendingOutcomes", "keep_only", "matches", "recorded"]

SIDECAR = "pending-outcomes.jsonl"
WAITING_NOTE = ("not yet written to the study (its disk refused the write): recorded when space returns, or by the "
                "next start on this study")


def _append_line(path: Path, line: dict) -> bool:
    """Append one JSON line with a single ``write`` (O_APPEND), synced; False when the disk refuses it."""
    data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        written = os.write(fd, data)
        os.fsync(fd)
        return written == len(data)
    except OSError:
        return False
    finally:
        os.close(fd)


class PendingOutcomes(dict):
    """Run id -> the encoded values its row waits for, with the side file of ``data_dir`` and the flush
    at interpreter exit (registered while something waits)."""

    def __init__(self, data_dir: Path, flush: Callable[[], list[int]]):
        super().__init__()
        self.sidecar = Path(data_dir) / SIDECAR
        self._flush = weakref.WeakMethod(flush)
        self._at_exit_registered = False

    def keep(self, run_id: int, values: dict, conn: sqlite3.Connection) -> bool:
        """Keep ``values`` for ``run_id`` (replacing what waited for it) and append them to the side file with
        the row's pid and start time read through ``conn``; returns whether the line was written."""
        self[run_id] = values
        try:
            pid, created_at = conn.execute("SELECT pid, created_at FROM runs WHERE id = ?", [run_id]).fetchone()
        except (sqlite3.Error, TypeError):  # unreadable, or no such row: the line matches no row
            pid = created_at = None
        if not self._at_exit_registered:
            atexit.register(self._at_exit)
            self._at_exit_registered = True
        return _append_line(self.sidecar, {"run_id": run_id, "pid": pid, "created_at": created_at,
                                           "values": values})

    def flush(self, write: Callable[[int, dict], bool]) -> list[int]:
        """Write each waiting outcome with ``write(run_id, values)`` (False: the row is no longer running, and
        the outcome is dropped); stops at the first write error, leaving the rest waiting. Returns the ids
        written."""
        written = []
        for run_id, values in list(self.items()):
            try:
                if write(run_id, values):
                    written.append(run_id)
            except Exception as exc:
                if is_write_error(exc):
                    break
                raise
            self.pop(run_id, None)
        if not self and self._at_exit_registered:
            atexit.unregister(self._at_exit)
            self._at_exit_registered = False
        return written

    def _at_exit(self) -> None:
        """Last chance in this process; what still cannot be written stays in the side file."""
        flush = self._flush()
        if flush is not None and self:
            try:
                flush()
            except Exception:  # noqa: BLE001 - a closed or broken store at exit: the side file still has them
                pass


def recorded(data_dir: Path) -> dict[int, dict]:
    """The side file's outcomes by run id (the last line of a run wins); a torn or unreadable line (a disk
    that filled up mid-write) is skipped."""
    path = Path(data_dir) / SIDECAR
    out: dict[int, dict] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            item = json.loads(line)
            out[int(item["run_id"])] = item
        except (ValueError, TypeError, KeyError):
            continue
    return out


def matches(item: dict, pid: int | None, created_at: str | None) -> bool:
    """Whether a side-file line is of the row started by ``pid`` at ``created_at``."""
    return item.get("pid") == pid and item.get("created_at") == created_at and isinstance(item.get("values"), dict)


def keep_only(data_dir: Path, run_ids: set[int]) -> None:
    """Rewrite the side file with the lines of ``run_ids`` (rows still running), or remove it when none are
    left; best effort (a disk still full leaves the file as it is, and the next start tries again)."""
    path = Path(data_dir) / SIDECAR
    if not path.exists():
        return
    items = recorded(data_dir)
    kept = [items[r] for r in sorted(run_ids) if r in items]
    tmp = path.with_name(f".{SIDECAR}.tmp")
    try:
        if not kept:
            path.unlink(missing_ok=True)
        elif len(kept) != len(path.read_bytes().splitlines()):
            tmp.write_text("".join(json.dumps(i, sort_keys=True, default=str) + "\n" for i in kept), encoding="utf-8")
            os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
