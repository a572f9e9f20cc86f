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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import sqlite_utils
from sqlite_utils.migrations import Migrations

__all__ = ["DEFAULT_DATA_DIR", "RunStore", "StoreError", "migrations", "now"]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
RUN_STATUSES = ("running", "ok", "failed", "interrupted")
JSON_COLUMNS = ("prompts", "seeds", "knobs", "latencies_ms", "knob_report", "images", "config_json", "env_json")

migrations = Migrations("studio")


class StoreError(RuntimeError):
    """A store operation that would lose or overwrite data, or a missing row/file."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create({
        # identity and lifecycle
        "id": int, "created_at": str, "finished_at": str, "status": str, "error": str,
        "pid": int, "host": str, "sweep_id": int, "sweep_index": int,
        # configuration: every RunSpec field as a column, plus the whole spec as JSON
        "config_hash": str, "config_json": str, "model": str, "model_path": str, "model_fingerprint": str,
        "pipeline_class": str, "prompt_set": str, "prompts": str, "n_prompts": int, "seeds": str,
        "n_images": int, "steps": int, "sampler": str, "scheduler_class": str, "timestep_spacing": str,
        "guidance": float, "height": int, "width": int, "batch_size": int, "precision": str, "device": str,
        "knobs": str, "knobs_label": str, "warmup": int, "repeats": int,
        # timing (milliseconds; median and spread over the timed repeats)
        "load_ms": float, "cold_ms": float, "latency_median_ms": float, "latency_iqr_ms": float,
        "latency_min_ms": float, "latency_max_ms": float, "latency_mean_ms": float, "latencies_ms": str,
        "per_image_ms": float, "text_encode_ms": float, "denoise_ms": float, "step_mean_ms": float,
        "decode_ms": float, "nfe": int, "repeats_identical": int,
        # memory
        "peak_mem_bytes": int, "mem_baseline_bytes": int, "peak_mem_kind": str,
        # quality against the reference, and prompt fidelity
        "reference_id": int, "psnr": float, "psnr_std": float, "ssim": float, "ssim_std": float,
        "lpips": float, "fidelity_top1": float, "fidelity_top5": float, "fidelity_n": int, "metrics_note": str,
        # what the knobs did, the images, the environment
        "knob_report": str, "knobs_inactive": str, "images": str,
        "device_name": str, "torch_version": str, "diffusers_version": str, "threads": int,
        "git_commit": str, "python_version": str, "env_json": str,
    }, pk="id")
    db["runs"].create_index(["status"])
    db["runs"].create_index(["sweep_id", "sweep_index"])
    db["runs"].create_index(["config_hash"])
    db["refs"].create({
        "id": int, "ref_key": str, "created_at": str, "model_fingerprint": str, "config_json": str,
        "images": str, "generate_ms": float, "env_json": str,
    }, pk="id")
    db["refs"].create_index(["ref_key"], unique=True)
    db["sweeps"].create({
        "id": int, "sweep_key": str, "name": str, "preset": str, "question": str, "config_json": str,
        "n_total": int, "status": str, "pid": int, "created_at": str, "finished_at": str,
    }, pk="id")
    db["sweeps"].create_index(["sweep_key"])
    db["images"].create({"hash": str, "width": int, "height": int, "n_bytes": int, "created_at": str}, pk="hash")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class RunStore:
    """One study's runs, references, sweeps and images. Safe to share between threads."""

    def __init__(self, data_dir: str | Path | None = None):
        self.data_dir = Path(data_dir or os.environ.get("STUDIO_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
        self.images_dir = self.data_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "studio.db"
        import sqlite3

        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self.db.execute("PRAGMA busy_timeout = 30000")
        if self.db.journal_mode != "wal":
            self.db.enable_wal()
        with self._write():  # two processes opening a new study: one creates the schema, the other waits
            migrations.apply(self.db)

    @contextmanager
    def _write(self):
        """One write transaction, taken with BEGIN IMMEDIATE so a busy store is waited for (busy_timeout)
        instead of failing when a read transaction would have to be upgraded; nested uses join it."""
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
        return len(migrations.applied(self.db))

    def integrity_check(self) -> str:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        self.db.conn.close()

    # ---------------------------------------------------------------- runs
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

    def finish_run(self, run_id: int, results: dict) -> None:
        """Record a run's results and mark it ``ok``."""
        self._update_running(run_id, {**results, "status": "ok", "finished_at": now()})

    def fail_run(self, run_id: int, error: str, results: dict | None = None) -> None:
        """Record why a run failed (and whatever it had measured) and mark it ``failed``."""
        self._update_running(run_id, {**(results or {}), "status": "failed", "error": error, "finished_at": now()})

    def mark_interrupted(self, run_ids: Iterable[int] | None = None, reason: str | None = None) -> list[int]:
        """Mark ``running`` rows whose process is gone (on this host) as ``interrupted``.

        With ``run_ids``, those rows are marked whatever their process (used on Ctrl-C and cancel).
        """
        import psutil

        host, marked = socket.gethostname(), []
        with self._lock:
            rows = self.db.execute("SELECT id, pid, host FROM runs WHERE status = 'running'").fetchall()
            wanted = set(run_ids) if run_ids is not None else None
            for rid, pid, rhost in rows:
                if wanted is not None:
                    if rid not in wanted:
                        continue
                    why = reason or "stopped before it finished"
                elif rhost == host and not (pid and psutil.pid_exists(pid) and pid != 0):
                    why = reason or f"process {pid} ended during the run (killed or crashed)"
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

    def _select(self, table: str, where: str | None = None, params: Iterable | dict | None = None) -> list[dict]:
        with self._lock:
            return [self._decode(r) for r in self.db.query(self._select_sql(table, where), params or [])]

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

    def runs_frame(self, where: str | None = None, params: Iterable | dict | None = None):
        """The run log as a pandas DataFrame: one row per run, every column, JSON left as text."""
        import pandas as pd

        with self._lock:
            return pd.read_sql_query(self._select_sql("runs", where), self.db.conn, params=params)

    def export_csv(self, path: str | Path, where: str | None = None, params: Iterable | dict | None = None) -> int:
        """Write every column of the selected runs to CSV (atomically); returns the number of rows."""
        frame = self.runs_frame(where, params)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
        return len(frame)

    # ---------------------------------------------------------------- images
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
            tmp = target.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        with self._write():
            self.db["images"].insert({"hash": digest, "width": image.shape[1], "height": image.shape[0],
                                      "n_bytes": len(data), "created_at": now()}, ignore=True)
        return digest

    def put_images(self, images: Iterable[np.ndarray]) -> list[str]:
        return [self.put_image(im) for im in images]

    def image_path(self, digest: str) -> Path:
        """The file of an image hash; refuses anything that is not a 64-hex-digit hash."""
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise StoreError(f"not an image hash: {str(digest)[:80]!r}")
        return self.images_dir / digest[:2] / f"{digest}.png"

    def load_image(self, digest: str) -> np.ndarray:
        from PIL import Image

        path = self.image_path(digest)
        if not path.is_file():
            raise StoreError(f"image {digest} is missing from {self.images_dir}")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def load_images(self, digests: Iterable[str]) -> np.ndarray:
        return np.stack([self.load_image(d) for d in digests])

    # ---------------------------------------------------------------- references
    def get_reference(self, ref_key: str) -> dict | None:
        rows = self._select("refs", "ref_key = ?", [ref_key])
        return rows[0] if rows else None

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

    def claim_sweep(self, sweep_id: int) -> None:
        """Take over an unfinished sweep in this process (after its previous process died)."""
        with self._write():
            self.db.execute("UPDATE sweeps SET pid = ?, status = 'running', finished_at = NULL WHERE id = ?",
                            [os.getpid(), sweep_id])

    def finish_sweep(self, sweep_id: int, status: str = "done") -> None:
        if status not in ("done", "cancelled", "failed"):
            raise StoreError(f"sweep status {status!r} is not one of done, cancelled, failed")
        with self._write():
            self.db.execute("UPDATE sweeps SET status = ?, finished_at = ? WHERE id = ?", [status, now(), sweep_id])

    def sweep_runs(self, sweep_id: int) -> list[dict]:
        return self.runs("sweep_id = ?", [sweep_id])
