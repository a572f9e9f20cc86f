"""Crash safety: the studio server killed with SIGKILL mid-run, restarted on the same study.

The server is the real one (``python app.py``), driven through its API with ``gradio_client``; the
study is read with plain ``sqlite3`` while it runs and after it dies. A kill loses nothing that was
committed, leaves the database sound, and the next start marks the cut-off run ``interrupted``
(also when another process has taken over the dead one's pid) and resumes an unfinished sweep.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from live import free_port, wait_until

from studio_core.errors import SweepBusy
from studio_core.measure.engine import Engine
from studio_core.store.schema import now
from studio_core.store.store import RunStore
from studio_core.study.sweep import run_sweep, sweep_from_dict

ROOT = Path(__file__).resolve().parents[1]
REF = {"sampler": "DPM++ 2M", "steps": 6}
BOOT_S = 240  # a cold server imports gradio, torch and diffusers: slow on a busy 2-core machine
LONG_RUN = {"steps": 20, "repeats": 100}  # minutes of work: the kill always lands inside it


def _small(model, **kw) -> dict:
    return {"model": str(model), "prompts": ["grinning face"], "seeds": [0], "steps": 2, "guidance": 2.0,
            "repeats": 1, **kw}


# ------------------------------------------------------------------------------------ the server
class Server:
    """``python app.py`` on a free port over one study folder; its output goes to a log file."""

    def __init__(self, model: Path, data_dir: Path, log: Path):
        self.port = free_port()
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False",
               "OMP_NUM_THREADS": "1",  # one thread runs the tiny model faster beside a busy machine's other work
               "GRADIO_TEMP_DIR": str(log.parent / "gradio"), "TMPDIR": str(log.parent)}  # left behind by a kill
        with open(log, "wb") as out:
            argv = ["app.py", "--model", str(model), "--data-dir", str(data_dir), "--port", str(self.port)]
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_serving(self) -> None:
        deadline = time.time() + BOOT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        pytest.fail(f"the server did not listen on port {self.port} within {BOOT_S} s:\n{self.tail()}")

    def client(self, downloads: Path):
        from gradio_client import Client

        return Client(f"http://127.0.0.1:{self.port}/", verbose=False, download_files=str(downloads))

    def kill(self) -> None:
        """SIGKILL: no handler, no atexit, no finally runs in the server."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)  # reaped, so the pid is truly gone

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def serving(model: Path, data_dir: Path, tmp: Path, name: str):
    """A started server and a client for it; the process is ended on the way out, whatever happened."""
    work = tmp / name
    work.mkdir()
    server = Server(model, data_dir, work / "server.log")
    client = None
    try:
        server.wait_serving()
        client = server.client(work / "downloads")
        yield server, client
    finally:
        if client is not None:
            client.close()
        server.stop()


# ------------------------------------------------------------------------------------ the study file
def query(db: Path, sql: str, params=()) -> list[dict]:
    """Rows of the study, read without ever writing to it (the server may be running, or dead)."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def wait_for(db: Path, sql: str, server: Server, timeout: float = 180) -> list[dict]:
    """Poll the study until ``sql`` returns a row (the server must stay alive meanwhile)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"the server exited with {server.proc.returncode}:\n{server.tail()}")
        if db.exists():
            try:
                rows = query(db, sql)
            except sqlite3.OperationalError:  # the schema is not there yet
                rows = []
            if rows:
                return rows
        time.sleep(0.05)
    pytest.fail(f"no row for {sql!r} within {timeout} s:\n{server.tail()}")


def integrity(db: Path) -> str:
    return query(db, "PRAGMA integrity_check")[0]["integrity_check"]


def snapshot(db: Path) -> dict[str, list[dict]]:
    """Every finished run, reference and image row, exactly as stored."""
    return {"runs": query(db, "SELECT * FROM runs WHERE status != 'running' ORDER BY id"),
            "refs": query(db, "SELECT * FROM refs ORDER BY id"),
            "images": query(db, "SELECT * FROM images ORDER BY hash")}


def still_there(db: Path, before: dict[str, list[dict]]) -> None:
    """The rows of ``before`` are all there, unchanged, and their image files are intact."""
    now_rows = snapshot(db)
    for table, rows in before.items():
        key = "hash" if table == "images" else "id"
        current = {r[key]: r for r in now_rows[table]}
        assert [current.get(r[key]) for r in rows] == rows, f"{table} rows changed or went missing"
    store = RunStore(db.parent, read_only=True)
    try:
        for row in before["images"]:
            store.image_bytes(row["hash"])  # the file exists and its SHA-256 still matches its name
    finally:
        store.close()


# ------------------------------------------------------------------------------------ the tests
def test_server_killed_mid_generate_keeps_the_study_and_marks_the_run_interrupted(tmp_path, tiny_pipeline_dir):
    data = tmp_path / "study"
    db = data / "studio.db"
    with serving(tiny_pipeline_dir, data, tmp_path, "first") as (server, client):
        # 1. two finished runs (same images as the later ones, so the reference is made once)
        for sampler in ("DDIM", "Euler"):
            client.predict(_small(tiny_pipeline_dir, sampler=sampler), api_name="/generate")
        before = snapshot(db)
        assert [r["status"] for r in before["runs"]] == ["ok", "ok"] and before["refs"] and before["images"]
        # 2. a long generate, killed as soon as its row is written
        client.submit(_small(tiny_pipeline_dir, **LONG_RUN), api_name="/generate")
        running = wait_for(db, "SELECT * FROM runs WHERE status = 'running'", server)
        server.kill()
    # 3. the file as the dead server left it: sound, nothing lost, the cut-off run still 'running'
    assert integrity(db) == "ok"
    still_there(db, before)
    assert query(db, "SELECT * FROM runs WHERE status = 'running'") == running
    killed = running[0]
    assert killed["pid"] == server.pid and killed["steps"] == LONG_RUN["steps"]

    # 4. a restart on the same folder marks it interrupted, naming the dead process, and generates again
    with serving(tiny_pipeline_dir, data, tmp_path, "second") as (server2, client2):
        row = query(db, "SELECT * FROM runs WHERE id = ?", [killed["id"]])[0]
        assert row["status"] == "interrupted" and row["finished_at"]
        assert f"process {server.pid} ended during the run" in row["error"]
        gallery, card = client2.predict(_small(tiny_pipeline_dir, sampler="Euler"), api_name="/generate")
        assert len(gallery) == 1 and f"Run {killed['id'] + 1}: ok" in card
    rows = query(db, "SELECT id, status, pid FROM runs ORDER BY id")
    assert [r["status"] for r in rows] == ["ok", "ok", "interrupted", "ok"]
    assert rows[-1]["pid"] == server2.pid
    still_there(db, before)
    assert integrity(db) == "ok"


def test_server_killed_mid_sweep_resumes_it_on_restart(tmp_path, tiny_pipeline_dir):
    data = tmp_path / "study"
    db = data / "studio.db"
    sweep = {"name": "crash grid", "base": _small(tiny_pipeline_dir, repeats=12),
             "grid": {"steps": [2, 3, 4]}, "reference": REF}
    with serving(tiny_pipeline_dir, data, tmp_path, "first") as (server, client):
        client.submit(sweep, False, api_name="/sweep")
        # killed once the first cell is done and the second has started
        wait_for(db, "SELECT id FROM runs WHERE status = 'ok'", server)
        running = wait_for(db, "SELECT * FROM runs WHERE status = 'running'", server)
        server.kill()
    assert integrity(db) == "ok"
    runs = query(db, "SELECT * FROM runs ORDER BY id")
    finished = [r for r in runs if r["status"] == "ok"]
    assert [r["status"] for r in runs] == ["ok"] * len(finished) + ["running"] and len(finished) < 3
    killed = running[0]
    (sweep_row,) = query(db, "SELECT * FROM sweeps")
    assert sweep_row["status"] == "running" and sweep_row["pid"] == server.pid
    before = snapshot(db)

    with serving(tiny_pipeline_dir, data, tmp_path, "second") as (server2, client2):
        grid, status = client2.predict(sweep, False, api_name="/sweep")
    left = 3 - len(finished)
    assert f"Sweep {sweep_row['id']} finished" in status
    assert f"{left} runs now, {len(finished)} already done" in status
    assert grid.count("data-sweep-index") == 3
    still_there(db, before)  # finished cells were not rerun, nor touched
    rows = query(db, "SELECT * FROM runs ORDER BY id")
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["sweep_index"] for r in ok) == [0, 1, 2]  # every cell once, none twice
    (cut,) = [r for r in rows if r["status"] != "ok"]
    assert cut["id"] == killed["id"] and cut["status"] == "interrupted"
    assert f"process {server.pid} ended during the run" in cut["error"]
    rerun = [r for r in ok if r["sweep_index"] == killed["sweep_index"]]
    assert rerun[0]["id"] > killed["id"] and rerun[0]["pid"] == server2.pid  # the cut-off cell ran again
    assert {r["sweep_id"] for r in rows} == {sweep_row["id"]}
    (after,) = query(db, "SELECT * FROM sweeps")
    assert after["status"] == "done" and after["pid"] == server2.pid
    assert integrity(db) == "ok"


# ------------------------------------------------------------------------------------ reused pids
def _backdate(store: RunStore, table: str, row_id: int, seconds: float) -> None:
    when = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
    store.db.execute(f"UPDATE {table} SET created_at = ? WHERE id = ?", [when, row_id])


def _running_row(store: RunStore, pid: int, age_s: float = 0.0) -> int:
    rid = store.start_run({"model": "m", "prompts": ["p"], "seeds": [0]}, config_hash="h")
    store.db.execute("UPDATE runs SET pid = ? WHERE id = ?", [pid, rid])
    if age_s:
        _backdate(store, "runs", rid, age_s)
    return rid


@pytest.fixture
def sleeper():
    """A live process started now; ended after the test."""
    procs = []

    def start() -> int:
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return procs[-1].pid

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_restart_marks_runs_whose_pid_another_process_has_taken_over(tmp_path, sleeper):
    store = RunStore(tmp_path)
    older = sleeper()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _clock_past_start_of(older)
    gone = _running_row(store, int(dead.stdout))
    ours_before_we_started = _running_row(store, os.getpid(), age_s=10 * 365 * 86400)  # a container's pid 1 again
    taken = _running_row(store, sleeper(), age_s=3600)  # the kernel gave the dead server's pid to a newer process
    live = _running_row(store, older)  # written after its process started: that process may be running it
    zombie = subprocess.Popen(["true"])  # ended, never reaped: the pid still "exists"
    wait_until(lambda: _is_zombie(zombie.pid), what=f"process {zombie.pid} to end (a zombie until reaped)")
    unreaped = _running_row(store, zombie.pid)
    try:
        engine = Engine(store)  # what a restart does
        rows = {r["id"]: r for r in store.runs()}
        assert engine.store.mark_interrupted() == []  # nothing left to mark
    finally:
        zombie.wait()
    assert {i: rows[i]["status"] for i in (gone, ours_before_we_started, taken, unreaped, live)} == {
        gone: "interrupted", ours_before_we_started: "interrupted", taken: "interrupted", unreaped: "interrupted",
        live: "running"}
    assert f"process {os.getpid()} ended during the run" in rows[ours_before_we_started]["error"]
    assert "now belongs to a process started after the run" in rows[taken]["error"]
    assert "zombie" in rows[unreaped]["error"]
    assert store.integrity_check() == "ok"


def _clock_past_start_of(pid: int) -> None:
    """Rows written from now on are stamped after ``pid`` started: its start time has a clock tick's
    resolution (10 ms), so wait until the wall clock is past it by more than that."""
    import psutil

    started = psutil.Process(pid).create_time()
    wait_until(lambda: time.time() > started + 0.05, what=f"the clock to pass the start of process {pid}")


def _is_zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_sweep_whose_pid_was_taken_over_resumes_and_a_live_one_is_busy(tmp_path, tiny_pipeline_dir, sleeper):
    engine = Engine(RunStore(tmp_path))
    store = engine.store
    sweep = sweep_from_dict({"name": "owned", "base": _small(tiny_pipeline_dir), "grid": {"steps": [2]},
                             "reference": REF})
    sid = store.create_sweep(sweep_key=sweep.key, name=sweep.name, preset="", question="", n_total=1,
                             config={"axes": [["steps", [2]]], "reference": REF})
    owner = sleeper()  # started before the sweep's latest activity: it may be running it
    _clock_past_start_of(owner)
    store.db.execute("UPDATE sweeps SET pid = ?, created_at = ? WHERE id = ?", [owner, now(), sid])
    with pytest.raises(SweepBusy, match=f"running in process {owner}"):
        run_sweep(engine, sweep, progress=False)
    _backdate(store, "sweeps", sid, 3600)
    store.db.execute("UPDATE sweeps SET pid = ? WHERE id = ?", [sleeper(), sid])  # a newer process, same pid
    out = run_sweep(engine, sweep, progress=False)
    assert out["sweep_id"] == sid and out["ran"] == 1 and out["status"] == "done"
    assert store.get_sweep(sid)["pid"] == os.getpid()
