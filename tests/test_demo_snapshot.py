"""Demo mode never writes into the folder it serves, also while a writer holds the study in WAL mode.

A writer process (a child Python holding ``RunStore(dir)`` open, writing runs on request and answering on
stdout) keeps the study live with its ``-wal`` and ``-shm``; or it is killed with ``kill -9`` and its
``-shm`` removed, as a copy made without it. A read-only store (and ``app.py --demo`` on the live study)
reads every run, follows the writer's later commits, and leaves every file of the folder as it was: names,
sizes, modification times and content.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from live import free_port, load_app_main

from studio_core.store.store import RunStore

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys
import numpy as np
from studio_core.store.store import RunStore

store = RunStore(sys.argv[1])
image = store.put_image(np.full((8, 8, 3), 200, np.uint8))
config = {"model": "emoji-sd", "prompts": ["sun"], "seeds": [0], "steps": 4, "sampler": "DDIM", "guidance": 3.0}
for line in sys.stdin:  # a number: write that many finished runs, then print their ids
    ids = []
    for _ in range(int(line)):
        rid = store.start_run(config, config_hash="h")
        store.finish_run(rid, {"images": [image], "psnr": 30.0, "latency_median_ms": 5.0})
        ids.append(rid)
    print(image, *ids, flush=True)
store.close()
"""


class Writer:
    """A child process holding the study open for writing; ``write(n)`` returns (image hash, new run ids)."""

    def __init__(self, study: Path, log: Path):
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(study)], cwd=ROOT, text=True,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err)

    def write(self, n: int) -> tuple[str, list[int]]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # the writer answers once its commits are done
        if not line:
            pytest.fail(f"the writer exited with {self.proc.wait()}:\n{self.log.read_text()[-3000:]}")
        image, *ids = line.split()
        return image, [int(i) for i in ids]

    def kill(self) -> None:
        """SIGKILL: the writer's connection is never closed, so its log stays."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.fixture
def writer(tmp_path):
    writers = []

    def start(study: Path) -> Writer:
        writers.append(Writer(study, tmp_path / f"writer{len(writers)}.log"))
        return writers[-1]

    yield start
    for w in writers:
        if w.proc.poll() is None:
            w.kill()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary folder this process's snapshots are made in, so a test can see them removed."""
    path = tmp_path / "private-tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def fingerprint(folder: Path) -> dict:
    """Every file and folder under ``folder``: size, modification time and SHA-256 of the content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(folder))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns, digest)
    return out


def tables_in_main_file(study: Path) -> int:
    """How many tables the main file holds without its log (read immutable: no file is made or touched)."""
    conn = sqlite3.connect(f"{(study / 'studio.db').as_uri()}?immutable=1", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    finally:
        conn.close()


def _reads(ro: RunStore, ids: list[int], image: str) -> None:
    """What the views read: the run log, one run, its image, the frame, the integrity check."""
    assert [r["id"] for r in ro.runs()] == ids
    assert ro.get_run(ids[0])["psnr"] == 30.0 and ro.get_run(ids[0])["images"] == [image]
    assert ro.load_image(image).shape == (8, 8, 3) and len(ro.runs_frame()) == len(ids)
    assert ro.integrity_check() == "ok" and ro.run_count() == len(ids)


def test_a_live_writers_study_is_read_from_a_snapshot_and_follows_the_writer(tmp_path, writer, private_tmp):
    study = tmp_path / "study"
    w = writer(study)
    image, ids = w.write(3)
    assert {"studio.db-wal", "studio.db-shm"} <= {p.name for p in study.iterdir()}
    assert tables_in_main_file(study) == 0  # every table and run lives in the writer's log so far
    before = fingerprint(study)

    ro = RunStore(study, read_only=True)
    for _ in range(3):
        _reads(ro, ids, image)
    assert fingerprint(study) == before
    assert list(private_tmp.iterdir()) == []  # each snapshot's folder is gone as soon as it is read

    _image, added = w.write(1)
    written = fingerprint(study)
    assert written != before
    _reads(ro, ids + added, image)  # the next read sees the commit made before it
    assert ro.get_run(added[0])["status"] == "ok"
    ro.close()
    assert fingerprint(study) == written and list(private_tmp.iterdir()) == []
    w.close()


def test_a_killed_writers_log_without_its_shm_is_read_and_no_file_is_created(tmp_path, writer, private_tmp):
    study = tmp_path / "study"
    w = writer(study)
    image, ids = w.write(4)
    w.kill()
    (study / "studio.db-shm").unlink()  # as a copy made without it
    before = fingerprint(study)
    assert sorted(p.name for p in study.iterdir()) == ["images", "studio.db", "studio.db-wal"]

    ro = RunStore(study, read_only=True)
    for _ in range(3):
        _reads(ro, ids, image)
    assert fingerprint(study) == before
    ro.close()
    assert fingerprint(study) == before and list(private_tmp.iterdir()) == []


def test_app_demo_of_a_live_study_creates_and_changes_no_file(tmp_path, writer):
    """``app.py --demo DIR`` (its own ``main``) on a study a writer holds open, driven with ``gradio_client``."""
    from gradio_client import Client

    study = tmp_path / "live-study"
    w = writer(study)
    _image, ids = w.write(2)
    before = fingerprint(study)
    port, err = free_port(), io.StringIO()
    with contextlib.redirect_stderr(err):
        demo = load_app_main().main(["--demo", str(study), "--port", str(port)], block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        table, _csv = client.predict("(all)", "(all)", "(all)", api_name="/runs")
        assert sorted(int(r[0]) for r in table["data"]) == ids
        card, gallery, _config = client.predict(ids[0], api_name="/run_details")
        assert f"Run {ids[0]}: ok" in card and len(gallery) == 1
        assert fingerprint(study) == before
        _image, added = w.write(1)
        written = fingerprint(study)
        table, _csv = client.predict("(all)", "(all)", "(all)", api_name="/runs")
        assert sorted(int(r[0]) for r in table["data"]) == ids + added
        client.close()
    finally:
        demo.close()
        demo.studio.store.close()
    assert "integrity check ok, 2 runs" in err.getvalue()
    assert fingerprint(study) == written
    w.close()
