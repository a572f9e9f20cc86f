"""The run store: every run, reference, sweep and image of a study, in one SQLite file plus PNGs.

Layout of a data folder (default ``<project>/data``, overridden by ``STUDIO_DATA_DIR`` or an
argument)::

    studio.db                 runs, refs, sweeps, images (index of the PNG files)
    images/ab/abcdef....png   every image, named by the SHA-256 of its PNG bytes

Rules the code keeps:

* Schema changes are registered migrations (sqlite-utils ``Migrations``), applied in order, once.
* WAL journal and a busy timeout, so a sweep in one process and the UI in another can share the file.
* Nothing is silently overwritten: a run row is written once when it starts and updated only while
  it is ``running`` (to ``ok``, ``failed`` or ``interrupted``); references are insert-only; image
  files are content-addressed and written atomically.
* All SQL takes parameters; no value is ever formatted into a statement.
* ``RunStore(..., read_only=True)`` serves a finished study (a demo): the file is opened read-only,
  nothing is created or migrated, and every write is refused with ``StoreReadOnly``.
* Image files are reached only through ``safepaths.inside``: a linked file or folder is refused.
* A run's outcome that a full disk refuses waits in memory and in ``pending-outcomes.jsonl``, and is
  written when space returns or at the next start (``pending``); a run the disk has no room for is
  refused before its row is written (``space``).
* At open: a damaged write-ahead log is refused by name and copied aside before SQLite can reset it
  (``wal``); a folder this user cannot write is named as such, not as damaged (``access``); rows whose
  text will not decode are moved whole to the ``quarantine`` table and listed in ``start_notes``
  (``quarantine``), and every connection reads such text with U+FFFD instead of failing.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import sqlite_utils

from studio_core.errors import NoSpace, StoreError, StoreReadOnly, UnsafePath
from studio_core.store import csv_stream, pending
from studio_core.store.access import cannot_open, not_writable_reason
from studio_core.store.liveness import run_process_ended
from studio_core.store.quarantine import decode_tolerantly, find_undecodable, note, quarantine_rows
from studio_core.store.safepaths import file_target, inside, replace_atomically
from studio_core.store.schema import JSON_COLUMNS, RUN_STATUSES, TABLES, migrations, now
from studio_core.store.snapshot import Frozen, SnapshotTorn, read_image, source_state, take_snapshot
from studio_core.store.space import is_disk_full, is_write_error, write_error_reason
from studio_core.store.wal import refuse_damaged_wal

__all__ = ["DEFAULT_DATA_DIR", "RunStore", "RunsSince"]

READ_ONLY_OPTIONAL = frozenset({"m002_quarantine", "m003_measurement_columns", "m004_quality_columns",
                                "m005_flow_shift_column", "m006_lineage_columns",
                                "m007_placement_columns", "m008_view_indexes"})  # a reader copes without them

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@contextmanager
def _unsafe_as_store_error():
    try:
        yield
    except UnsafePath as exc:
        raise StoreError(str(exc)) from exc


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _writes(method):
    """Refuse ``method`` on a read-only store before it touches anything."""
    @functools.wraps(method)
    def guarded(self: RunStore, *args, **kwargs):
        self._check_writable(method.__name__)
        return method(self, *args, **kwargs)
    return guarded


@dataclass(frozen=True)
class RunsSince:
    """What ``RunStore.runs_since`` read: the runs new or finished since a mark (a DataFrame, oldest first), how many
    runs the selection holds in all and the sum of their ids (together they tell whether the runs a caller holds are
    still the selection), and the mark to read from next time."""

    frame: Any
    total: int
    id_sum: int
    mark: tuple


class RunStore:
    """One study's runs, references, sweeps and images. Safe to share between threads.

    ``read_only=True`` opens an existing study without writing to it (see :meth:`_connect_read_only`).
    """

    def __init__(self, data_dir: str | Path | None = None, read_only: bool = False):
        self.data_dir = Path(data_dir or os.environ.get("STUDIO_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
        self.images_dir = self.data_dir / "images"
        self.path = self.data_dir / "studio.db"
        self.read_only = read_only
        self._wal = self.path.with_name(self.path.name + "-wal")
        self._frozen: Frozen | None = None  # the study as a read-only connection reads it (see _reading)
        self._lock = threading.RLock()
        self._pending = pending.PendingOutcomes(self.data_dir, self.flush_pending)  # outcomes waiting for space
        self.start_notes: list[str] = []  # what the open found and did, for the person starting the studio
        if read_only:
            refuse_damaged_wal(self.path, keep_copy=False)  # once: following a writer later reads its live log
            self.db = sqlite_utils.Database(self._connect_read_only())
            try:
                self._check_schema()
                self.start_notes = [note(bad, moved=False) for bad in find_undecodable(self.db.conn, TABLES)]
            except sqlite3.DatabaseError as exc:  # e.g. a damaged page
                self.close()
                raise StoreError(cannot_open(self.path, exc, writing=False)) from None
            except BaseException:
                self.close()
                raise
            return
        if reason := not_writable_reason(self.data_dir):
            raise StoreError(reason)
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"study folder {self.data_dir} cannot be used: it, or a part of its path, is a file "
                             "and not a folder") from None
        except OSError as exc:
            raise StoreError(f"study folder {self.data_dir} cannot be created: {exc.strerror}") from None
        refuse_damaged_wal(self.path, keep_copy=True)  # before any connection: SQLite would drop what it cannot replay
        try:
            self.db = sqlite_utils.Database(self._connect("mode=rwc"))
        except sqlite3.DatabaseError as exc:  # e.g. a file that is not a database
            raise StoreError(cannot_open(self.path, exc, writing=True)) from None
        try:
            if self.db.journal_mode != "wal":
                self.db.enable_wal()
            with self._write():  # two processes opening a new study: one creates the schema, the other waits
                migrations.apply(self.db)
            if find_undecodable(self.db.conn, TABLES):  # rare: look again under the write lock, and move them
                with self._write():
                    self.start_notes = quarantine_rows(self.db.conn, find_undecodable(self.db.conn, TABLES), now())
        except sqlite3.DatabaseError as exc:
            self.db.conn.close()
            raise StoreError(cannot_open(self.path, exc, writing=True)) from None

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection that leaves every file of the study as it found it: it creates, writes
        and touches nothing in the folder. (SQLite would otherwise add an empty ``-wal`` and a ``-shm``
        beside a WAL database, and write read marks into a ``-shm`` that is there.) Chosen by the state of
        the folder:

        * a rollback-journal database (a bundle): ``mode=ro``; SQLite's locks keep it safe against any
          writer, and it creates no file;
        * a WAL database with its ``-wal`` beside it (a writer has the study open, or died with it open):
          a private snapshot (``snapshot.take_snapshot``: the main file and the log copied, never the
          ``-shm``, the log replayed in the copy), read from memory; images are still read from the folder;
        * a WAL database without ``-wal``: no connection has it open (the last one to close removes the
          log), so the main file is the whole database and is read ``immutable``, with no lock and no side
          file. Left open: a writer that appears and checkpoints into the main file (after 1000 pages of
          log, or at its close) during one read could hand that read a torn page; the error or stale answer
          ends with that read.

        The last two follow a writer: a read after the study's files changed connects again (``_reading``),
        so it sees every commit made before it began. This works in a folder the reader cannot write, and
        reads the log a killed writer left without its ``-shm``.
        """
        started = time.monotonic()  # what following a writer costs, for the gap before the next snapshot
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise StoreError(f"study folder {self.data_dir} cannot be used: it is a file and not a folder")
        if not self.data_dir.is_dir():
            raise StoreError(f"study folder {self.data_dir} does not exist")
        if not self.path.is_file():
            raise StoreError(f"study folder {self.data_dir} has no database {self.path.name}")
        with open(self.path, "rb") as fh:
            wal_mode = fh.read(20)[18:20] == b"\x02\x02"  # file format versions 2: WAL (header offsets 18, 19)
        try:
            if wal_mode and self._wal.exists():
                image, state = take_snapshot(self.path)
                conn = read_image(self._connect("mode=memory"), image)  # opens no file: a blank in-memory db
                self._frozen = Frozen.after_snapshot(state, started)
                return conn
            if wal_mode:
                state = source_state(self.path)  # before connecting: a change in between reconnects, never hides
                conn, self._frozen = self._connect("immutable=1"), Frozen(state)
                return conn
            conn, self._frozen = self._connect("mode=ro"), None
            return conn
        except sqlite3.DatabaseError as exc:  # a damaged file, or one that is not a database: what to do, too
            raise StoreError(cannot_open(self.path, exc, writing=False)) from exc

    def _connect(self, mode: str) -> sqlite3.Connection:
        """A connection to the database file opened with URI parameters ``mode``, checked by one read."""
        conn = sqlite3.connect(f"{self.path.as_uri()}?{mode}", uri=True, timeout=30, check_same_thread=False,
                               isolation_level=None)
        conn.text_factory = decode_tolerantly  # a value that is not UTF-8 reads with U+FFFD, never raises
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except BaseException:
            conn.close()
            raise

    @contextmanager
    def _reading(self):
        """The lock for one read. A read-only connection that reads the study as it stood (a snapshot, or an
        ``immutable`` main file: see ``_connect_read_only``) is replaced when the study's files have changed
        since, so the read sees the writer's commits instead of stale pages or pages a checkpoint rewrites.
        A new snapshot first waits out the gap after the last one (``Frozen.wait_turn``): a busy writer does
        not make every read copy the database. When every copy is torn (``SnapshotTorn``) the read is
        answered from the last snapshot, and the next one is tried a gap later."""
        with self._lock:
            frozen = self._frozen
            if frozen is not None and frozen.changed(self.path):
                frozen.wait_turn()
                try:
                    conn = self._connect_read_only()
                except SnapshotTorn:  # a writer restarting its log faster than it can be copied: read the last one
                    self._frozen = frozen.postponed()
                else:
                    self.db.conn.close()
                    self.db = sqlite_utils.Database(conn)
            yield

    def _check_schema(self) -> None:
        """A read-only store cannot migrate: refuse a schema older or newer than this code's migrations. A
        study missing only migrations a reader never needs (``READ_ONLY_OPTIONAL``: the quarantine table, and the
        measurement columns, which rows of older runs lack anyway) is
        read as it is, so bundles made before them still open as demos."""
        known = [m.name for m in migrations._migrations]
        applied = [m.name for m in migrations.applied(self.db)]
        newer = [name for name in applied if name not in known]
        if newer:
            raise StoreError(f"{self.path} was written by a newer studio (migrations {', '.join(newer)} are "
                             "unknown here); update the studio to read it")
        if any(name not in applied and name not in READ_ONLY_OPTIONAL for name in known):
            raise StoreError(f"{self.path} has schema version {len(applied)} and this studio expects "
                             f"{len(known)}; open it once read-write to migrate it, then read it read-only")

    def _check_writable(self, operation: str) -> None:
        if self.read_only:
            raise StoreReadOnly(f"the study at {self.data_dir} is open read-only (demo mode): "
                                f"{operation} is refused")

    @contextmanager
    def _write(self):
        """One write transaction, taken with BEGIN IMMEDIATE so a busy store is waited for (busy_timeout)
        instead of failing when a read transaction would have to be upgraded; nested uses join it."""
        self._check_writable("a write")
        with self._lock:
            if self.db.conn.in_transaction:
                yield
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")

    # ---------------------------------------------------------------- schema
    @property
    def schema_version(self) -> int:
        with self._reading():
            return len(migrations.applied(self.db))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` of this open study: "ok", its first complaint, or the error."""
        try:
            with self._reading():
                return self.db.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as exc:
            return str(exc)

    @staticmethod
    def check_integrity(db_path: str | Path) -> str:
        """``PRAGMA integrity_check`` of a study's database file before any store opens it: "ok", SQLite's
        complaint (the first five lines), or the error opening the file. A missing file is "new study".

        Raises ``StoreError``, before SQLite touches any file, for a study this user may not write (which is
        not damage) and for a damaged write-ahead log, keeping a copy of it beside it (see ``wal.py``)."""
        db_path = Path(db_path)
        if not db_path.exists():
            return "new study"
        if reason := not_writable_reason(db_path.parent):
            raise StoreError(reason)
        refuse_damaged_wal(db_path, keep_copy=True)
        try:
            conn = sqlite3.connect(str(db_path), timeout=30)
        except sqlite3.Error as exc:
            return str(exc)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            return "; ".join(str(r[0]) for r in rows[:5]) + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")
        except sqlite3.Error as exc:
            return str(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.db.conn.close()

    # ---------------------------------------------------------------- runs
    @_writes
    def start_run(self, config: dict, *, config_hash: str, model_path: str = "", model_fingerprint: str = "",
                  pipeline_class: str = "", knobs_label: str = "", sweep_id: int | None = None,
                  sweep_index: int | None = None, model_family: str | None = None, lineage: str | None = None) -> int:
        """Insert a ``running`` row for a resolved configuration; returns its id. ``model_family`` and ``lineage``
        (``models.family_name`` and ``models.lineage_text``; None for a model that is not a student) say
        which model a student was distilled from, kept in the row for views that lack the model folder."""
        row = {
            "created_at": now(), "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
            "sweep_id": sweep_id, "sweep_index": sweep_index, "config_hash": config_hash,
            "config_json": _dumps(config), "model_path": model_path, "model_fingerprint": model_fingerprint,
            "pipeline_class": pipeline_class, "knobs_label": knobs_label, "model_family": model_family,
            "lineage": lineage, "n_prompts": len(config.get("prompts") or []),
            "n_images": len(config.get("prompts") or []) * len(config.get("seeds") or []),
        }
        for key, value in config.items():
            row[key] = _dumps(value) if key in JSON_COLUMNS else value
        self._flush_if_pending()
        try:
            with self._write():
                return self.db["runs"].insert(row, alter=True).last_pk
        except Exception as exc:  # nothing is recorded: like a bad spec, the run never started
            if not is_write_error(exc):
                raise
            error = NoSpace if is_disk_full(exc) else StoreError
            raise error(f"cannot record the run: {write_error_reason(exc, self.data_dir)}") from exc

    def _update_running(self, run_id: int, values: dict, keep: bool = True) -> bool:
        """Write a run's final ``values`` (only while it is ``running``); True when written. A write error
        (``space.is_write_error``: a full disk, say) keeps them waiting (``pending``) and returns False, or
        with ``keep=False`` is raised."""
        values = {k: (_dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str) else v)
                  for k, v in values.items()}
        for k, v in values.items():
            if isinstance(v, (np.floating, np.integer)):
                values[k] = v.item()
        self._flush_if_pending()
        if run_id in self._pending:  # its first outcome still waits for space, and is never overwritten either
            raise StoreError(f"run {run_id} is already {self._pending[run_id].get('status')} (not yet written: "
                             "its disk refused the write); a finished run is never overwritten")
        try:
            return self._write_outcome(run_id, values, strict=True)
        except Exception as exc:
            if not (keep and is_write_error(exc)):
                raise
            self._pending.keep(run_id, values, self.db.conn)
            return False

    def _write_outcome(self, run_id: int, values: dict, strict: bool = False) -> bool:
        """Update a ``running`` row with encoded ``values``; a row that is missing or no longer running is a
        ``StoreError`` when ``strict``, else left as it is (False)."""
        with self._write():
            row = self.db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None or row[0] != "running":
                if not strict:
                    return False
                if row is None:
                    raise StoreError(f"run {run_id} does not exist")
                raise StoreError(f"run {run_id} is already {row[0]}; a finished run is never overwritten")
            self.db["runs"].update(run_id, values, alter=True)
        return True

    def _flush_if_pending(self) -> None:
        if self._pending:
            self.flush_pending()

    def flush_pending(self) -> list[int]:
        """Write the run outcomes a write error kept waiting (``pending``), e.g. once space is freed; returns
        the ids written. Those still refused keep waiting; a row finished meanwhile is never overwritten."""
        with self._lock:
            return self._pending.flush(self._write_outcome)

    def get_run_with_pending(self, run_id: int) -> dict:
        """``get_run``, with the outcome still waiting for space (if any) laid over the stored row; its
        ``error`` then ends with a note that it is not written yet."""
        row = self.get_run(run_id)
        waiting = self._pending.get(run_id)
        if waiting is None:
            return row
        row = {**row, **self._decode(waiting)}
        row["error"] = "; ".join(filter(None, [row.get("error"), pending.WAITING_NOTE]))
        return row

    @_writes
    def finish_run(self, run_id: int, results: dict) -> None:
        """Record a run's results and mark it ``ok``. A write error is raised, not kept: a run whose row cannot
        be finished is recorded ``failed`` with that reason by its caller (``fail_run`` keeps it waiting)."""
        self._update_running(run_id, {**results, "status": "ok", "finished_at": now()}, keep=False)

    @_writes
    def fail_run(self, run_id: int, error: str, results: dict | None = None) -> bool:
        """Record why a run failed (and whatever it had measured) and mark it ``failed``. False when a write
        error (a full disk) keeps the outcome waiting for space (``flush_pending``)."""
        return self._update_running(run_id, {**(results or {}), "status": "failed", "error": error,
                                             "finished_at": now()})

    @_writes
    def cancel_run(self, run_id: int, reason: str) -> bool:
        """Mark a run ``cancelled`` (its client went away, or Cancel was pressed) with the reason. False when
        a write error keeps the outcome waiting for space (``flush_pending``)."""
        return self._update_running(run_id, {"status": "cancelled", "error": reason, "finished_at": now()})

    def mark_interrupted(self, run_ids: Iterable[int] | None = None, reason: str | None = None) -> list[int]:
        """Mark ``running`` rows whose process is gone (on this host) as ``interrupted``: the pid no longer
        exists, is a zombie, or now belongs to a process started after the row was written (a restarted
        server in a container often gets its old pid back; a busy host hands a freed pid to anything).
        Such a row with an outcome its process recorded in the side file while its disk was full
        (``pending``) gets that outcome instead; the side file then keeps only lines of rows still running.

        With ``run_ids``, those rows are marked whatever their process (used on Ctrl-C and cancel); a write
        error keeps their outcome waiting (``flush_pending``). A read-only store marks nothing and returns
        ``[]``. Returns the ids of the rows marked.
        """
        if self.read_only:
            return []
        host, marked = socket.gethostname(), []
        with self._lock:
            rows = self.db.execute("SELECT id, pid, host, created_at FROM runs WHERE status = 'running'").fetchall()
            wanted = set(run_ids) if run_ids is not None else None
            recorded = pending.recorded(self.data_dir) if wanted is None else {}
            for rid, pid, rhost, created in rows:
                if wanted is not None:
                    if rid not in wanted:
                        continue
                    why = reason or "stopped before it finished"
                elif rhost == host and (ended := run_process_ended(pid, created)):
                    why = reason or ended
                else:
                    continue
                values = {"status": "interrupted", "error": why, "finished_at": now()}
                if rid in recorded and pending.matches(recorded[rid], pid, created):
                    values = recorded[rid]["values"]
                try:
                    if self._write_outcome(rid, values):
                        marked.append(rid)
                except Exception as exc:
                    if not is_write_error(exc):
                        raise
                    if wanted is not None:
                        self._pending.keep(rid, values, self.db.conn)
                    # a process-ended row stays running on a full disk; the next start marks it
            if recorded:
                pending.keep_only(self.data_dir, {r[0] for r in rows} - set(marked))
        return marked

    @staticmethod
    def _select_sql(table: str, where: str | None, select: str = "*") -> str:
        """All columns of one of the store's own tables (never a caller's name), or the checked ``select`` list,
        oldest first."""
        return f"SELECT {select} FROM {table}" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"

    def raw_rows(self, table: str, where: str | None = None, params: Iterable | dict | None = None) -> list[dict]:
        """Rows of one of ``TABLES`` exactly as stored (JSON left as text), oldest first."""
        if table not in TABLES:
            raise StoreError(f"{table!r} is not one of the store's tables ({', '.join(TABLES)})")
        with self._reading():
            return list(self.db.query(self._select_sql(table, where), params or []))

    def _select(self, table: str, where: str | None = None, params: Iterable | dict | None = None) -> list[dict]:
        return [self._decode(r) for r in self.raw_rows(table, where, params)]

    def _get(self, table: str, key: str, value: Any, what: str) -> dict:
        rows = self._select(table, f"{key} = ?", [value])
        if not rows:
            raise StoreError(f"{what} {value} does not exist")
        return rows[0]

    def get_run(self, run_id: int) -> dict:
        return self._get("runs", "id", run_id, "run")

    @staticmethod
    def _decode(row: dict) -> dict:
        out = dict(row)
        for key in JSON_COLUMNS:
            if isinstance(out.get(key), str):
                try:
                    out[key] = json.loads(out[key])
                except json.JSONDecodeError:
                    pass
        return out

    def runs(self, where: str | None = None, params: Iterable | dict | None = None) -> list[dict]:
        """Decoded run rows, oldest first, with an optional parameterised ``where`` clause."""
        return self._select("runs", where, params)

    def _matching(self, where: str | None, params: Iterable | dict | None,
                  matching: Mapping[str, Any] | None) -> tuple[str | None, Iterable | dict | None]:
        """``matching`` ({column: value}, None matching NULL) as a parameterised WHERE clause; the column
        names are checked against the runs table, so no caller's text reaches the statement."""
        if matching is None:
            return where, params
        if where:
            raise TypeError("give a where clause or matching values, not both")
        columns = set(self.db["runs"].columns_dict)
        clauses, values = [], []
        for column, value in matching.items():
            if column not in columns:
                raise StoreError(f"cannot filter runs on {column!r}: no such column")
            clauses.append(f"{column} IS NULL" if value is None else f"{column} = ?")
            values += [] if value is None else [value]
        return " AND ".join(clauses) or None, values

    def _run_columns(self, columns: Iterable[str] | None) -> str:
        """The select list of ``columns`` of the runs table, in their order (every column for None). Each name is
        checked against the table, and one it lacks (a study from before that column's migration) is left out, as a
        ``SELECT *`` of that study would leave it out; so no caller's text reaches the statement."""
        if columns is None:
            return "*"
        have = self.db["runs"].columns_dict
        return ", ".join(f'"{c}"' for c in dict.fromkeys(columns) if c in have) or "id"

    def runs_frame(self, where: str | None = None, params: Iterable | dict | None = None, *,
                   matching: Mapping[str, Any] | None = None, columns: Iterable[str] | None = None):
        """The run log as a pandas DataFrame: one row per run, every column, JSON left as text, oldest first.
        Select with a parameterised ``where`` clause, or with ``matching`` column values (None matches NULL):
        ``runs_frame(matching={"status": "ok", "sweep_id": 3})``; ``columns`` reads only those (a view's own)."""
        import pandas as pd

        with self._reading():
            where, params = self._matching(where, params, matching)
            return pd.read_sql_query(self._select_sql("runs", where, self._run_columns(columns)), self.db.conn,
                                     params=params)

    @contextmanager
    def _one_read(self):
        """One read transaction under the read lock: the statements inside see one state of the study, whatever a
        writer commits meanwhile (WAL readers keep the snapshot their transaction began with)."""
        with self._reading():
            if self.db.conn.in_transaction:  # inside this thread's own write: its transaction is the one state
                yield
                return
            self.db.execute("BEGIN")
            try:
                yield
            finally:
                self.db.execute("COMMIT")

    def runs_since(self, mark: tuple | None = None, *, matching: Mapping[str, Any] | None = None,
                   columns: Iterable[str] | None = None) -> RunsSince:
        """The runs ``matching`` selects that are new or finished since ``mark`` (every one for None), oldest first,
        with how many it selects in all and the mark to pass next time, all read in one transaction.

        The mark is (largest id, latest ``finished_at``). A run counts as changed when its id is above the first,
        or it finished at or after the second, so a run that finished in the same millisecond as the last one seen
        is read again (callers drop ids they have). A run left out all the same (one whose finish time was written
        late, from a full disk's waiting outcomes) or one gone from the study shows as ``total`` or ``id_sum``
        differing from the runs the caller holds: it should then read everything again (``mark=None``)."""
        import pandas as pd

        with self._one_read():
            where, params = self._matching(None, None, matching or {})
            now_mark = (self.db.execute("SELECT max(id) FROM runs").fetchone()[0],
                        self.db.execute("SELECT max(finished_at) FROM runs").fetchone()[0])
            clauses, values = ([where] if where else []), list(params)
            if mark is not None:  # the ids off the rowid and the finish-time index, then the filter on those alone
                last_id, last_finish = mark
                clauses.append("id IN (SELECT id FROM runs WHERE id > ? UNION SELECT id FROM runs WHERE "
                               + ("finished_at IS NOT NULL)" if last_finish is None else "finished_at >= ?)"))
                values += [last_id or 0] + ([] if last_finish is None else [last_finish])
            frame = pd.read_sql_query(self._select_sql("runs", " AND ".join(clauses) or None,
                                                       self._run_columns(columns)), self.db.conn, params=values)
            total, id_sum = self.db.execute("SELECT count(*), sum(id) FROM runs" + (f" WHERE {where}" if where else ""),
                                            list(params)).fetchone()
        return RunsSince(frame, int(total), int(id_sum or 0), now_mark)

    def runs_page(self, *, matching: Mapping[str, Any] | None = None, columns: Iterable[str] | None = None,
                  page: int = 1, per_page: int = 100) -> tuple[Any, int]:
        """Page ``page`` (from 1) of the runs ``matching`` selects, newest first, ``per_page`` to a page, as a
        DataFrame of ``columns``; and how many runs it selects in all (one transaction). A page past the last is
        empty."""
        import pandas as pd

        if page < 1 or per_page < 1:
            raise StoreError(f"page {page} of {per_page} runs: pages and their sizes count from 1")
        with self._one_read():
            where, params = self._matching(None, None, matching or {})
            clause = f" WHERE {where}" if where else ""
            total = self.run_count(matching)
            frame = pd.read_sql_query(f"SELECT {self._run_columns(columns)} FROM runs{clause} ORDER BY id DESC "
                                      "LIMIT ? OFFSET ?", self.db.conn,
                                      params=[*params, per_page, (page - 1) * per_page])
        return frame, int(total)

    def has_run(self, matching: Mapping[str, Any]) -> bool:
        """Whether any run has these column values (None matches NULL): one indexed look-up, not a read of the runs."""
        with self._reading():
            where, params = self._matching(None, None, matching)
            return self.db.execute("SELECT 1 FROM runs" + (f" WHERE {where}" if where else "") + " LIMIT 1",
                                   list(params)).fetchone() is not None

    def distinct_values(self, column: str) -> list:
        """Every value of one runs column, once each, in SQLite's order (NULL first when there is one): what a
        filter can choose from, read off the column's index (``m008``) rather than from the rows."""
        if column not in self.db["runs"].columns_dict:
            raise StoreError(f"runs have no column {column!r}")
        with self._reading():
            return [r[0] for r in self.db.execute(f'SELECT DISTINCT "{column}" FROM runs ORDER BY 1')]

    def runs_version(self) -> tuple:
        """Changes whenever a run starts, finishes or leaves the study: (count, max id, last finish time, runs still
        running). Each part is read off an index or the table's own b-tree (``m008``), never the rows, so a timer
        may ask it every second of a study of 100k runs."""
        with self._reading():
            return tuple(self.db.execute(sql).fetchone()[0] for sql in (
                "SELECT count(*) FROM runs", "SELECT max(id) FROM runs", "SELECT max(finished_at) FROM runs",
                "SELECT count(*) FROM runs WHERE status = 'running'"))

    def sweep_statuses(self) -> list[tuple[int, str]]:
        """(id, status) of every sweep, oldest first: whether a sweep started or ended, without reading its
        configuration."""
        with self._reading():
            return [tuple(r) for r in self.db.execute("SELECT id, status FROM sweeps ORDER BY id")]

    def run_count(self, matching: Mapping[str, Any] | None = None) -> int:
        """How many runs ``matching`` selects (every run for None; None matches NULL), counted off an index."""
        with self._reading():
            where, params = self._matching(None, None, matching or {})
            return self.db.execute("SELECT count(*) FROM runs" + (f" WHERE {where}" if where else ""),
                                   list(params)).fetchone()[0]

    def export_csv(self, path: str | Path, where: str | None = None, params: Iterable | dict | None = None, *,
                   matching: Mapping[str, Any] | None = None) -> int:
        """Write every column of the selected runs (as ``runs_frame`` selects them) to CSV, atomically;
        returns the number of rows. Written a chunk of rows at a time (``csv_stream``): a study of 100k runs is
        never held in memory, and the file is what ``runs_frame(...).to_csv(path, index=False)`` would write.

        Not a study write, so a read-only store does it too. Refuses a NUL byte, an over-long name, a link
        or folder as the target, and the study's own database file.
        """
        with _unsafe_as_store_error():
            path = file_target(path, "CSV file")
        if path.exists() and path.samefile(self.path):
            raise StoreError(f"{path} is the study's database; export the CSV somewhere else")
        with self._export_reader() as conn, replace_atomically(path) as tmp:
            where, params = self._matching(where, params, matching)
            params = params or []
            declared = {c.name: c.type for c in sqlite_utils.Database(conn)["runs"].columns}
            floats = csv_stream.float_columns(conn, "runs", declared, where, params)
            sql = self._select_sql("runs", where, csv_stream.select_list(declared, floats))
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                return csv_stream.write_csv(conn, sql, params, out)

    @contextmanager
    def _export_reader(self):
        """A connection for one long read (a CSV of the whole study), inside one read transaction. A study this
        process writes gets a read-only connection of its own, so the export holds no lock and a sweep's writes and
        the page's reads go on meanwhile (WAL keeps the export's snapshot); a read-only store's connection already
        reads a frozen copy, and is held for the read."""
        if self.read_only:
            with self._one_read():
                yield self.db.conn
            return
        conn = self._connect("mode=ro")
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()

    @_writes
    def add_finished_runs(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert finished runs recorded elsewhere, as they are (JSON columns as values or as text), in one
        transaction of one ``executemany``: a study made of other studies' runs, such as the store benchmark's
        clones of real runs (``benchmarks/store_scale.py``). Each gets a new id. A ``running`` row, or a column the
        runs table lacks, is refused before anything is written (no process here would finish the one, and the
        other would change the schema). Returns how many were added."""
        rows = [{k: (_dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str) else v)
                 for k, v in r.items() if k != "id"} for r in rows]
        if not rows:
            return 0
        have = self.db["runs"].columns_dict
        columns = list(dict.fromkeys(c for r in rows for c in r))
        if unknown := [c for c in columns if c not in have]:
            raise StoreError(f"runs have no column {unknown[0]!r}; a run from another study must fit this one's")
        if bad := [r.get("status") for r in rows if r.get("status") not in RUN_STATUSES[1:]]:
            raise StoreError(f"only finished runs are added, not one that is {bad[0]!r}")
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        with self._write():
            self.db.conn.executemany(f"INSERT INTO runs ({names}) VALUES ({marks})",
                                     [[r.get(c) for c in columns] for r in rows])
        return len(rows)

    # ---------------------------------------------------------------- images
    @_writes
    def put_image(self, image: np.ndarray) -> str:
        """Store one (H, W, 3) uint8 image as PNG named by its content hash; returns the hash."""
        from PIL import Image

        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise StoreError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return self._keep_png(buf.getvalue(), image.shape[1], image.shape[0])

    def _keep_png(self, data: bytes, width: int, height: int) -> str:
        """Write PNG bytes under their SHA-256 (atomically, once) and index them; returns the hash."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.image_path(digest)
        self._flush_if_pending()
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with replace_atomically(target) as tmp:
                tmp.write_bytes(data)
        with self._write():
            self.db["images"].insert({"hash": digest, "width": width, "height": height, "n_bytes": len(data),
                                      "created_at": now()}, ignore=True)
        return digest

    @_writes
    def put_image_bytes(self, data: bytes) -> str:
        """Keep an image another process encoded (a sweep worker's PNG) as it is; returns its hash. The bytes must
        be a PNG this reads back, so a damaged transfer is refused rather than stored under its own hash."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "PNG":
                    raise ValueError(f"a {im.format} file, not a PNG")
                im.load()
                width, height = im.size
        except Exception as exc:
            raise StoreError(f"an image from a worker is not a readable PNG ({exc})") from None
        return self._keep_png(data, width, height)

    @_writes
    def put_images(self, images: Iterable[np.ndarray]) -> list[str]:
        return [self.put_image(im) for im in images]

    @staticmethod
    def image_name(digest: str) -> str:
        """Where an image hash lives in a study folder, ``images/ab/abcdef....png``; refuses anything that
        is not a 64-hex-digit hash."""
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise StoreError(f"not an image hash: {str(digest)[:80]!r}")
        return f"images/{digest[:2]}/{digest}.png"

    def image_path(self, digest: str) -> Path:
        """The file of an image hash (see ``image_name``); refuses a file or folder on the way to it that is
        a symbolic link."""
        with _unsafe_as_store_error():
            return inside(self.data_dir, self.image_name(digest), "image file")

    def _existing_image(self, digest: str) -> Path:
        path = self.image_path(digest)
        if not path.is_file():
            raise StoreError(f"image {digest} is missing from {self.images_dir}")
        return path

    def load_image(self, digest: str) -> np.ndarray:
        from PIL import Image

        with Image.open(self._existing_image(digest)) as im:
            return np.asarray(im.convert("RGB"))

    def image_bytes(self, digest: str) -> bytes:
        """The PNG bytes of an image, checked against the SHA-256 that names them."""
        data = self._existing_image(digest).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StoreError(f"image {digest} is corrupt: the SHA-256 of {self.image_path(digest)} is {actual}")
        return data

    def load_images(self, digests: Iterable[str]) -> np.ndarray:
        return np.stack([self.load_image(d) for d in digests])

    # ---------------------------------------------------------------- references
    def get_reference(self, ref_key: str) -> dict | None:
        rows = self._select("refs", "ref_key = ?", [ref_key])
        return rows[0] if rows else None

    def reference_config(self, reference_id: int | None) -> dict | None:
        """The configuration a run was scored against (sampler, steps, guidance ...) with its
        ``generate_ms`` and ``id``; None for no reference or an unknown id."""
        if reference_id is None:
            return None
        rows = self._select("refs", "id = ?", [int(reference_id)])
        if not rows:
            return None
        return {**rows[0]["config_json"], "generate_ms": rows[0]["generate_ms"], "id": int(reference_id)}

    def reference_images(self, reference_id: int | None, limit: int | None = None) -> np.ndarray | None:
        """The first ``limit`` (all when None) images of a reference, in the order of its (prompt, seed)
        pairs, which is the order of every run scored against it; None for no reference or an unknown id."""
        if reference_id is None:
            return None
        rows = self._select("refs", "id = ?", [int(reference_id)])
        if not rows or not rows[0]["images"]:
            return None
        return self.load_images(rows[0]["images"][:limit])

    @_writes
    def put_reference(self, ref_key: str, *, config: dict, images: list[str], model_fingerprint: str,
                      generate_ms: float, env: dict | None = None) -> int:
        """Keep a reference once; a second one for the same key is refused, never overwrites."""
        with self._write():
            existing = self.get_reference(ref_key)
            if existing is not None:
                raise StoreError(f"a reference for key {ref_key} already exists (id {existing['id']})")
            return self.db["refs"].insert({
                "ref_key": ref_key, "created_at": now(), "model_fingerprint": model_fingerprint,
                "config_json": _dumps(config), "images": _dumps(images), "generate_ms": generate_ms,
                "env_json": _dumps(env or {}),
            }).last_pk

    def reference_record(self, ref_key: str) -> dict:
        """A stored reference as one study hands it to another (a sweep's driver to its workers, and back): its
        key, configuration, fingerprint, time, environment and the PNG bytes of its images."""
        row = self.get_reference(ref_key)
        if row is None:
            raise StoreError(f"no reference with key {ref_key}")
        return {"ref_key": ref_key, "config": row["config_json"], "model_fingerprint": row["model_fingerprint"],
                "generate_ms": row["generate_ms"], "env": row["env_json"] or {},
                "images": [self.image_bytes(h) for h in row["images"]]}

    @_writes
    def keep_reference_record(self, record: dict) -> int:
        """Keep a ``reference_record`` from another study under its key (its images first); returns its id here. A
        key already kept is left as it is (references are insert-only) and its id returned."""
        existing = self.get_reference(record["ref_key"])
        if existing is not None:
            return int(existing["id"])
        images = [self.put_image_bytes(data) for data in record["images"]]
        try:
            return self.put_reference(record["ref_key"], config=record["config"], images=images,
                                      model_fingerprint=record["model_fingerprint"],
                                      generate_ms=record["generate_ms"], env=record["env"])
        except StoreError:  # kept meanwhile by another process
            return int(self.get_reference(record["ref_key"])["id"])

    # ---------------------------------------------------------------- sweeps
    @_writes
    def create_sweep(self, *, sweep_key: str, name: str, preset: str, question: str, config: dict,
                     n_total: int) -> int:
        with self._write():
            return self.db["sweeps"].insert({
                "sweep_key": sweep_key, "name": name, "preset": preset, "question": question,
                "config_json": _dumps(config), "n_total": n_total, "status": "running", "pid": os.getpid(),
                "created_at": now(),
            }).last_pk

    def sweeps(self, sweep_key: str | None = None) -> list[dict]:
        return self._select("sweeps", None if sweep_key is None else "sweep_key = ?",
                            None if sweep_key is None else [sweep_key])

    def get_sweep(self, sweep_id: int) -> dict:
        return self._get("sweeps", "id", sweep_id, "sweep")

    @_writes
    def claim_sweep(self, sweep_id: int) -> None:
        """Take over an unfinished sweep (``interrupted``, ``failed``, ``cancelled``, or ``running`` in a
        process that is gone) in this process: it is ``running`` again, under this process's pid."""
        with self._write():
            self.db.execute("UPDATE sweeps SET pid = ?, status = 'running', finished_at = NULL WHERE id = ?",
                            [os.getpid(), sweep_id])

    def mark_sweeps_interrupted(self) -> list[int]:
        """Mark ``running`` sweeps whose process is gone as ``interrupted`` (with ``finished_at``), so a killed
        sweep says so until it is resumed (``claim_sweep``); returns their ids. The process is judged as a
        run's is (``run_process_ended``), against the sweep's latest activity: its creation or its newest run
        (a resumed sweep's process started after the sweep was created). A sweep whose newest run was written
        on another host is left alone, and a read-only store marks nothing (``[]``)."""
        if self.read_only:
            return []
        marked = []
        with self._lock:
            rows = self.db.execute(
                "SELECT s.id, s.pid, max(s.created_at, coalesce(max(r.created_at), '')), "
                "(SELECT host FROM runs WHERE sweep_id = s.id ORDER BY id DESC LIMIT 1) "
                "FROM sweeps s LEFT JOIN runs r ON r.sweep_id = s.id WHERE s.status = 'running' GROUP BY s.id"
            ).fetchall()
            for sweep_id, pid, latest, host in rows:
                if host not in (None, socket.gethostname()) or not run_process_ended(pid, latest):
                    continue
                with self._write():  # unless another process claimed it meanwhile
                    cur = self.db.execute("UPDATE sweeps SET status = 'interrupted', finished_at = ? "
                                          "WHERE id = ? AND status = 'running' AND pid IS ?", [now(), sweep_id, pid])
                if cur.rowcount:
                    marked.append(sweep_id)
        return marked

    @_writes
    def finish_sweep(self, sweep_id: int, status: str = "done") -> None:
        if status not in ("done", "cancelled", "failed", "interrupted"):
            raise StoreError(f"sweep status {status!r} is not one of done, cancelled, failed, interrupted")
        with self._write():
            self.db.execute("UPDATE sweeps SET status = ?, finished_at = ? WHERE id = ?", [status, now(), sweep_id])

    def sweep_runs(self, sweep_id: int) -> list[dict]:
        return self.runs("sweep_id = ?", [sweep_id])
