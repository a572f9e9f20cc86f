"""A sweep whose process is gone shows as ``interrupted``, not ``running``, from the next start of the studio
until it is started again, which resumes it.

End to end: ``python -m studio_core sweep`` killed with ``kill -9`` mid-sweep, then a new ``StudyService``
on the study, the page's handlers, and the resume. Beside it, the rule on its own: which ``running``
sweeps ``RunStore.mark_sweeps_interrupted`` marks (dead, live, resumed, another host's, read-only).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from test_crash import REF, _backdate, _clock_past_start_of, _small, query, sleeper, wait_for  # noqa: F401

from app.handlers import Studio
from studio_core.store.store import RunStore
from studio_core.study.service import StudyService
from studio_core.study.sweep import load_preset

ROOT = Path(__file__).resolve().parents[1]


class CliSweep:
    """``python -m studio_core --data-dir D sweep PRESET`` in a child process; its output goes to a log file
    (``proc`` and ``tail`` are what ``test_crash.wait_for`` watches)."""

    def __init__(self, data_dir: Path, preset: Path, log: Path):
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "studio_core", "--data-dir", str(data_dir), "sweep",
                                          str(preset)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)  # reaped, so the pid is truly gone


def test_a_killed_sweep_is_interrupted_at_the_next_start_and_resumes_to_done(tmp_path, tiny_pipeline_dir):
    data, preset = tmp_path / "study", tmp_path / "crash-grid.yaml"
    db = data / "studio.db"
    preset.write_text(yaml.safe_dump({"name": "crash grid", "base": _small(tiny_pipeline_dir, repeats=12),
                                      "grid": {"steps": [2, 3, 4]}, "reference": REF}))
    # 1. the sweep's process killed once its first cell is done and the second has started
    cli = CliSweep(data, preset, tmp_path / "sweep.log")
    try:
        wait_for(db, "SELECT id FROM runs WHERE status = 'ok'", cli)
        wait_for(db, "SELECT id FROM runs WHERE status = 'running'", cli)
    finally:
        cli.kill()
    (left,) = query(db, "SELECT * FROM sweeps")
    assert left["status"] == "running" and left["pid"] == cli.proc.pid and left["finished_at"] is None

    # 2. the next start marks it interrupted, and the page says so where it said running
    service = StudyService(RunStore(data))
    try:
        row = service.store.get_sweep(left["id"])
        assert row["status"] == "interrupted" and row["finished_at"]
        studio = Studio(service)
        title = f"Sweep {left['id']}: crash grid"
        page = studio.grid(left["id"])
        assert f"{title} (interrupted)" in page and "(running)" not in page
        assert studio.sweep_choices() == [(f"{left['id']}: crash grid (interrupted, 3 runs)", left["id"])]
        assert [label for label, _ in studio.filter_choices()[2]][1] == f"{left['id']}: crash grid (interrupted, 3 runs)"

        # 3. started again, it resumes the same sweep and finishes it
        out = service.run_sweep(load_preset(preset), progress=False)
        assert out["sweep_id"] == left["id"] and out["status"] == "done" and out["skipped"] >= 1
        done = service.store.get_sweep(left["id"])
        assert done["status"] == "done" and done["pid"] == os.getpid()
        assert sorted(r["sweep_index"] for r in service.store.sweep_runs(left["id"]) if r["status"] == "ok") == [0, 1, 2]
        assert f"{title} (done)" in studio.grid(left["id"])
    finally:
        service.store.close()


def _sweep(store: RunStore, name: str, pid: int, age_s: float = 0.0) -> int:
    sid = store.create_sweep(sweep_key=name, name=name, preset="", question="", config={}, n_total=1)
    store.db.execute("UPDATE sweeps SET pid = ? WHERE id = ?", [pid, sid])
    if age_s:
        _backdate(store, "sweeps", sid, age_s)
    return sid


def test_which_running_sweeps_are_marked_interrupted(tmp_path, sleeper):  # noqa: F811 (test_crash's fixture)
    store = RunStore(tmp_path)
    live_pid = sleeper()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _clock_past_start_of(live_pid)
    gone = _sweep(store, "gone", int(dead.stdout))
    live = _sweep(store, "live", live_pid)
    taken = _sweep(store, "taken", sleeper(), age_s=3600)  # its pid now belongs to a newer process
    # resumed by a process that started after the sweep was made: its newest run says it is the one
    resumed = _sweep(store, "resumed", os.getpid(), age_s=10 * 365 * 86400)
    store.start_run({"model": "m"}, config_hash="h", sweep_id=resumed, sweep_index=0)
    elsewhere = _sweep(store, "elsewhere", int(dead.stdout))
    rid = store.start_run({"model": "m"}, config_hash="h", sweep_id=elsewhere, sweep_index=0)
    store.db.execute("UPDATE runs SET host = ? WHERE id = ?", [socket.gethostname() + "-other", rid])
    finished = _sweep(store, "finished", int(dead.stdout))
    store.finish_sweep(finished, "done")

    reader = RunStore(tmp_path, read_only=True)
    assert reader.mark_sweeps_interrupted() == []
    reader.close()
    assert sorted(store.mark_sweeps_interrupted()) == sorted([gone, taken])
    status = {s["id"]: s["status"] for s in store.sweeps()}
    assert status == {gone: "interrupted", live: "running", taken: "interrupted", resumed: "running",
                      elsewhere: "running", finished: "done"}
    assert store.mark_sweeps_interrupted() == []  # nothing left to mark
    assert all(s["finished_at"] >= s["created_at"] for s in store.sweeps() if s["status"] == "interrupted")
    store.claim_sweep(gone)  # resuming makes it running again, in this process
    assert store.get_sweep(gone)["status"] == "running" and store.get_sweep(gone)["finished_at"] is None
    store.finish_sweep(gone, "interrupted")  # what a caller that stops a sweep may record
    assert store.get_sweep(gone)["status"] == "interrupted"
    store.close()
