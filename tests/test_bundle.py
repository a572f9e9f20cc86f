"""Bundles: a study (or some sweeps) packed into a folder that opens read-only, rows equal to the source
except the host names, pids and model paths that are scrubbed for sharing."""

import hashlib
import json
import socket
import tarfile

import numpy as np
import pandas as pd
import pytest

from studio_core.cli import main
from studio_core.errors import StoreError, UnsafePath
from studio_core.store.bundle import bundle_study
from studio_core.store.store import RunStore

CONFIG = {"model": "emoji-sd", "prompts": ["sun"], "seeds": [0, 1], "steps": 4, "sampler": "DDIM", "knobs": {}}
HOST = "lab-gpu-7f3a.example.internal"  # the real host name may be as short as "vm": too short to look for
# what the default bundle may change, per table; every other column is copied as stored
SCRUBBED = {"runs": {"host", "pid", "model", "model_path", "config_json", "error", "env_json"},
            "refs": {"config_json", "env_json"}, "sweeps": {"pid", "preset", "config_json"}}


def _images(store: RunStore, rng, n: int) -> list[str]:
    return store.put_images([rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)])


@pytest.fixture
def study(tmp_path, monkeypatch):
    """Sweep A (2 runs, reference r1), sweep B (1 run, reference r2), a loose run and a failed one, and an
    unused reference; one run carries a column only it has (``extra_setting``). Rows name the model as the
    embedded one, a repo id, an absolute folder and a relative one, all written on host ``HOST``."""
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    sd15, hub = str(tmp_path / "models" / "sd15"), str(tmp_path / "hub" / "models--org--name" / "snapshots" / "c0ffee")
    env = {"device_name": "CPU Test (4 cores)", "torch_version": "2.4.0", "diffusers_version": "0.30.0", "threads": 4,
           "git_commit": "abc123", "python_version": "3.11.9", "cache_dir": str(tmp_path / "study" / ".cache"),
           "node": HOST}
    s = RunStore(tmp_path / "study")
    rng = np.random.default_rng(0)
    r1 = s.put_reference("r1", config={"steps": 50, "model": sd15}, images=_images(s, rng, 2), model_fingerprint="f",
                         generate_ms=1.0, env=env)
    r2 = s.put_reference("r2", config={"steps": 60, "model": "org/name"}, images=_images(s, rng, 2),
                         model_fingerprint="f", generate_ms=2.0, env=env)
    s.put_reference("unused", config={}, images=_images(s, rng, 1), model_fingerprint="f", generate_ms=3.0)
    a = s.create_sweep(sweep_key="a", name="A", preset="a.yaml", question="qa", n_total=2,
                       config={"axes": [["model", [sd15, "emoji-sd"]]], "reference": None})
    b = s.create_sweep(sweep_key="b", name="B", preset=str(tmp_path / "presets" / "b.yaml"), question="qb",
                       config={}, n_total=1)
    for sweep, index, ref, extra, path in [
        (a, 0, r1, {"model": sd15}, sd15),
        (a, 1, r1, {"extra_setting": 3}, str(tmp_path / "embedded" / "emoji-sd")),
        (b, 0, r2, {"model": "org/name"}, hub),
        (None, None, r1, {"model": "models/sd15"}, sd15),  # relative to the folder the studio ran in
    ]:
        rid = s.start_run({**CONFIG, **extra}, config_hash=f"{sweep}-{index}", sweep_id=sweep, sweep_index=index,
                          model_path=path, model_fingerprint="f")
        s.finish_run(rid, {"images": _images(s, rng, 2), "reference_id": ref, "psnr": 30.0 + rid,
                           "latencies_ms": [1.0, 2.0], "latency_median_ms": 1.5 + rid, "threads": env["threads"],
                           "git_commit": env["git_commit"]})
    failed = s.start_run({**CONFIG, "model": sd15 + "/"}, config_hash="f", sweep_id=b, sweep_index=1, model_path=sd15)
    s.fail_run(failed, f"could not load the pipeline in {sd15}: {sd15}/unet/model.safetensors cannot be read")
    s.finish_sweep(a)
    yield s, {"a": a, "b": b, "r1": r1, "r2": r2}
    s.close()


def _used_hashes(runs: list[dict], refs: list[dict]) -> set[str]:
    return {h for row in runs + refs for h in json.loads(row["images"] or "[]")}


def _assert_scrubbed(table: str, bundled: list[dict], source: list[dict], where: str) -> None:
    """``bundled`` is ``source`` row for row, but for the columns of ``SCRUBBED[table]``, which name no
    path under ``where``, no host and no pid."""
    assert len(bundled) == len(source)
    for got, had in zip(bundled, source):
        assert got.keys() == had.keys()
        assert {k: v for k, v in got.items() if k not in SCRUBBED[table]} == {
            k: v for k, v in had.items() if k not in SCRUBBED[table]}
        for column in SCRUBBED[table] & got.keys():
            assert where not in str(got[column]) and HOST not in str(got[column])
        if table in ("runs", "sweeps"):
            assert got["pid"] is None and had["pid"] is not None
        if table == "runs":
            assert got["host"] == "" and had["host"] == HOST


def test_bundle_with_keep_paths_holds_the_source_rows_exactly(study, tmp_path):
    src, _ = study
    src_db = src.path.read_bytes()
    info = bundle_study(src.data_dir, tmp_path / "out", keep_paths=True)  # a folder: opened read-only
    out = tmp_path / "out"
    assert src.path.read_bytes() == src_db
    ro = RunStore(out, read_only=True)
    used_refs = src.raw_rows("refs", "ref_key IN ('r1', 'r2')")
    hashes = _used_hashes(src.raw_rows("runs"), used_refs)
    assert ro.raw_rows("runs") == src.raw_rows("runs") and "extra_setting" in ro.raw_rows("runs")[1]
    assert ro.raw_rows("sweeps") == src.raw_rows("sweeps") and ro.raw_rows("refs") == used_refs
    assert ro.raw_rows("images") == src.raw_rows("images", "hash != ?", [src.get_reference("unused")["images"][0]])
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "studio.db", "bundle.json", *(src.image_name(h) for h in hashes)}
    assert all(ro.image_bytes(h) == src.image_bytes(h) for h in hashes)
    assert ro.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete" and ro.integrity_check() == "ok"
    ro.close()
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest == {k: v for k, v in info.items() if k != "path"} and info["path"] == str(out)
    assert manifest["counts"] == {"runs": 5, "refs": 2, "sweeps": 2, "images": len(hashes)}
    assert manifest["source"] == src.data_dir.name and manifest["sweep_ids"] is None and manifest["scrubbed"] == []
    assert manifest["studio_db_sha256"] == hashlib.sha256((out / "studio.db").read_bytes()).hexdigest()
    assert manifest["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "bundle.json")
    assert {p.name for p in out.iterdir()} == {"studio.db", "bundle.json", "images"}  # no -wal/-shm left


def test_bundle_scrubs_hosts_pids_and_model_paths_by_default(study, tmp_path):
    src, _ = study
    info = bundle_study(src, tmp_path / "out")
    ro = RunStore(tmp_path / "out", read_only=True)
    runs, refs, sweeps = ro.raw_rows("runs"), ro.raw_rows("refs"), ro.raw_rows("sweeps")
    _assert_scrubbed("runs", runs, src.raw_rows("runs"), str(tmp_path))
    _assert_scrubbed("refs", refs, src.raw_rows("refs", "ref_key IN ('r1', 'r2')"), str(tmp_path))
    _assert_scrubbed("sweeps", sweeps, src.raw_rows("sweeps"), str(tmp_path))
    # a folder becomes its last name, the same in every column; the embedded name and a repo id stay
    assert [(r["model"], r["model_path"], json.loads(r["config_json"])["model"]) for r in runs] == [
        ("sd15", "sd15", "sd15"), ("emoji-sd", "emoji-sd", "emoji-sd"), ("org/name", "c0ffee", "org/name"),
        ("sd15", "sd15", "sd15"), ("sd15", "sd15", "sd15")]
    assert runs[4]["error"] == "could not load the pipeline in sd15: sd15/unet/model.safetensors cannot be read"
    assert [json.loads(r["config_json"])["model"] for r in refs] == ["sd15", "org/name"]
    assert json.loads(sweeps[0]["config_json"])["axes"] == [["model", ["sd15", "emoji-sd"]]]
    assert [s["preset"] for s in sweeps] == ["a.yaml", "b.yaml"]
    # the setup that makes the figures honest stays; where it ran does not
    assert json.loads(refs[0]["env_json"]) == {"device_name": "CPU Test (4 cores)", "torch_version": "2.4.0",
                                               "diffusers_version": "0.30.0", "threads": 4, "git_commit": "abc123",
                                               "python_version": "3.11.9"}
    assert [(r["threads"], r["git_commit"]) for r in runs[:4]] == [(4, "abc123")] * 4
    assert [(r["config_hash"], r["model_fingerprint"]) for r in runs] == [  # hashes, not paths
        (r["config_hash"], r["model_fingerprint"]) for r in src.raw_rows("runs")]
    assert info["scrubbed"] == ["refs.config_json", "refs.env_json", "runs.config_json", "runs.error", "runs.host",
                                "runs.model", "runs.model_path", "runs.pid", "sweeps.config_json", "sweeps.pid",
                                "sweeps.preset"]
    assert json.loads((tmp_path / "out" / "bundle.json").read_text())["scrubbed"] == info["scrubbed"]
    ro.close()


@pytest.mark.parametrize("keep_paths", [False, True])
def test_no_path_of_the_study_nor_its_host_is_in_the_published_files(study, tmp_path, keep_paths):
    src, _ = study
    bundle_study(src, tmp_path / "out", archive=True, keep_paths=keep_paths)
    published = [(tmp_path / "out" / name).read_bytes() for name in ("studio.db", "bundle.json")]
    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        published += [tar.extractfile(m).read() for m in tar.getmembers() if not m.name.endswith(".png")]
    secrets = [str(src.data_dir).encode(), str(tmp_path).encode(), HOST.encode(), socket.gethostname().encode()]
    found = {secret for data in published for secret in secrets if secret in data}
    # kept, the source rows name them, so the search can find them
    assert found == (set(secrets) if keep_paths else set())


def test_bundle_of_one_sweep_holds_only_its_runs_references_and_images(study, tmp_path):
    src, ids = study
    info = bundle_study(src, tmp_path / "out", sweep_ids=[ids["b"]])
    ro = RunStore(tmp_path / "out", read_only=True)
    runs = src.raw_rows("runs", "sweep_id = ?", [ids["b"]])
    refs = src.raw_rows("refs", "id = ?", [ids["r2"]])
    hashes = _used_hashes(runs, refs)
    assert [r["status"] for r in runs] == ["ok", "failed"]
    _assert_scrubbed("runs", ro.raw_rows("runs"), runs, str(tmp_path))
    _assert_scrubbed("refs", ro.raw_rows("refs"), refs, str(tmp_path))
    _assert_scrubbed("sweeps", ro.raw_rows("sweeps"), src.raw_rows("sweeps", "id = ?", [ids["b"]]), str(tmp_path))
    assert {r["hash"] for r in ro.raw_rows("images")} == hashes
    assert {p.name for p in (tmp_path / "out" / "images").rglob("*.png")} == {f"{h}.png" for h in hashes}
    assert info["counts"] == {"runs": 2, "refs": 1, "sweeps": 1, "images": 4} and info["sweep_ids"] == [ids["b"]]
    ro.close()


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "is corrupt: the SHA-256 of"),
    ("missing", "is missing from"),
    ("link", "is a symbolic link"),
])
def test_a_bad_image_is_named_and_no_half_bundle_is_left(study, tmp_path, damage, message):
    src, ids = study
    digest = src.get_run(1)["images"][0]
    path = src.image_path(digest)
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    elif damage == "missing":
        path.unlink()
    else:  # the same bytes behind a link: never followed
        path.rename(tmp_path / "elsewhere.png")
        path.symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(StoreError, match=f"{digest}.*{message}"):
        bundle_study(src, tmp_path / "out", archive=True)
    assert {p.name for p in tmp_path.iterdir()} == {"study"} | ({"elsewhere.png"} if damage == "link" else set())


def test_out_must_be_new_or_empty_and_sane(study, tmp_path):
    src, ids = study
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "empty-target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty-target")
    for out in ("full", "file", "link"):
        with pytest.raises(StoreError, match=f"bundle folder {tmp_path / out} already exists and is not an empty"):
            bundle_study(src, tmp_path / out)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    for out, why in [("a\x00b", "NUL byte"), ("x" * 300, "a name of 300 bytes")]:
        with pytest.raises(UnsafePath, match=why):
            bundle_study(src, tmp_path / out)
    with pytest.raises(StoreError, match="sweep 999 does not exist"):
        bundle_study(src, tmp_path / "new", sweep_ids=[ids["a"], 999])
    with pytest.raises(StoreError, match="non-empty list of integers"):
        bundle_study(src, tmp_path / "new", sweep_ids=[])
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    bundle_study(src, tmp_path / "empty", sweep_ids=[ids["a"]])
    assert (tmp_path / "empty" / "studio.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "empty-target", "file", "full", "link", "study"]


def test_archive_holds_the_bundle_as_regular_files_with_relative_names(study, tmp_path):
    src, ids = study
    info = bundle_study(src, tmp_path / "demo", sweep_ids=[ids["a"]], archive=True)
    archive = tmp_path / "demo.tar.gz"
    assert info["archive"] == str(archive) and info["archive_bytes"] == archive.stat().st_size
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert all(m.isreg() and m.mode == 0o644 and m.uid == 0 for m in members)
        files = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "demo").rglob("*") if p.is_file()]
        assert sorted(m.name for m in members) == sorted(files)
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / "demo"
    assert (unpacked / "studio.db").read_bytes() == (tmp_path / "demo" / "studio.db").read_bytes()
    ro = RunStore(unpacked, read_only=True)
    assert [r["id"] for r in ro.runs()] == [r["id"] for r in src.sweep_runs(ids["a"])]
    ro.close()
    (tmp_path / "demo2.tar.gz").write_bytes(b"older")
    with pytest.raises(StoreError, match="demo2.tar.gz already exists"):
        bundle_study(src, tmp_path / "demo2", archive=True)
    assert not (tmp_path / "demo2").exists()


def test_a_bundle_is_complete_without_its_source(study, tmp_path):
    src, _ = study
    bundle_study(src, tmp_path / "out")
    src.data_dir.rename(tmp_path / "moved-away")
    ro = RunStore(tmp_path / "out", read_only=True)
    shown = [run for run in ro.runs() if run["images"]]
    assert len(shown) == 4 and all(ro.load_images(run["images"]).shape == (2, 8, 8, 3) for run in shown)
    assert all(len(ro.load_images(ro.get_reference(key)["images"])) == 2 for key in ("r1", "r2"))
    ro.close()


def test_cli_bundle_end_to_end(study, tmp_path, capsys):
    src, ids = study
    d, out = str(src.data_dir), tmp_path / "demo"
    assert main(["--data-dir", d, "bundle", str(out), "--sweep", str(ids["a"]), str(ids["b"]), "--archive"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bundled 4 runs, 2 refs, 2 sweeps, 10 images (") and lines[0].endswith(f"into {out}")
    assert lines[1].startswith(f"archive: {out}.tar.gz (")
    _assert_scrubbed("runs", RunStore(out, read_only=True).raw_rows("runs"),
                     src.raw_rows("runs", "sweep_id IS NOT NULL"), str(tmp_path))
    assert main(["--data-dir", d, "bundle", str(tmp_path / "kept"), "--sweep", str(ids["a"]), "--keep-paths"]) == 0
    capsys.readouterr()
    kept = RunStore(tmp_path / "kept", read_only=True)
    assert kept.raw_rows("runs") == src.raw_rows("runs", "sweep_id = ?", [ids["a"]])
    kept.close()
    for args, message in [([str(out)], "already exists and is not an empty folder"),
                          ([str(tmp_path / "x"), "--sweep", "999"], "sweep 999 does not exist"),
                          ([str(tmp_path / ("x" * 300))], "is refused: a name of 300 bytes")]:
        assert main(["--data-dir", d, "bundle", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert main(["--data-dir", str(tmp_path / "none"), "bundle", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "none").exists()


def _files(folder) -> dict[str, str]:
    """Every file and folder under ``folder``: the SHA-256 of each file, "folder" for a folder."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def test_read_only_commands_leave_a_bundle_byte_identical(study, tmp_path, capsys):
    """runs, frontier, export and knobs read a bundle without a single changed, added or removed file:
    studio.db keeps the SHA-256 bundle.json records, and SQLite leaves no -wal, -shm or -journal."""
    src, ids = study
    out = tmp_path / "out"
    bundle_study(src, out)
    before = _files(out)
    assert json.loads((out / "bundle.json").read_text())["studio_db_sha256"] == before["studio.db"]
    for args in (["runs"], ["runs", "--sweep", str(ids["a"]), "--limit", "1"], ["frontier"],
                 ["frontier", "--sweep", str(ids["a"]), "--metric", "psnr", "--cost", "latency_median_ms"],
                 ["export", "--csv", str(tmp_path / "runs.csv")], ["knobs"]):
        assert main(["--data-dir", str(out), *args]) == 0, args
        assert _files(out) == before, args
    printed = capsys.readouterr().out
    assert "median latency (ms)" in printed and "Pareto front of " in printed and "PSNR (pooled, dB)" in printed and "run 5 failed" in printed
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 5
    assert {p.name for p in out.iterdir()} == {"studio.db", "bundle.json", "images"}


def test_read_only_commands_on_a_live_study_add_no_file(study, tmp_path, capsys):
    """With the study's writer still open (its -wal and -shm beside the database), the read-only commands
    read what it committed and leave the folder as they found it, the -shm index aside."""
    src, ids = study
    shm = "studio.db-shm"
    before = _files(src.data_dir)
    assert {"studio.db-wal", shm} <= before.keys()
    for args in (["runs"], ["frontier"], ["export", "--csv", str(tmp_path / "runs.csv")]):
        assert main(["--data-dir", str(src.data_dir), *args]) == 0, args
    after = _files(src.data_dir)
    assert after.keys() == before.keys() and {k: v for k, v in after.items() if k != shm} == {
        k: v for k, v in before.items() if k != shm}
    printed = capsys.readouterr().out
    assert "could not load the pipeline" in printed and len(pd.read_csv(tmp_path / "runs.csv")) == 5
    src.finish_sweep(ids["b"])  # the writer goes on writing
