"""The study's start checks under faults: a damaged write-ahead log is refused by name and kept (never
silently replayed short and reset), a torn tail is not; text that will not decode is quarantined, not
left to break every read; a folder this user cannot write is not called damaged; the CLI names a damaged
database in one line."""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from studio_core.cli import main as cli_main
from studio_core.errors import StoreError
from studio_core.store.store import RunStore
from studio_core.store.wal import damaged_wal_reason

ROOT = Path(__file__).resolve().parents[1]
FRAME = 24 + 4096  # a frame of the log: its header and one page (the studies here use SQLite's 4 KiB pages)

WRITE_AND_DIE = """
import os, sys
from studio_core.store.store import RunStore
s = RunStore(sys.argv[1])
s.db.execute("PRAGMA wal_autocheckpoint = 0")  # nothing reaches the main file: the log holds it all
sweep = s.create_sweep(sweep_key="k", name="ladder", preset="p", question="q", config={}, n_total=8)
for i in range(8):
    s.start_run({"model": "m", "prompts": ["a"], "seeds": [0], "steps": i + 1}, config_hash=str(i), sweep_id=sweep,
                sweep_index=i)
if sys.argv[2] == "open-transaction":  # and a transaction still open, its pages spilled into the log
    s.db.execute("PRAGMA cache_size = 2")
    s.db.execute("BEGIN IMMEDIATE")
    for i in range(50):
        s.db.execute("INSERT INTO runs (status, config_json) VALUES ('running', ?)", ["x" * 3000])
os._exit(0)  # killed: no connection closes, so nothing checkpoints or resets the log
"""


def _study_in_the_log(folder: Path, ending: str = "committed") -> Path:
    """A study whose 8 runs and sweep live only in its write-ahead log, left by a process that died."""
    subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(folder), ending], check=True, cwd=ROOT, timeout=120)
    assert (folder / "studio.db").stat().st_size <= 4096 and (folder / "studio.db-wal").stat().st_size > 20 * FRAME
    return folder


@pytest.fixture(scope="module")
def in_the_log(tmp_path_factory) -> Path:
    return _study_in_the_log(tmp_path_factory.mktemp("log") / "study")


def _copy(study: Path, to: Path) -> Path:
    shutil.copytree(study, to)
    return to


def _dump(study: Path) -> str:
    """Everything SQLite reads from the study (replaying its log, as the first connection does)."""
    conn = sqlite3.connect(study / "studio.db")
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ the log
def test_a_damaged_log_is_refused_by_name_and_kept(in_the_log, tmp_path, bad_inputs):
    copy = _copy(in_the_log, tmp_path / "copy")
    wal = copy / "studio.db-wal"
    raw = bytearray(wal.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = b"\xff" * 64
    wal.write_bytes(bytes(raw))
    damaged = bytes(raw)

    with pytest.raises(StoreError) as refused:
        RunStore(copy)
    kept = sorted(copy.glob("studio.db-wal.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    assert sorted(copy.glob("studio.db-shm.damaged-*"))  # the index is kept with it
    message = str(refused.value)
    assert f"write-ahead log {wal} is damaged: frame " in message and "committed transaction(s) after it" in message
    assert f"a copy of the log is kept at {kept[0]}" in message and "Restore the study from a backup" in message
    assert wal.read_bytes() == damaged  # no connection replayed it short and reset it

    with pytest.raises(StoreError, match="is damaged"):
        RunStore.check_integrity(copy / "studio.db")
    with pytest.raises(StoreError, match="is damaged.*nothing was changed"):
        RunStore(copy, read_only=True)
    res = subprocess.run([sys.executable, str(ROOT / "app.py"), "--data-dir", str(copy)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"write-ahead log {wal} is damaged" in res.stderr and f"kept at {kept[0]}" in res.stderr
    assert wal.read_bytes() == damaged and sorted(copy.glob("studio.db-wal.damaged-*")) == kept  # one copy
    bad_inputs.append(("app.py --data-dir", "64 bytes of 0xff in studio.db-wal (8 runs only in the log)",
                       res.stderr.strip().splitlines()[-1]))

    sound = RunStore(_copy(in_the_log, tmp_path / "sound"))
    assert len(sound.runs()) == 8 and [s["name"] for s in sound.sweeps()] == ["ladder"]
    sound.close()


@pytest.mark.parametrize("ending, runs", [("committed", 7), ("open-transaction", 8)],
                         ids=["last-commit-torn", "open-transaction-torn"])
def test_a_torn_tail_is_not_refused(tmp_path, ending, runs):
    """A crash while writing the last commit, or in the middle of a transaction, cuts the log mid-frame:
    SQLite keeps every whole commit before it, so nothing committed is lost and the study opens."""
    study = _study_in_the_log(tmp_path / "study", ending)
    wal = study / "studio.db-wal"
    wal.write_bytes(wal.read_bytes()[:-(FRAME // 2 if ending == "committed" else 10 * FRAME + FRAME // 2)])
    assert damaged_wal_reason(study / "studio.db") is None
    assert RunStore.check_integrity(study / "studio.db") == "ok"
    store = RunStore(study)
    assert len(store.runs()) == runs and store.start_notes == []
    store.close()
    assert not list(study.glob("*.damaged-*"))


def test_the_verdict_matches_what_sqlite_drops(in_the_log, tmp_path):
    """40 random 1-16 byte corruptions of the log: it is called damaged exactly when SQLite, replaying it,
    would lose committed data, except inside the last commit frame (read as a commit torn by a crash)."""
    reference = _dump(_copy(in_the_log, tmp_path / "reference"))
    raw = (in_the_log / "studio.db-wal").read_bytes()
    last_frame = 32 + ((len(raw) - 32) // FRAME - 1) * FRAME
    rng = random.Random(16)
    for trial in range(40):
        n = rng.randint(1, 16)
        at = rng.randrange(len(raw) - n)
        bad = bytearray(raw)
        bad[at:at + n] = bytes(rng.randrange(256) for _ in range(n))
        if bad == raw:
            continue
        copy = _copy(in_the_log, tmp_path / f"trial{trial}")
        (copy / "studio.db-wal").write_bytes(bytes(bad))
        called_damaged = damaged_wal_reason(copy / "studio.db") is not None
        lost = _dump(copy) != reference
        assert called_damaged == lost or (lost and at + n > last_frame), (trial, at, n, called_damaged, lost)


# ------------------------------------------------------------------------------------------ text
def _small_study(folder: Path) -> list[dict]:
    store = RunStore(folder)
    for steps in (1, 2, 3, 4, 5):
        store.start_run({"model": "m", "prompts": ["a"], "seeds": [0], "steps": steps}, config_hash=str(steps))
    rows = store.raw_rows("runs")
    store.close()
    return rows


def test_text_that_will_not_decode_is_quarantined_and_breaks_no_read(tmp_path):
    study = tmp_path / "study"
    original = _small_study(study)[2]
    with sqlite3.connect(study / "studio.db") as conn:
        conn.execute("UPDATE runs SET created_at = CAST(x'fffe41' AS TEXT) WHERE id = 3")
    conn.close()

    ro = RunStore(study, read_only=True)  # a read-only store cannot move it: it says so, and every read works
    assert ro.start_notes == ["run 3: column created_at is not valid UTF-8; its bad bytes show as \ufffd (open the "
                              "study read-write to move the row to the quarantine table)"]
    assert list(ro.runs_frame()["id"]) == [1, 2, 3, 4, 5] and ro.get_run(3)["created_at"] == "\ufffd\ufffdA"
    assert ro.export_csv(tmp_path / "ro.csv") == 5
    ro.close()

    store = RunStore(study)
    assert store.start_notes == ["run 3: column created_at is not valid UTF-8; moved to the quarantine table "
                                 "(kept whole)"]
    assert [r["id"] for r in store.runs()] == [1, 2, 4, 5] and list(store.runs_frame()["id"]) == [1, 2, 4, 5]
    assert store.export_csv(tmp_path / "runs.csv") == 4
    [kept] = store.db.execute("SELECT table_name, row_key, column_name, raw_json, reason FROM quarantine").fetchall()
    assert kept[:3] == ("runs", "3", "created_at")
    assert kept[4] == "created_at is not valid UTF-8 (byte 0xff at 0: invalid start byte)"
    assert json.loads(kept[3]) == {**original, "created_at": {"text_hex": "fffe41"}, "rowid": 3}
    store.close()
    again = RunStore(study)
    assert again.start_notes == [] and again.db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1
    again.close()


# ------------------------------------------------------------------------------------------ permissions
@pytest.fixture
def open_tmp():
    """A temporary folder other users can enter (pytest's own is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="studio-faults-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755)
    shutil.rmtree(path)


def _as_a_user_who_cannot_write(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``argv`` run by a user who may read ``folder`` but not write it: this user after taking the write
    bits off, or user nobody when we are root (root writes past any permission bits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}  # another test's pinned folders
    env.update(PYTHONPATH=str(ROOT), HOME=tempfile.gettempdir())
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root writes past permission bits, and setpriv is needed to run as another user")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        reach = subprocess.run(prefix + [sys.executable, "-c", "import studio_core.store.store"], env=env, cwd="/",
                               capture_output=True, text=True, timeout=120)
        if reach.returncode != 0:
            pytest.skip(f"user nobody cannot import the studio from {ROOT}: {reach.stderr.strip().splitlines()[-1]}")
    for p in folder.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    folder.chmod(0o555)
    return subprocess.run(prefix + argv, env=env, cwd=folder.parent, capture_output=True, text=True, timeout=120)


OPEN_IT = """
import sys
from studio_core.errors import StoreError
from studio_core.store.store import RunStore
for open_it in (lambda: RunStore(sys.argv[1]), lambda: RunStore.check_integrity(sys.argv[1] + "/studio.db")):
    try:
        open_it()
    except StoreError as exc:
        print(exc)
print(len(RunStore(sys.argv[1], read_only=True).runs()), "runs read-only")
"""


def test_a_folder_this_user_cannot_write_is_not_called_damaged(open_tmp, bad_inputs):
    study = open_tmp / "study"
    _small_study(study)
    opened = _as_a_user_who_cannot_write(study, [sys.executable, "-c", OPEN_IT, str(study)])
    told = (f"study folder {study} is not writable by this user: browse the study read-only with "
            f"`python app.py --demo {study}`, or give this user write permission")
    assert opened.returncode == 0, opened.stderr
    assert [line.startswith(told) for line in opened.stdout.splitlines()] == [True, True, False]
    assert opened.stdout.splitlines()[2] == "5 runs read-only"
    started = _as_a_user_who_cannot_write(study, [sys.executable, str(ROOT / "app.py"), "--data-dir", str(study)])
    assert started.returncode == 2 and told in started.stderr
    assert "damaged" not in started.stderr and "integrity check" not in started.stderr
    assert "Traceback" not in started.stderr
    bad_inputs.append(("app.py --data-dir", "a study folder this user cannot write",
                       started.stderr.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------------ the CLI
def _damage_page(db: Path, table: str) -> None:
    """Overwrite the b-tree header of ``table``'s root page (SQLite: "database disk image is malformed")."""
    with sqlite3.connect(db) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()[0]
    conn.close()
    raw = bytearray(db.read_bytes())
    raw[(root - 1) * 4096:(root - 1) * 4096 + 8] = b"\xff" * 8
    db.write_bytes(bytes(raw))


@pytest.mark.parametrize("command", [["runs"], ["frontier"], ["export", "--csv", "out.csv"],
                                     ["run", "--prompt", "a", "--steps", "1"], ["bundle", "out"]],
                         ids=lambda c: c[0])
def test_the_cli_names_a_damaged_database_in_one_line(tmp_path, command, capsys, bad_inputs):
    """A file that is not a database at all (its header overwritten), and one with a damaged page."""
    for damage, problem in (("header", "file is not a database"), ("runs-page", "database disk image is malformed")):
        study = tmp_path / damage
        _small_study(study)
        db = study / "studio.db"
        if damage == "header":
            db.write_bytes(b"\x00" * 100 + db.read_bytes()[100:])
        else:
            _damage_page(db, "runs")
        capsys.readouterr()
        args = [str(tmp_path / f"{damage}-{a}") if a.startswith("out") else a for a in command]
        assert cli_main(["--data-dir", str(study), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: cannot ") and str(db) in err[0] and problem in err[0], err
        if command[0] == "runs":
            bad_inputs.append((f"CLI {command[0]}", f"studio.db with a damaged {damage}", err[0]))
