"""Full disks: a run the disk has no room for is refused before its row; a write refused mid-run fails the
run with that reason, and the failure reaches the database when space returns, or at the next start.

The faults are real where the machine allows: the database is made unable to grow with SQLite's own
``max_page_count`` (it answers ``SQLITE_FULL``, "database or disk is full", as for a full disk), and, when
this process may mount one, a small tmpfs study is filled up by a ballast file mid-run. Only the free-space
reading and the image file write of one test are replaced (a disk that reports little space, an ``ENOSPC``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CAPTIONS

from studio_core.errors import NoSpace, StoreError
from studio_core.measure.engine import Engine
from studio_core.store import pending
from studio_core.store import store as store_module
from studio_core.store.space import MARGIN_BYTES
from studio_core.store.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
REF = {"sampler": "DPM++ 2M", "steps": 4}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def engine(tmp_path):
    e = Engine(RunStore(tmp_path / "study"))
    yield e
    e.store.close()


def _spec(model, **kw) -> dict:
    return {"model": str(model), "prompts": ["grinning face"], "seeds": [0, 1], "steps": 2, "guidance": 2.0,
            "repeats": 1, **kw}


def _disk_full_reason(study: Path, cause: str) -> str:
    return (f"the disk of the study folder {study} is full ({cause}) while writing the run's images/rows; "
            "free space, and run again")


def _stored(study: Path, run_id: int) -> tuple:
    """(status, error) of a run as a fresh connection reads the file, and that connection's integrity check."""
    conn = sqlite3.connect(study / "studio.db")
    try:
        row = conn.execute("SELECT status, error FROM runs WHERE id = ?", [run_id]).fetchone()
        return (*row, conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_a_run_the_disk_has_no_room_for_is_refused_before_any_row(engine, tiny_pipeline_dir, monkeypatch, bad_inputs):
    study = engine.store.data_dir
    usage = shutil.disk_usage(study)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=int(1.2 * 2**20)))
    with pytest.raises(NoSpace) as refused:
        engine.run(_spec(tiny_pipeline_dir), reference=REF)
    message = str(refused.value)
    assert message.startswith(f"not enough free space for this run: the study folder {study} has 1.2 MiB free, "
                              "and a run of 2 images at 32x32 px needs up to 32.")
    assert "(images, its reference's images and rows, plus a 32.0 MiB margin)" in message
    assert message.endswith("Free some space or use another study folder (--data-dir)")
    assert engine.store.run_count() == 0 and engine.store.db["refs"].count == 0
    bad_inputs.append(("engine (page, API, CLI)", "a run on a study disk with 1.2 MiB free", message))


def test_a_database_that_cannot_grow_mid_run_fails_the_run_and_the_row_follows_when_space_returns(
        engine, tiny_pipeline_dir):
    store, study = engine.store, engine.store.data_dir

    def disk_fills_up(stage: str) -> None:  # after the run's images: the reference's rows need new pages
        if stage == "scoring":
            store.db.execute("VACUUM")  # no free page left inside the file either
            pages = store.db.execute("PRAGMA page_count").fetchone()[0]
            store.db.execute(f"PRAGMA max_page_count = {int(pages)}")

    # 50 images: their index rows and the failed row's image list need pages the file may not add
    r = engine.run(_spec(tiny_pipeline_dir, prompts=TINY_CAPTIONS, seeds=list(range(10))), reference=REF,
                   on_stage=disk_fills_up)
    reason = _disk_full_reason(study, "database or disk is full")
    assert r.status == "failed" and r.error == f"{reason}; {pending.WAITING_NOTE}"
    assert r.row["status"] == "failed" and len(r.row["images"]) == 50  # what it measured is kept with it
    assert _stored(study, r.run_id) == ("running", None, "ok")  # nothing written while the disk is full
    assert store.flush_pending() == [] and _stored(study, r.run_id)[0] == "running"
    with pytest.raises(StoreError, match=f"run {r.run_id} is already failed .*never overwritten"):
        store.cancel_run(r.run_id, "a second outcome for the same run")

    store.db.execute("PRAGMA max_page_count = 1073741823")  # space returns
    assert store.flush_pending() == [r.run_id]
    assert _stored(study, r.run_id) == ("failed", reason, "ok")
    assert store.get_run(r.run_id)["images"] == r.row["images"] and store.get_run_with_pending(r.run_id)["error"] == reason


CHILD = """
import os, signal, sys
from studio_core.store.store import RunStore

store = RunStore(sys.argv[1])
failing, cut_off = (store.start_run({"steps": 1}, config_hash=str(i)) for i in range(2))
pages = store.db.execute("PRAGMA page_count").fetchone()[0]
store.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
assert store.fail_run(failing, sys.argv[2], {"metrics_note": "measured " * 20000}) is False
print(failing, cut_off, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies before space returns: no flush, no atexit
"""


def test_a_study_reopened_after_its_process_died_on_a_full_disk_gets_the_recorded_failure(tmp_path):
    study, reason = tmp_path / "study", _disk_full_reason(tmp_path / "study", "database or disk is full")
    child = subprocess.run([sys.executable, "-c", CHILD, str(study), reason], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert child.returncode == -9, child.stderr
    failing, cut_off = map(int, child.stdout.split())
    assert _stored(study, failing)[0] == "running" and (study / pending.SIDECAR).is_file()

    store = RunStore(study)
    try:
        assert sorted(store.mark_interrupted()) == [failing, cut_off]
        assert _stored(study, failing) == ("failed", reason, "ok")
        assert store.get_run(failing)["metrics_note"] == "measured " * 20000
        status, error, _ = _stored(study, cut_off)  # no recorded outcome: its process ended, as before
        assert status == "interrupted" and "process" in error
        assert not (study / pending.SIDECAR).exists()
    finally:
        store.close()


def test_no_space_for_the_images_fails_the_run_with_the_disk_full_reason(engine, tiny_pipeline_dir, monkeypatch):
    @contextlib.contextmanager
    def full_disk(target: Path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        yield  # never reached: the yield makes this a generator, so that it is a context manager

    monkeypatch.setattr(store_module, "replace_atomically", full_disk)
    r = engine.run(_spec(tiny_pipeline_dir), reference=REF)
    reason = _disk_full_reason(engine.store.data_dir, "No space left on device")
    assert r.status == "failed" and r.error == reason
    assert _stored(engine.store.data_dir, r.run_id) == ("failed", reason, "ok")


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int):
    """A tmpfs of ``size_mib`` MiB mounted at ``path``; skips the test where this process may not mount."""
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until its disk has no byte left (ENOSPC at the smallest write)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (2**20, 2**12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)


def test_a_real_disk_filled_up_mid_run_fails_the_run_and_the_row_follows_when_space_returns(
        tiny_pipeline_dir, tmp_path):
    with tmpfs(tmp_path / "disk", MARGIN_BYTES // 2**20 + 8) as disk:
        study, ballast = disk / "study", disk / "ballast"
        engine = Engine(RunStore(study))
        try:
            r = engine.run(_spec(tiny_pipeline_dir), reference=REF,
                           on_stage=lambda stage: stage == "scoring" and fill(ballast))  # the reference's images
            reason = _disk_full_reason(study, "No space left on device")
            assert r.status == "failed" and r.error.startswith(reason), r.error
            ballast.unlink()  # space returns
            engine.store.flush_pending()
            assert _stored(study, r.run_id) == ("failed", reason, "ok")
        finally:
            engine.store.close()
