"""Fault injection: what the studio says, and keeps, when its disk fills up, its files are damaged, or it is killed.

Five faults, each on a fresh study (on a tmpfs where ``mount -t tmpfs`` works, i.e. as root; else in a
temporary folder, and the full-disk fault is skipped with the reason):

1. disk full during a run: an in-process engine on a tmpfs just larger than the free-space margin; a ballast
   file fills it when the run starts scoring (the reference's images are the next write), then is removed;
2. a damaged write-ahead log: a child process commits runs and is killed with ``kill -9`` while it holds the
   study open (so they live in ``studio.db-wal``); a copy of the study gets 64 bytes of 0xff in the middle of
   its ``-wal`` and is opened by the studio;
3. a corrupted text value: invalid UTF-8 in one run's ``created_at``; the study is opened writable and its runs
   table and CSV are read;
4. SIGTERM mid-run: ``python -m studio_core run`` with many repeats, SIGTERM once its row is ``running``; the
   study is opened again;
5. ``kill -9`` mid-sweep: ``python -m studio_core sweep`` killed after its first run finished, then resumed.

Every other look at a study goes through a child process that opens it as the studio does (``RunStore``, then
``mark_interrupted`` as every start does), and ``PRAGMA integrity_check`` runs on a copy of its files, so the
check itself changes nothing. The table gives, per fault, what the studio said (the first 100 characters of
its message or of the row's error), the rows before and after, integrity, and a verdict against the intended
behaviour: nothing lost silently; a damaged file refused by name with a copy kept; a damaged row set aside;
a cut-off run recorded with its reason; a resumed sweep with every cell once.

Run: ``python benchmarks/faults.py`` (``--save`` also writes the table to ``benchmarks/results/faults.md``).
Exit status 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
STUDY_FILES = {"studio.db", "studio.db-wal", "studio.db-shm", "images", "cache", "pending-outcomes.jsonl"}
REF = {"sampler": "DPM++ 2M", "steps": 8}

# a child that commits n finished runs; with "kill" it dies holding the study open (its commits stay in the -wal)
MAKE_RUNS = r"""
import os, signal, sys
from studio_core.store.store import RunStore
store, n = RunStore(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    rid = store.start_run({"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0], "steps": i + 2},
                          config_hash=f"fault-{i}")
    store.finish_run(rid, {"latency_median_ms": 10.0 + i, "psnr": 30.0 + i})
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
store.close()
"""
# a child that opens a study as a start of the studio does, reads its runs and writes their CSV
OPEN_STUDY = r"""
import json, os, sys, tempfile
from studio_core.store.store import RunStore
out = {}
try:
    store = RunStore(sys.argv[1])
    store.mark_interrupted()
    out["runs"] = [{k: r.get(k) for k in ("id", "status", "error", "sweep_index")} for r in store.runs()]
    out["csv_rows"] = store.export_csv(os.path.join(tempfile.mkdtemp(), "runs.csv"))
    store.close()
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out, default=str))
"""


class Timeout(Exception):
    pass


def wait_for(condition, what: str, timeout_s: float):
    """Poll ``condition`` until it returns something truthy; ``Timeout`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)  # the polling interval, not a wait for the outcome
    return value


def mount_tmpfs(path: Path, size_mib: int) -> str | None:
    """Mount a tmpfs at ``path``; None when mounted, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return f"mount -t tmpfs failed: {done.stderr.strip()}" if done.returncode else None


def fill(path: Path) -> None:
    """Write ``path`` until its disk has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (2**20, 2**12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)


def child(code_or_args: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout_s)


def open_study(folder: Path) -> dict:
    """What a start of the studio on ``folder`` sees: {"runs": [...], "csv_rows": n, "note": its last line on
    stderr} or {"error": message}."""
    done = child(["-c", OPEN_STUDY, str(folder)])
    try:
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        seen["note"] = (done.stderr.strip().splitlines() or [""])[-1]  # the store imports no torch: only its words
        return seen
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"}


def files_check(folder: Path) -> tuple[int | None, str]:
    """(rows in the runs table, ``PRAGMA integrity_check``) of a copy of the study's database and log, read by
    a fresh connection, so the study's own files are left as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("studio.db", "studio.db-wal"):
            if (folder / name).exists():
                shutil.copy2(folder / name, Path(tmp) / name)
        conn = sqlite3.connect(Path(tmp) / "studio.db")
        try:
            integrity = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()[:3])
            rows = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            return rows, integrity
        except sqlite3.Error as exc:
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()


def live_runs(folder: Path) -> list[tuple]:
    """(id, status, sweep_index) of every run, read-only while another process writes; [] before there are any."""
    try:
        conn = sqlite3.connect(f"{(folder / 'studio.db').as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return []
    try:
        return conn.execute("SELECT id, status, sweep_index FROM runs ORDER BY id").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def said(text: str | None) -> str:
    text = " ".join(str(text or "").split())
    return text[:100] + ("..." if len(text) > 100 else "")


# ------------------------------------------------------------------------------------------------ the faults
def disk_full(base: Path, model: str) -> dict:
    from studio_core.measure.engine import Engine
    from studio_core.store.space import MARGIN_BYTES
    from studio_core.store.store import RunStore

    disk = base / "small-disk"
    why_not = mount_tmpfs(disk, MARGIN_BYTES // 2**20 + 8)
    if why_not:
        return {"said": f"skipped: {why_not}", "verdict": "skipped"}
    try:
        study, ballast = disk / "study", disk / "ballast"
        engine = Engine(RunStore(study))
        try:
            spec = {"model": model, "prompts": ["grinning face"], "seeds": [0, 1], "steps": 4, "repeats": 1}
            r = engine.run(spec, reference=REF, on_stage=lambda stage: stage == "scoring" and fill(ballast))
            while_full = [s for i, s, _ in live_runs(study) if i == r.run_id]
            ballast.unlink()  # space returns
            engine.store.flush_pending()
            row = engine.store.get_run(r.run_id)
        finally:
            engine.store.close()
        rows, integrity = files_check(study)
        ok = (r.status == "failed" and "is full" in (r.error or "") and row["status"] == "failed"
              and row["error"] and "is full" in row["error"] and integrity == "ok")
        after = f"{rows} ({'/'.join(while_full)} while full, then {row['status']})"
        return {"said": f"run {r.status}: {r.error}", "before": 0, "after": after,
                "integrity": integrity, "verdict": "pass" if ok else "FAIL"}
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def damaged_wal(base: Path, _model: str) -> dict:
    study, copy = base / "wal-study", base / "wal-copy"
    made = child(["-c", MAKE_RUNS, str(study), "6", "kill"])
    wal = study / "studio.db-wal"
    if made.returncode != -signal.SIGKILL or not wal.exists() or wal.stat().st_size == 0:
        return {"said": f"setup failed: exit {made.returncode}, {said(made.stderr)}", "verdict": "FAIL"}
    before = files_check(study)[0]
    copy.mkdir()
    for name in ("studio.db", "studio.db-wal"):
        shutil.copy2(study / name, copy / name)
    with open(copy / "studio.db-wal", "r+b") as fh:  # the middle of the log: later commits fail its checksums
        fh.seek(wal.stat().st_size // 2)
        fh.write(b"\xff" * 64)
    seen = open_study(copy)
    rows, integrity = files_check(copy)
    kept = sorted(set(p.name for p in copy.iterdir()) - STUDY_FILES)
    refused = "error" in seen and ("wal" in seen["error"].lower() or "log" in seen["error"].lower())
    lost = "error" not in seen and len(seen["runs"]) < (before or 0)
    ok = (refused and kept) or ("error" not in seen and not lost and integrity == "ok")
    what = seen.get("error") or f"opened, {len(seen['runs'])} runs" + (f"; kept {', '.join(kept)}" if kept else "")
    return {"said": what, "before": before, "after": "refused" if "error" in seen else len(seen["runs"]),
            "integrity": integrity, "verdict": "pass" if ok else "FAIL" + (" (rows lost silently)" if lost else "")}


def corrupted_text(base: Path, _model: str) -> dict:
    study = base / "text-study"
    made = child(["-c", MAKE_RUNS, str(study), "5", "close"])
    if made.returncode:
        return {"said": f"setup failed: {said(made.stderr)}", "verdict": "FAIL"}
    conn = sqlite3.connect(study / "studio.db")
    conn.execute("UPDATE runs SET created_at = CAST(X'c328ff41' AS TEXT) WHERE id = 2")  # not UTF-8
    conn.commit()
    conn.close()
    seen = open_study(study)
    conn = sqlite3.connect(f"{(study / 'studio.db').as_uri()}?mode=ro", uri=True)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables  # names from the file
              if t == "runs" or "quarantin" in t.lower()}
    conn.close()
    kept = sum(counts.values())
    aside = ", ".join(f"{n} row(s) set aside in {t}" for t, n in counts.items() if t != "runs" and n)
    rows, integrity = files_check(study)
    ok = "error" not in seen and seen["csv_rows"] >= 4 and kept >= 5 and integrity == "ok"
    what = seen.get("error") or "; ".join(filter(None, [
        f"read {len(seen['runs'])} runs and a CSV of {seen['csv_rows']}", aside, seen["note"],
        next((r["error"] for r in seen["runs"] if r["id"] == 2 and r["error"]), None)]))
    return {"said": what, "before": 5, "after": "error" if "error" in seen else len(seen["runs"]),
            "integrity": integrity, "verdict": "pass" if ok else "FAIL"}


def sigterm_mid_run(base: Path, model: str) -> dict:
    study = base / "sigterm-study"
    argv = ["-m", "studio_core", "--data-dir", str(study), "run", "--model", model, "--prompt", "grinning face",
            "--steps", "30", "--repeats", "60"]
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(s == "running" for _, s, _ in live_runs(study)) or proc.poll() is not None,
                 "the run's row", 300)
        if proc.poll() is not None:
            return {"said": f"setup failed: the run ended first ({proc.returncode})", "verdict": "FAIL"}
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    seen = open_study(study)
    rows, integrity = files_check(study)
    if "error" in seen:
        return {"said": seen["error"], "before": 1, "after": "error", "integrity": integrity, "verdict": "FAIL"}
    row = seen["runs"][-1]
    ok = row["status"] in ("interrupted", "failed", "cancelled") and bool(row["error"]) and integrity == "ok"
    last = (err.strip().splitlines() or [""])[-1]
    return {"said": f"row {row['status']}: {row['error']} (exit {proc.returncode}{': ' + last if last else ''})",
            "before": 1, "after": len(seen["runs"]), "integrity": integrity, "verdict": "pass" if ok else "FAIL"}


def kill_mid_sweep(base: Path, model: str) -> dict:
    study, preset = base / "sweep-study", base / "faults-sweep.yaml"
    preset.write_text(f"name: faults-sweep\nbase:\n  model: {json.dumps(model)}\n  prompts: [grinning face]\n"
                      "  seeds: [0]\n  warmup: 1\n  repeats: 1\ngrid:\n  steps: [2, 3, 4, 5]\n"
                      f"reference: {json.dumps(REF)}\n", encoding="utf-8")
    argv = [sys.executable, "-m", "studio_core", "--data-dir", str(study), "sweep", str(preset)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(s == "ok" for _, s, _ in live_runs(study)) or proc.poll() is not None,
                 "the sweep's first run", 600)
        proc.kill()
    finally:
        proc.wait()
    killed = [(i, s) for i, s, _ in live_runs(study)]
    before = len(killed)
    resumed = child(argv[1:])
    runs = live_runs(study)
    rows, integrity = files_check(study)
    finished = [idx for _, s, idx in runs if s in ("ok", "failed")]
    duplicates = sorted({i for i in finished if finished.count(i) > 1})
    cut_off = [s for i, s, _ in runs if i in {j for j, s0 in killed if s0 == "running"}]
    ok = (resumed.returncode == 0 and sorted(finished) == [0, 1, 2, 3] and not duplicates
          and all(s == "interrupted" for s in cut_off) and integrity == "ok")
    last = (resumed.stdout.strip().splitlines() or [""])[-1]
    return {"said": f"{last}; duplicates: {duplicates or 'none'}; cut-off run: {', '.join(cut_off) or 'none'}",
            "before": before, "after": len(runs), "integrity": integrity, "verdict": "pass" if ok else "FAIL"}


FAULTS = {"disk full during a run": disk_full, "damaged WAL (64 bytes of 0xff)": damaged_wal,
          "invalid UTF-8 in a run's created_at": corrupted_text, "SIGTERM mid-run": sigterm_mid_run,
          "kill -9 mid-sweep, then resume": kill_mid_sweep}


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return (git("rev-parse", "--short", "HEAD") or "unknown") + (" + uncommitted changes" if git("status", "--porcelain") else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="emoji-sd", help="the model of the runs (default: the embedded one)")
    p.add_argument("--save", action="store_true", help="also write the table to benchmarks/results/faults.md")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="studio-faults-"))
    base = work / "disk"
    why_not = mount_tmpfs(base, 512)
    lines = ["# fault injection",
             f"setup: {platform.node()} ({os.cpu_count()} logical cores, {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}), studies on {'a 512 MiB tmpfs' if not why_not else 'a temp folder'}"
             f" {'' if not why_not else f'({why_not}) '}under {work}, model {args.model}, commit {commit()}", "",
             "| fault | what the studio said | rows before | rows after | integrity | verdict |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines[:2]), flush=True)
    failed = False
    try:
        for name, fault in FAULTS.items():
            try:
                out = fault(base, args.model)
            except (Timeout, subprocess.TimeoutExpired, OSError, sqlite3.Error) as exc:
                out = {"said": f"{type(exc).__name__}: {exc}", "verdict": "FAIL"}
            failed |= out["verdict"].startswith("FAIL")
            lines.append(f"| {name} | {said(out['said']).replace('|', '/')} | {out.get('before', '')} | "
                         f"{out.get('after', '')} | {out.get('integrity', '')} | {out['verdict']} |")
            print(f"  {name}: {out['verdict']}", file=sys.stderr, flush=True)
    finally:
        if not why_not:  # the studies lived on the tmpfs: nothing is left but the empty folders
            subprocess.run(["umount", str(base)], check=False)
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines[2:]))
    if args.save:
        (ROOT / "benchmarks" / "results" / "faults.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
