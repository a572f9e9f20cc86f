"""Pack a study, or some of its sweeps, into one folder the studio can serve read-only.

A bundle holds::

    studio.db                 the selected runs, the references and sweeps they use, the index rows of
                              their images; this code's migrations; journal_mode=DELETE (no -wal/-shm)
    images/ab/abcdef....png   every image those runs and references show, checked against its hash
    bundle.json               when, from where, at which commit, counts, bytes, SHA-256 of studio.db,
                              and which columns were scrubbed

A bundle is published, so by default it leaves out what only describes the machine that ran the study:
``runs.host`` becomes "", ``runs.pid`` and ``sweeps.pid`` NULL, and a model given as a filesystem path
(``model_path``; ``model`` when it is a path, not the embedded name or a repo id) becomes its last folder
name, the same in every column and JSON text where it appears (``config_json``, error messages). From
``env_json`` it drops any path or host name; the device, library versions, threads and commit stay, since
the figures are honest only with them. An absolute preset path becomes the file's name. ``config_hash``
and ``model_fingerprint`` are hashes and stay. ``keep_paths=True`` copies the rows exactly as stored.

It is built in a hidden folder beside OUT and renamed onto OUT at the end, so OUT is either whole or
absent; the source is opened read-only and its image links are never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tarfile
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from studio_core.errors import StoreError
from studio_core.models import EMBEDDED_MODELS
from studio_core.store.provenance import git_commit
from studio_core.store.safepaths import check_path, file_target, replace_atomically
from studio_core.store.schema import JSON_COLUMNS, migrations, now
from studio_core.store.store import RunStore

__all__ = ["bundle_study"]


def bundle_study(src: RunStore | str | Path, out: str | Path, sweep_ids: Iterable[int] | None = None,
                 archive: bool = False, keep_paths: bool = False) -> dict:
    """Bundle every run of ``src`` (a store, or a study folder opened read-only), or only the runs of
    ``sweep_ids``, into the new or empty folder ``out``; with ``archive``, also write ``out.tar.gz``.
    Host names, pids and model paths are scrubbed (see the module docstring) unless ``keep_paths``.

    Returns the contents of ``bundle.json`` plus ``path`` (and ``archive``, ``archive_bytes``). Raises
    ``UnsafePath`` for an unusable OUT name and ``StoreError`` for anything else, leaving nothing behind.
    """
    # 1. Check inputs: OUT new or empty, the archive name free
    out = Path(os.path.abspath(check_path(out, "bundle folder")))
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise StoreError(f"bundle folder {out} already exists and is not an empty folder")
    tar_path = file_target(out.with_name(out.name + ".tar.gz"), "bundle archive") if archive else None
    if tar_path is not None and tar_path.exists():
        raise StoreError(f"bundle archive {tar_path} already exists")
    store = src if isinstance(src, RunStore) else RunStore(src, read_only=True)
    staging = None
    try:
        # 2. Select the runs, then what they point to
        tables = _select(store, sweep_ids)
        hashes = sorted({h for table in ("runs", "refs") for row in tables[table]
                         for h in json.loads(row["images"] or "[]")})
        tables["images"] = store.raw_rows("images", "hash IN (SELECT value FROM json_each(?))", [json.dumps(hashes)])
        scrubbed = [] if keep_paths else _scrub(tables)

        # 3. Write the database and the images into a hidden folder beside OUT
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(f".bundle-{secrets.token_hex(6)}.partial")
        staging.mkdir()
        _write_db(staging / "studio.db", tables, store)
        files = ["studio.db"]
        for digest in hashes:
            data = store.image_bytes(digest)  # refuses a linked, missing or corrupt image
            files.append(store.image_name(digest))
            (staging / files[-1]).parent.mkdir(parents=True, exist_ok=True)
            (staging / files[-1]).write_bytes(data)
        info = {
            "created_at": now(), "source": store.data_dir.name, "git_commit": git_commit(),
            "schema_version": store.schema_version,
            "sweep_ids": None if sweep_ids is None else [r["id"] for r in tables["sweeps"]],
            "counts": {"runs": len(tables["runs"]), "refs": len(tables["refs"]), "sweeps": len(tables["sweeps"]),
                       "images": len(hashes)},
            "bytes": sum((staging / f).stat().st_size for f in files),
            "studio_db_sha256": hashlib.sha256((staging / "studio.db").read_bytes()).hexdigest(),
            "scrubbed": scrubbed,
        }
        (staging / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        files.append("bundle.json")
        RunStore(staging, read_only=True).close()  # it opens as the demo will open it

        # 4. The archive, then OUT appears whole
        result = {**info, "path": str(out)}
        if tar_path is not None:
            result.update(archive=str(tar_path), archive_bytes=_write_archive(staging, files, tar_path, out.name))
        try:
            os.replace(staging, out)  # onto an empty folder, or a new name
        except BaseException:
            if tar_path is not None:
                tar_path.unlink(missing_ok=True)
            raise
        staging = None
        return result
    except OSError as exc:
        raise StoreError(f"bundle {out} failed: {exc}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if store is not src:
            store.close()


def _select(store: RunStore, sweep_ids: Iterable[int] | None) -> dict[str, list[dict]]:
    """Rows as stored: every run and sweep, or those of ``sweep_ids``; the references those runs use."""
    if sweep_ids is None:
        runs, sweeps = store.raw_rows("runs"), store.raw_rows("sweeps")
    else:
        ids = sorted(set(sweep_ids))
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise StoreError(f"sweep ids must be a non-empty list of integers, not {ids!r}")
        for sweep_id in ids:
            store.get_sweep(sweep_id)  # a missing sweep is an error, not an empty bundle
        runs = store.raw_rows("runs", "sweep_id IN (SELECT value FROM json_each(?))", [json.dumps(ids)])
        sweeps = store.raw_rows("sweeps", "id IN (SELECT value FROM json_each(?))", [json.dumps(ids)])
    ref_ids = sorted({r["reference_id"] for r in runs if r.get("reference_id") is not None})
    refs = store.raw_rows("refs", "id IN (SELECT value FROM json_each(?))", [json.dumps(ref_ids)])
    return {"runs": runs, "refs": refs, "sweeps": sweeps}


def _scrub(tables: dict[str, list[dict]]) -> list[str]:
    """Scrub ``tables``' rows in place (see the module docstring); returns the ``table.column`` names changed."""
    # 1. Every model path the rows name, and the name each becomes
    runs = tables["runs"]
    names: dict[str, str] = {}
    for row in runs:
        if row.get("model_path"):
            names[row["model_path"]] = _last_name(row["model_path"])
        for model in (row.get("model"), _json_model(row.get("config_json"))):
            if _is_model_path(model, row.get("model_path")):
                names[model] = _last_name(model)
    for row in tables["refs"]:
        model = _json_model(row.get("config_json"))
        if _is_model_path(model, None):
            names[model] = _last_name(model)
    hosts = {row["host"] for row in runs if row.get("host")} | {socket.gethostname()}
    # longest first, so a path that begins another is not replaced inside it; only absolute paths are
    # safe to find inside free text
    absolute = sorted((p for p in names if _is_absolute(p)), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.~/\\-])(?:" + "|".join(map(re.escape, absolute)) + r")(?![\w.-])"
                         ) if absolute else None

    def text(value: str) -> str:
        return pattern.sub(lambda m: names[m.group(0)], value) if pattern else value

    def walk(value: Any, env: bool) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if env and isinstance(item, str) and (_is_absolute(item) or item in hosts):
                    continue  # a path or host name in the environment says where, not what, ran
                out[key] = walk(item, env)
            return out
        if isinstance(value, list):
            return [walk(item, env) for item in value]
        if isinstance(value, str):
            return names.get(value) or text(value)
        return value

    # 2. Rewrite each row, column by column
    changed: set[str] = set()
    for table in ("runs", "refs", "sweeps"):
        for row in tables[table]:
            for column, value in row.items():
                new = value
                if column == "pid" and table in ("runs", "sweeps"):
                    new = None
                elif column == "host" and table == "runs":
                    new = None if value is None else ""
                elif column == "model_path" and table == "runs" and value:
                    new = names[value]
                elif column == "preset" and table == "sweeps" and isinstance(value, str) and _is_absolute(value):
                    new = _last_name(value)
                elif isinstance(value, str) and column in JSON_COLUMNS:
                    try:
                        decoded = json.loads(value)
                    except ValueError:
                        new = text(value)
                    else:
                        walked = walk(decoded, env=column == "env_json")
                        if walked != decoded:
                            new = json.dumps(walked, sort_keys=True, default=str)
                elif isinstance(value, str):  # model, error, question, ...
                    new = names.get(value) or text(value)
                if new != value:
                    row[column] = new
                    changed.add(f"{table}.{column}")
    return sorted(changed)


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:[\\/]", path) is not None


def _is_model_path(model: Any, model_path: str | None) -> bool:
    """Whether a run's ``model`` names a folder rather than an embedded model or a repo id (``org/name``):
    an absolute or dotted path, more than one ``/``, or the tail of the folder it resolved to."""
    if not isinstance(model, str) or not model.strip() or model in EMBEDDED_MODELS:
        return False
    if _is_absolute(model) or model.startswith(".") or "\\" in model or model.count("/") > 1:
        return True
    tail = model.strip("/")
    return "/" in tail and bool(model_path) and Path(model_path).as_posix().rstrip("/").endswith("/" + tail)


def _json_model(config_json: str | None) -> Any:
    try:
        config = json.loads(config_json) if config_json else None
    except ValueError:
        return None
    return config.get("model") if isinstance(config, dict) else None


def _last_name(path: str) -> str:
    """``/home/me/models/sd15/`` -> ``sd15``, for POSIX and Windows paths."""
    parts = [p for p in re.split(r"[\\/]", path) if p not in ("", ".", "..", "~")]
    return parts[-1] if parts else "model"


def _write_db(path: Path, tables: dict[str, list[dict]], source: RunStore) -> None:
    """A fresh database with this code's migrations, the source's extra columns, and ``tables``' rows."""
    db = sqlite_utils.Database(path)
    try:
        migrations.apply(db)
        with db.atomic():
            for name, rows in tables.items():
                have = db[name].columns_dict
                for column, kind in source.db[name].columns_dict.items():  # columns runs added with alter=True
                    if column not in have:
                        db[name].add_column(column, kind)
                db[name].insert_all(rows)
        db.execute("PRAGMA journal_mode = DELETE")
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"the bundle database {path} failed its integrity check: {check}")
    finally:
        db.close()


def _write_archive(folder: Path, files: list[str], target: Path, top: str) -> int:
    """``target`` as a gzipped tar of ``files`` (regular files only) under ``top/``; returns its size."""
    with replace_atomically(target) as tmp:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for name in files:
                entry = tar.gettarinfo(folder / name, arcname=f"{top}/{name}")
                if not entry.isreg():
                    raise StoreError(f"{folder / name} is not a regular file")
                entry.uid = entry.gid = 0
                entry.uname = entry.gname = ""
                entry.mode = 0o644
                with open(folder / name, "rb") as fh:
                    tar.addfile(entry, fh)
    return target.stat().st_size
