"""The run store on a real SQLite file: migrations, lifecycle, no overwrites, images, references, CSV,
read-only (demo) mode, and paths from outside."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from studio_core.errors import StoreError, StoreReadOnly
from studio_core.store.schema import migrations
from studio_core.store.store import RunStore

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {"model": "emoji-sd", "prompts": ["sun", "pizza"], "seeds": [0, 1], "steps": 4, "sampler": "DDIM",
          "guidance": 3.0, "knobs": {}, "precision": "fp32"}


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "study")
    yield s
    s.close()


def test_fresh_store_has_schema_wal_and_busy_timeout(store):
    assert store.read_only is False
    assert store.schema_version == len(migrations._migrations) >= 1
    assert not migrations.pending(store.db)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert {"runs", "refs", "sweeps", "images"} <= set(store.db.table_names())
    assert store.integrity_check() == "ok"


def test_reopening_applies_no_migration_twice(tmp_path):
    a = RunStore(tmp_path)
    rid = a.start_run(CONFIG, config_hash="h1")
    a.close()
    b = RunStore(tmp_path)
    assert b.schema_version == len(migrations._migrations)
    assert b.get_run(rid)["status"] == "running"
    assert b.db.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == len(migrations._migrations)


def test_run_lifecycle_and_config_columns(store):
    rid = store.start_run(CONFIG, config_hash="abc", knobs_label="")
    row = store.get_run(rid)
    assert (row["status"], row["sampler"], row["steps"], row["n_images"]) == ("running", "DDIM", 4, 4)
    assert row["prompts"] == ["sun", "pizza"] and row["config_json"]["guidance"] == 3.0
    store.finish_run(rid, {"latency_median_ms": 12.5, "latencies_ms": [12.0, 12.5, 13.0], "psnr": 30.0})
    row = store.get_run(rid)
    assert row["status"] == "ok" and row["latencies_ms"] == [12.0, 12.5, 13.0] and row["finished_at"]


def test_finished_runs_are_never_overwritten(store):
    rid = store.start_run(CONFIG, config_hash="abc")
    store.finish_run(rid, {"psnr": 30.0})
    with pytest.raises(StoreError, match="already ok"):
        store.finish_run(rid, {"psnr": 99.0})
    with pytest.raises(StoreError, match="already ok"):
        store.fail_run(rid, "late failure")
    assert store.get_run(rid)["psnr"] == 30.0
    with pytest.raises(StoreError, match="does not exist"):
        store.finish_run(12345, {})


def test_failed_run_keeps_reason_and_partial_results(store):
    rid = store.start_run(CONFIG, config_hash="abc")
    store.fail_run(rid, "ModelLoadError: weights are corrupt", {"load_ms": 5.0})
    row = store.get_run(rid)
    assert (row["status"], row["error"], row["load_ms"]) == ("failed", "ModelLoadError: weights are corrupt", 5.0)


def test_running_rows_of_dead_processes_are_marked_interrupted(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    rid_dead = store.start_run(CONFIG, config_hash="a")
    rid_alive = store.start_run(CONFIG, config_hash="b")
    store.db.execute("UPDATE runs SET pid = ? WHERE id = ?", [dead_pid, rid_dead])
    assert store.mark_interrupted() == [rid_dead]
    row = store.get_run(rid_dead)
    assert row["status"] == "interrupted" and f"process {dead_pid} ended" in row["error"]
    assert store.get_run(rid_alive)["status"] == "running"  # our own process is alive


def test_images_are_content_addressed_png_and_round_trip(store):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    h1, h2 = store.put_images([img, img.copy()])
    assert h1 == h2 and store.image_path(h1).is_file()
    assert np.array_equal(store.load_image(h1), img)
    assert store.db["images"].count == 1
    for bad in ("../../etc/passwd", "a" * 63, "A" * 64, "0" * 63 + "\x00"):
        with pytest.raises(StoreError, match="not an image hash"):
            store.image_path(bad)
    with pytest.raises(StoreError, match="expected an"):
        store.put_image(np.zeros((4, 4), dtype=np.float32))


def test_references_are_insert_only(store):
    ref_id = store.put_reference("k1", config={"steps": 200}, images=["x"], model_fingerprint="f", generate_ms=1.0)
    with pytest.raises(StoreError, match="already exists"):
        store.put_reference("k1", config={"steps": 1}, images=["y"], model_fingerprint="f", generate_ms=1.0)
    ref = store.get_reference("k1")
    assert ref["id"] == ref_id and ref["config_json"] == {"steps": 200} and ref["images"] == ["x"]
    assert store.get_reference("other") is None


def test_export_csv_has_every_column_and_row(store, tmp_path):
    ids = [store.start_run({**CONFIG, "steps": s}, config_hash=str(s)) for s in (2, 4, 8)]
    store.finish_run(ids[0], {"psnr": 20.0})
    store.fail_run(ids[1], "boom")
    n = store.export_csv(tmp_path / "runs.csv")
    frame = pd.read_csv(tmp_path / "runs.csv")
    assert n == 3 and list(frame["id"]) == ids
    assert list(frame["status"]) == ["ok", "failed", "running"]
    assert set(store.db["runs"].columns_dict) == set(frame.columns)
    assert store.export_csv(tmp_path / "ok.csv", "status = ?", ["ok"]) == 1
    assert store.export_csv(tmp_path / "failed.csv", matching={"status": "failed", "steps": 4}) == 1


def test_the_readers_the_views_use(store):
    v0 = store.runs_version()
    rid = store.start_run(CONFIG, config_hash="x")
    v1 = store.runs_version()
    store.finish_run(rid, {"latency_median_ms": 5.0, "per_image_ms": 5.0, "psnr": 20.0})
    v2 = store.runs_version()
    assert len({v0, v1, v2}) == 3  # a start and a finish both change the version the Frontier polls
    failed = store.start_run({**CONFIG, "steps": 8, "prompt_set": "emoji-4"}, config_hash="y")
    store.fail_run(failed, "out of memory: test")
    assert store.run_count() == 2
    assert list(store.runs_frame(matching={"status": "ok"})["id"]) == [rid]
    assert list(store.runs_frame(matching={"status": "failed", "model": "emoji-sd"})["error"]) == [
        "out of memory: test"]
    assert list(store.runs_frame(matching={"prompt_set": None})["id"]) == [rid]  # None matches NULL
    assert store.runs_frame(matching={"model": "other"}).empty and len(store.runs_frame(matching={})) == 2
    with pytest.raises(StoreError, match="cannot filter runs on 'status; DROP TABLE runs'"):
        store.runs_frame(matching={"status; DROP TABLE runs": "ok"})
    with pytest.raises(TypeError, match="not both"):
        store.runs_frame("status = ?", ["ok"], matching={"model": "emoji-sd"})
    assert store.reference_config(None) is None and store.reference_config(99) is None
    store.put_reference("k", config={"sampler": "DPM++ 2M", "steps": 10}, images=[], model_fingerprint="f",
                        generate_ms=12.0)
    assert store.reference_config(1) == {"sampler": "DPM++ 2M", "steps": 10, "generate_ms": 12.0, "id": 1}


def test_integrity_of_a_file_before_it_is_opened(store, tmp_path):
    assert RunStore.check_integrity(store.path) == "ok"
    assert RunStore.check_integrity(tmp_path / "none" / "studio.db") == "new study"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "studio.db").write_bytes(b"not a database, only text " * 100)
    assert "not a database" in RunStore.check_integrity(junk / "studio.db")
    with pytest.raises(StoreError, match=f"cannot open {junk / 'studio.db'}: file is not a database"):
        RunStore(junk)


def test_two_processes_write_the_same_store(tmp_path):
    code = ("import sys; from studio_core.store.store import RunStore; s = RunStore(sys.argv[1]);"
            "[s.finish_run(s.start_run({'steps': i}, config_hash=str(i)), {'psnr': float(i)}) for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    s = RunStore(tmp_path)
    assert s.db.execute("SELECT count(*), count(DISTINCT id) FROM runs WHERE status = 'ok'").fetchone() == (120, 120)
    assert s.integrity_check() == "ok"


# ---------------------------------------------------------------- read-only (demo) mode
def _small_study(path) -> tuple[RunStore, dict]:
    """A study with one finished run (with an image and a reference), one running run and one sweep."""
    s = RunStore(path)
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    digest = s.put_image(img)
    ref = s.put_reference("k1", config={"steps": 50}, images=[digest], model_fingerprint="f", generate_ms=1.0)
    sweep = s.create_sweep(sweep_key="sk", name="ladder", preset="p.yaml", question="q", config={}, n_total=1)
    done = s.start_run(CONFIG, config_hash="a", sweep_id=sweep, sweep_index=0)
    s.finish_run(done, {"images": [digest], "reference_id": ref, "psnr": 31.0})
    running = s.start_run(CONFIG, config_hash="b")
    return s, {"img": img, "digest": digest, "ref": ref, "sweep": sweep, "done": done, "running": running}


def test_read_only_refuses_every_write_and_leaves_the_file_unchanged(tmp_path):
    s, ids = _small_study(tmp_path / "study")
    s.close()
    before = (tmp_path / "study" / "studio.db").read_bytes()
    ro = RunStore(tmp_path / "study", read_only=True)
    assert ro.read_only is True
    writes = {
        "start_run": lambda: ro.start_run(CONFIG, config_hash="c"),
        "finish_run": lambda: ro.finish_run(ids["running"], {"psnr": 1.0}),
        "fail_run": lambda: ro.fail_run(ids["running"], "boom"),
        "put_image": lambda: ro.put_image(ids["img"]),
        "put_images": lambda: ro.put_images([ids["img"]]),
        "put_reference": lambda: ro.put_reference("k2", config={}, images=[], model_fingerprint="f", generate_ms=1.0),
        "create_sweep": lambda: ro.create_sweep(sweep_key="s2", name="n", preset="p", question="", config={},
                                                n_total=1),
        "claim_sweep": lambda: ro.claim_sweep(ids["sweep"]),
        "finish_sweep": lambda: ro.finish_sweep(ids["sweep"]),
    }
    for name, write in writes.items():
        with pytest.raises(StoreReadOnly, match=rf"open read-only \(demo mode\): {name} is refused"):
            write()
    assert ro.mark_interrupted() == [] and ro.mark_interrupted([ids["running"]]) == []
    # reading, and the CSV (not a study write), still work
    assert ro.get_run(ids["done"])["psnr"] == 31.0 and ro.get_run(ids["running"])["status"] == "running"
    assert np.array_equal(ro.load_image(ids["digest"]), ids["img"])
    assert ro.get_reference("k1")["id"] == ids["ref"] and ro.get_sweep(ids["sweep"])["status"] == "running"
    assert ro.export_csv(tmp_path / "runs.csv") == 2 and len(pd.read_csv(tmp_path / "runs.csv")) == 2
    assert ro.integrity_check() == "ok" and ro.schema_version == len(migrations._migrations)
    ro.close()
    assert (tmp_path / "study" / "studio.db").read_bytes() == before


def test_read_only_reads_a_wal_study_while_its_writer_is_open(tmp_path):
    writer, ids = _small_study(tmp_path)
    assert (tmp_path / "studio.db-wal").stat().st_size > 0  # the runs are still in the write-ahead log
    ro = RunStore(tmp_path, read_only=True)
    assert [r["id"] for r in ro.runs()] == [ids["done"], ids["running"]]
    writer.finish_run(ids["running"], {"psnr": 20.0})
    assert ro.get_run(ids["running"])["status"] == "ok"  # each read sees the latest commit
    ro.close()
    writer.close()


def test_read_only_adds_no_side_file_to_a_closed_study_and_follows_a_writer_that_opens_later(tmp_path):
    """No process has the WAL study open, so it is read as it stands (no -wal/-shm made); a writer that
    starts afterwards is seen, whether it is still open or already closed at the next read."""
    s, ids = _small_study(tmp_path)
    s.close()
    before = (tmp_path / "studio.db").read_bytes()
    ro = RunStore(tmp_path, read_only=True)
    assert [r["id"] for r in ro.runs()] == [ids["done"], ids["running"]] and ro.integrity_check() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "studio.db"]
    assert (tmp_path / "studio.db").read_bytes() == before
    writer = RunStore(tmp_path)
    added = writer.start_run(CONFIG, config_hash="c")
    assert ro.runs()[-1]["id"] == added  # through the writer's log
    writer.finish_run(added, {"psnr": 25.0})
    assert ro.get_run(added)["psnr"] == 25.0
    ro.close()
    writer.close()
    ro = RunStore(tmp_path, read_only=True)
    writer = RunStore(tmp_path)
    late = writer.start_run(CONFIG, config_hash="d")
    writer.close()  # checkpointed into the main file, log removed, before the reader looks again
    assert ro.runs()[-1]["id"] == late
    ro.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "studio.db"]


def test_read_only_missing_folder_or_database_is_named_and_nothing_is_created(tmp_path):
    with pytest.raises(StoreError, match=f"study folder {tmp_path / 'nope'} does not exist"):
        RunStore(tmp_path / "nope", read_only=True)
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=f"study folder {tmp_path / 'empty'} has no database studio.db"):
        RunStore(tmp_path / "empty", read_only=True)
    assert list((tmp_path / "empty").iterdir()) == []
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "studio.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="cannot read .*studio.db: file is not a database .*restore it from a copy"):
        RunStore(tmp_path / "junk", read_only=True)


def test_read_only_refuses_an_older_or_newer_schema(tmp_path):
    import sqlite_utils

    (tmp_path / "old").mkdir()
    old = sqlite_utils.Database(tmp_path / "old" / "studio.db")  # a study from before the first migration
    old["runs"].insert({"id": 1})
    old.close()
    with pytest.raises(StoreError, match=f"has schema version 0 and this studio expects {len(migrations._migrations)}; "
                                         "open it once read-write"):
        RunStore(tmp_path / "old", read_only=True)
    RunStore(tmp_path / "new").close()
    new = sqlite_utils.Database(tmp_path / "new" / "studio.db")
    new["_sqlite_migrations"].insert({"migration_set": "studio", "name": "m999_future", "applied_at": "x"})
    new.close()
    with pytest.raises(StoreError, match="written by a newer studio \\(migrations m999_future are unknown here\\)"):
        RunStore(tmp_path / "new", read_only=True)


def test_a_study_from_before_the_quarantine_table_still_opens_read_only(store):
    """Bundles published before ``m002_quarantine`` stay demos: a reader never reads that table."""
    store.start_run({"model": "m"}, config_hash="h")
    store.db.execute("DROP TABLE quarantine")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_quarantine'")
    store.close()
    ro = RunStore(store.data_dir, read_only=True)
    assert len(ro.runs()) == 1 and ro.schema_version == len(migrations._migrations) - 1
    ro.close()


@pytest.fixture
def open_tmp():
    """A temporary folder that other users can enter (pytest's own is private to us)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="studio-ro-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


def _run_without_write_access(folder: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` (with ``folder`` as argv[1]) in a Python that may not write ``folder``: as user nobody
    when we are root (root writes anywhere), else after taking the write bits off."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv is needed to drop root for this test")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        reach = subprocess.run(prefix + [sys.executable, "-c", "import studio_core.store.store"], capture_output=True,
                               text=True, env=env, cwd="/", timeout=120)
        if reach.returncode != 0:  # e.g. a checkout inside a folder only root may enter (mktemp -d is 0700)
            pytest.skip(f"user nobody cannot import the studio from {ROOT}: {reach.stderr.strip().splitlines()[-1]}")
    folder.chmod(0o555)
    for f in folder.iterdir():
        f.chmod(0o444)
    probe = "import os, sys; assert not os.access(sys.argv[1], os.W_OK), 'folder is writable'\n"
    return subprocess.run(prefix + [sys.executable, "-c", probe + code, str(folder)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


READ_AS_DEMO = """
from studio_core.store.store import RunStore
from studio_core.errors import StoreReadOnly
s = RunStore(sys.argv[1], read_only=True)
print(len(s.runs()), s.integrity_check())
try:
    s.start_run({}, config_hash="x")
except StoreReadOnly as exc:
    print(exc)
"""


@pytest.mark.parametrize("writer_open", [False, True], ids=["closed-no-wal-files", "writer-open-wal-files"])
def test_read_only_opens_a_wal_study_in_a_folder_it_cannot_write(open_tmp, writer_open):
    study = open_tmp / "study"
    writer, _ = _small_study(study)
    if not writer_open:
        writer.close()
        assert sorted(p.name for p in study.iterdir()) == ["images", "studio.db"]
    files = sorted(p.name for p in study.iterdir())
    out = _run_without_write_access(study, READ_AS_DEMO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "2 ok" and "start_run is refused" in out.stdout
    assert sorted(p.name for p in study.iterdir()) == files
    if writer_open:
        writer.close()


def test_read_only_reads_the_log_a_killed_writer_left_in_a_folder_it_cannot_write(open_tmp):
    """A writer that died left data in the -wal but no -shm: a reader that may not write the folder reads it
    from a private snapshot, and makes nothing there."""
    crash = ("import os, sys; from studio_core.store.store import RunStore; s = RunStore(sys.argv[1]);"
             "s.db.execute('PRAGMA wal_autocheckpoint = 0'); s.start_run({'steps': 1}, config_hash='x'); os._exit(0)")
    subprocess.run([sys.executable, "-c", crash, str(open_tmp / "study")], check=True, cwd=ROOT, timeout=120)
    (open_tmp / "study" / "studio.db-shm").unlink()
    files = sorted(p.name for p in (open_tmp / "study").iterdir())
    out = _run_without_write_access(open_tmp / "study", READ_AS_DEMO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "1 ok" and "start_run is refused" in out.stdout  # 1 run, integrity ok
    assert sorted(p.name for p in (open_tmp / "study").iterdir()) == files


# ---------------------------------------------------------------- paths from outside
def test_linked_image_file_or_folder_is_refused(store, tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    digest = store.put_image(img)
    path = store.image_path(digest)
    elsewhere = tmp_path / "elsewhere.png"
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)  # same bytes, but a link: never followed
    with pytest.raises(StoreError, match="is a symbolic link"):
        store.load_image(digest)
    path.unlink()
    shutil.move(path.parent, tmp_path / "folder")
    path.parent.symlink_to(tmp_path / "folder")
    shutil.move(elsewhere, tmp_path / "folder" / path.name)
    with pytest.raises(StoreError, match=f"{path.parent} is a symbolic link"):
        store.image_path(digest)


def test_export_csv_refuses_unsafe_targets(store, tmp_path):
    store.start_run(CONFIG, config_hash="a")
    (tmp_path / "real.csv").write_text("keep me")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    (tmp_path / "folder.csv").mkdir()
    for target, why in [(tmp_path / "a\x00b.csv", "NUL byte"), (tmp_path / ("x" * 300 + ".csv"), "304 bytes"),
                        (tmp_path / "link.csv", "is a symbolic link"), (tmp_path / "folder.csv", "is a folder"),
                        (store.path, "is the study's database")]:
        with pytest.raises(StoreError, match=why):
            store.export_csv(target)
    assert (tmp_path / "real.csv").read_text() == "keep me" and store.integrity_check() == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.csv", "link.csv", "real.csv", "study"]
