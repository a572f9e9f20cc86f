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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import sqlite_utils

from studio_core.errors import StoreError, StoreReadOnly, UnsafePath
from studio_core.store.liveness import run_process_ended
from studio_core.store.safepaths import file_target, inside, replace_atomically
from studio_core.store.schema import JSON_COLUMNS, TABLES, migrations, now

__all__ = ["DEFAULT_DATA_DIR", "RunStore"]

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
        self._immutable_as: tuple | None = None  # the file an immutable connection reads (see _reading)
        self._lock = threading.RLock()
        if read_only:
            self.db = sqlite_utils.Database(self._connect_read_only())
            try:
                self._check_schema()
            except BaseException:
                self.close()
                raise
            return
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"study folder {self.data_dir} cannot be used: it, or a part of its path, is a file "
                             "and not a folder") from None
        except OSError as exc:
            raise StoreError(f"study folder {self.data_dir} cannot be created: {exc.strerror}") from None
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        try:
            self.db.execute("PRAGMA busy_timeout = 30000")
            if self.db.journal_mode != "wal":
                self.db.enable_wal()
        except sqlite3.DatabaseError as exc:  # e.g. a file that is not a database
            conn.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        with self._write():  # two processes opening a new study: one creates the schema, the other waits
            migrations.apply(self.db)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection that leaves every file of the study as it found it, chosen by the state
        of the folder (SQLite would otherwise add an empty ``-wal`` and a ``-shm`` beside a WAL database,
        and leave them):

        * a rollback-journal database (a bundle): ``mode=ro``; SQLite's locks keep it safe against any
          writer, and it creates no file;
        * a WAL database with its ``-wal`` beside it (a writer has the study open, or died with it open):
          ``mode=ro``, reading the log through the ``-shm`` index that is already there;
        * a WAL database without ``-wal``: no connection has it open (the last one to close removes the
          log), so the main file is the whole database and is read ``immutable``, with no lock and no side
          file. A writer that opens the study afterwards is followed: the first read after its ``-wal``
          appears, or the main file changes, connects again (``_reading``). Left open: a writer that
          appears and checkpoints into the main file (after 1000 pages of log, or at its close) during
          that one read could hand it a torn page; the error or stale answer ends with that read.

        When SQLite cannot create the WAL index (a folder this process cannot write) and no write-ahead
        log holds data, the main file is the whole database and is opened ``immutable`` as well (and not
        followed: the reader cannot make the index a writer's log would need).
        """
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise StoreError(f"study folder {self.data_dir} cannot be used: it is a file and not a folder")
        if not self.data_dir.is_dir():
            raise StoreError(f"study folder {self.data_dir} does not exist")
        if not self.path.is_file():
            raise StoreError(f"study folder {self.data_dir} has no database {self.path.name}")
        with open(self.path, "rb") as fh:
            wal_mode = fh.read(20)[18:20] == b"\x02\x02"  # file format versions 2: WAL (header offsets 18, 19)
        wal_has_data = self._wal.exists() and self._wal.stat().st_size > 0
        try:
            if wal_mode and not self._wal.exists():
                state = self._file_state()  # before connecting: a change in between reconnects, never hides
                conn, self._immutable_as = self._connect("immutable=1"), state
                return conn
            try:
                conn = self._connect("mode=ro")
            except sqlite3.OperationalError as exc:
                if not wal_mode or exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_READONLY or wal_has_data:
                    raise
                conn = self._connect("immutable=1")
            self._immutable_as = None
            return conn
        except sqlite3.DatabaseError as exc:
            hint = "; its write-ahead log holds data only a process that may write the folder can read"
            raise StoreError(f"cannot read {self.path} read-only: {exc}{hint if wal_has_data else ''}") from exc

    def _connect(self, mode: str) -> sqlite3.Connection:
        """A connection to the database file opened with URI parameters ``mode``, checked by one read."""
        conn = sqlite3.connect(f"{self.path.as_uri()}?{mode}", uri=True, timeout=30, check_same_thread=False,
                               isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except BaseException:
            conn.close()
            raise

    def _file_state(self) -> tuple:
        st = self.path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    @contextmanager
    def _reading(self):
        """The lock for one read. An ``immutable`` connection (see ``_connect_read_only``) is replaced as soon
        as a writer's ``-wal`` appears (by a ``mode=ro`` one) or the main file changes (by a fresh one), so
        the reader sees the writer's commits instead of stale pages or pages a checkpoint rewrites."""
        with self._lock:
            if self._immutable_as is not None and (self._wal.exists() or self._file_state() != self._immutable_as):
                conn = self._connect_read_only()
                self.db.conn.close()
                self.db = sqlite_utils.Database(conn)
            yield

    def _check_schema(self) -> None:
        """A read-only store cannot migrate: refuse a schema older or newer than this code's migrations."""
        known = [m.name for m in migrations._migrations]
        applied = [m.name for m in migrations.applied(self.db)]
        newer = [name for name in applied if name not in known]
        if newer:
            raise StoreError(f"{self.path} was written by a newer studio (migrations {', '.join(newer)} are "
                             "unknown here); update the studio to read it")
        if len(applied) < len(known):
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
        complaint (the first five lines), or the error opening the file. A missing file is "new study"."""
        db_path = Path(db_path)
        if not db_path.exists():
            return "new study"
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
                  sweep_index: int | None = None) -> int:
        """Insert a ``running`` row for a resolved configuration; returns its id."""
        row = {
            "created_at": now(), "status": "running", "pid": os.getpid(), "host": socket.gethostname(),
            "sweep_id": sweep_id, "sweep_index": sweep_index, "config_hash": config_hash,
            "config_json": _dumps(config), "model_path": model_path, "model_fingerprint": model_fingerprint,
            "pipeline_class": pipeline_class, "knobs_label": knobs_label,
            "n_prompts": len(config.get("prompts") or []),
            "n_images": len(config.get("prompts") or []) * len(config.get("seeds") or []),
        }
        for key, value in config.items():
            row[key] = _dumps(value) if key in JSON_COLUMNS else value
        with self._write():
            return self.db["runs"].insert(row, alter=True).last_pk

    def _update_running(self, run_id: int, values: dict) -> None:
        values = {k: (_dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str) else v)
                  for k, v in values.items()}
        for k, v in values.items():
            if isinstance(v, (np.floating, np.integer)):
                values[k] = v.item()
        with self._write():
            row = self.db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
            if row is None:
                raise StoreError(f"run {run_id} does not exist")
            if row[0] != "running":
                raise StoreError(f"run {run_id} is already {row[0]}; a finished run is never overwritten")
            self.db["runs"].update(run_id, values, alter=True)

    @_writes
    def finish_run(self, run_id: int, results: dict) -> None:
        """Record a run's results and mark it ``ok``."""
        self._update_running(run_id, {**results, "status": "ok", "finished_at": now()})

    @_writes
    def fail_run(self, run_id: int, error: str, results: dict | None = None) -> None:
        """Record why a run failed (and whatever it had measured) and mark it ``failed``."""
        self._update_running(run_id, {**(results or {}), "status": "failed", "error": error, "finished_at": now()})

    def mark_interrupted(self, run_ids: Iterable[int] | None = None, reason: str | None = None) -> list[int]:
        """Mark ``running`` rows whose process is gone (on this host) as ``interrupted``: the pid no longer
        exists, is a zombie, or now belongs to a process started after the row was written (a restarted
        server in a container often gets its old pid back; a busy host hands a freed pid to anything).

        With ``run_ids``, those rows are marked whatever their process (used on Ctrl-C and cancel).
        A read-only store marks nothing and returns ``[]``.
        """
        if self.read_only:
            return []
        host, marked = socket.gethostname(), []
        with self._lock:
            rows = self.db.execute("SELECT id, pid, host, created_at FROM runs WHERE status = 'running'").fetchall()
            wanted = set(run_ids) if run_ids is not None else None
            for rid, pid, rhost, created in rows:
                if wanted is not None:
                    if rid not in wanted:
                        continue
                    why = reason or "stopped before it finished"
                elif rhost == host and (ended := run_process_ended(pid, created)):
                    why = reason or ended
                else:
                    continue
                with self._write():
                    cur = self.db.execute(
                        "UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? "
                        "WHERE id = ? AND status = 'running'", [why, now(), rid])
                if cur.rowcount:
                    marked.append(rid)
        return marked

    @staticmethod
    def _select_sql(table: str, where: str | None) -> str:
        """All columns of one of the store's own tables (never a caller's name), oldest first."""
        return f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"

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

    def runs_frame(self, where: str | None = None, params: Iterable | dict | None = None, *,
                   matching: Mapping[str, Any] | None = None):
        """The run log as a pandas DataFrame: one row per run, every column, JSON left as text, oldest first.
        Select with a parameterised ``where`` clause, or with ``matching`` column values (None matches NULL):
        ``runs_frame(matching={"status": "ok", "sweep_id": 3})``."""
        import pandas as pd

        with self._reading():
            where, params = self._matching(where, params, matching)
            return pd.read_sql_query(self._select_sql("runs", where), self.db.conn, params=params)

    def runs_version(self) -> tuple:
        """Changes whenever a run starts or finishes: (count, max id, last finish time, runs still running)."""
        with self._reading():
            return tuple(self.db.execute(
                "SELECT count(*), max(id), max(finished_at), sum(status = 'running') FROM runs").fetchone())

    def run_count(self) -> int:
        with self._reading():
            return self.db["runs"].count

    def export_csv(self, path: str | Path, where: str | None = None, params: Iterable | dict | None = None, *,
                   matching: Mapping[str, Any] | None = None) -> int:
        """Write every column of the selected runs (as ``runs_frame`` selects them) to CSV, atomically;
        returns the number of rows.

        Not a study write, so a read-only store does it too. Refuses a NUL byte, an over-long name, a link
        or folder as the target, and the study's own database file.
        """
        with _unsafe_as_store_error():
            path = file_target(path, "CSV file")
        if path.exists() and path.samefile(self.path):
            raise StoreError(f"{path} is the study's database; export the CSV somewhere else")
        frame = self.runs_frame(where, params, matching=matching)
        with replace_atomically(path) as tmp:
            frame.to_csv(tmp, index=False)
        return len(frame)

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
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        target = self.image_path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with replace_atomically(target) as tmp:
                tmp.write_bytes(data)
        with self._write():
            self.db["images"].insert({"hash": digest, "width": image.shape[1], "height": image.shape[0],
                                      "n_bytes": len(data), "created_at": now()}, ignore=True)
        return digest

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
        """Take over an unfinished sweep in this process (after its previous process died)."""
        with self._write():
            self.db.execute("UPDATE sweeps SET pid = ?, status = 'running', finished_at = NULL WHERE id = ?",
                            [os.getpid(), sweep_id])

    @_writes
    def finish_sweep(self, sweep_id: int, status: str = "done") -> None:
        if status not in ("done", "cancelled", "failed"):
            raise StoreError(f"sweep status {status!r} is not one of done, cancelled, failed")
        with self._write():
            self.db.execute("UPDATE sweeps SET status = ?, finished_at = ? WHERE id = ?", [status, now(), sweep_id])

    def sweep_runs(self, sweep_id: int) -> list[dict]:
        return self.runs("sweep_id = ?", [sweep_id])
