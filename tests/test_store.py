"""The run store on a real SQLite file: migrations, lifecycle, no overwrites, images, references, CSV."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from studio_core.store import RunStore, StoreError, migrations

CONFIG = {"model": "emoji-sd", "prompts": ["sun", "pizza"], "seeds": [0, 1], "steps": 4, "sampler": "DDIM",
          "guidance": 3.0, "knobs": {}, "precision": "fp32"}


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "study")
    yield s
    s.close()


def test_fresh_store_has_schema_wal_and_busy_timeout(store):
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


def test_two_processes_write_the_same_store(tmp_path):
    code = ("import sys; from studio_core.store import RunStore; s = RunStore(sys.argv[1]);"
            "[s.finish_run(s.start_run({'steps': i}, config_hash=str(i)), {'psnr': float(i)}) for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    s = RunStore(tmp_path)
    assert s.db.execute("SELECT count(*), count(DISTINCT id) FROM runs WHERE status = 'ok'").fetchone() == (120, 120)
    assert s.integrity_check() == "ok"
