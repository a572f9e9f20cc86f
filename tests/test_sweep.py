"""Sweeps from YAML presets: validation up front, one row per cell, resume after kill -9."""

import copy
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from studio_core.errors import SpecError
from studio_core.measure.engine import Engine
from studio_core.models import shipped_embedded_models
from studio_core.spec import RunSpec, config_hash, resolve
from studio_core.store.store import RunStore
from studio_core.study.sweep import OFF, load_preset, preset_yaml, run_sweep, sweep_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _preset(model, **grid):
    return {"name": "tiny-grid", "question": "does it work?",
            "base": {"model": str(model), "prompts": ["grinning face", "red heart"], "seeds": [0], "guidance": 2.0,
                     "repeats": 1},
            "grid": grid or {"sampler": ["DDIM", "Euler"], "steps": [2, 3]},
            "reference": {"sampler": "DPM++ 2M", "steps": 10}}


def test_grid_is_cartesian_first_axis_outermost(tiny_pipeline_dir):
    sweep = sweep_from_dict(_preset(tiny_pipeline_dir))
    assert [(c["sampler"], c["steps"]) for c in sweep.cells] == [("DDIM", 2), ("DDIM", 3), ("Euler", 2), ("Euler", 3)]
    assert [s.steps for s in sweep.specs] == [2, 3, 2, 3] and len(sweep) == 4


@pytest.mark.parametrize("change, field, text", [
    ({"grid": {"steps": [2, 0]}}, "steps", "in grid cell steps=0"),
    ({"grid": {"sampler": ["DDIM", "Eular"]}}, "sampler", "in grid cell sampler='Eular'"),
    ({"grid": {}}, "grid", "at least one axis"),
    ({"grid": {"steps": []}}, "grid.steps", "non-empty list"),
    ({"colour": "red"}, "preset.colour", "keys are"),
    ({"reference": {"sampler": "Nope"}}, "reference.sampler", "one of"),
    # the reference is checked like a cell: it used to be accepted, and every run then failed on it
    ({"reference": {"steps": "abc"}}, "reference.steps", "a whole number from 1 to 1000"),
    ({"reference": {"steps": 0}}, "reference.steps", "a whole number from 1 to 1000"),
    ({"reference": {"guidance": "high"}}, "reference.guidance", "a number from 0 to 50"),
    # the grid's size is counted from its axes' lengths before any cell is made (200,000 cells took 12 CPU-s)
    ({"grid": {"steps": list(range(1, 501)), "guidance": [*range(399), "bad"]}}, "grid", "at most 10,000 cells"),
    ({"name": "x" * 100_000}, "name", "at most 2,000 characters"),
])
def test_bad_presets_are_refused_before_any_run(tiny_pipeline_dir, change, field, text):
    with pytest.raises(SpecError) as info:
        sweep_from_dict({**_preset(tiny_pipeline_dir), **change})
    assert info.value.field == field and text in str(info.value) and len(str(info.value)) < 400


# ~400 bytes of nested aliases ("billion laughs"): nine levels of nine, 9**9 strings once base.a is printed
ALIAS_BOMB = "name: bomb\ngrid: {steps: [2]}\nbase:\n" + "\n".join(
    ['  i: &i ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"  {b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]" for a, b in zip("ihgfedcb", "hgfedcba")])


@pytest.mark.parametrize("text, message", [
    (ALIAS_BOMB, "anchors and aliases"),
    ("name: x\nbase: &base {prompts: [sun]}\ngrid: {steps: [2]}\n", "anchors and aliases"),  # an anchor alone too
    ("name: x\n" + "# padding\n" * 100_000, "at most 1,000,000 bytes"),
])
def test_a_preset_is_bounded_before_it_is_parsed(tmp_path, text, message):
    """An alias bomb took the CLI to 3.5 GB or a MemoryError: anchors and aliases are refused as they are met."""
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_preset(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_busy_studio_refuses_a_sweep_before_expanding_its_grid(tmp_path, tiny_pipeline_dir):
    """Admission comes before the cells are made: a full line answers "busy" at once, not after resolving
    every cell (here the last cell is bad, which is found only by expanding)."""
    from studio_core.errors import StudioBusy
    from studio_core.study.service import StudyService

    service = StudyService(RunStore(tmp_path / "s"), max_waiting=1)
    data = _preset(tiny_pipeline_dir, steps=[2, 3, 0])
    with service.device.admit(), pytest.raises(StudioBusy):
        service.run_sweep(data, progress=False)
    with pytest.raises(SpecError, match="steps=0"):  # with room in line, the bad cell is what is said
        service.run_sweep(data, progress=False)


def test_shipped_presets_resolve():
    presets = sorted((ROOT / "presets").glob("*.yaml"))
    assert len(presets) >= 3
    for path in presets:
        assert path.read_text().startswith("#"), f"{path.name} must open with a comment saying its question"
        if path.name == "distillation-study.yaml" and "emoji-sd-lcm" not in shipped_embedded_models():
            continue  # its student is not in this checkout yet: tests/test_students.py says so, skipped
        sweep = load_preset(path)
        assert sweep.question and len(sweep) >= 2
    shootout = load_preset(ROOT / "presets" / "sampler-shootout.yaml")
    assert len(shootout) >= 12 and len({s.sampler for s in shootout.specs}) >= 12


def _off_preset():
    return {"name": "deepcache or not", "question": "Does DeepCache pay off here?",
            "base": {"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0], "steps": 4, "repeats": 1,
                     "knobs": {"deepcache": {"branch": 1}, "token_merging": {"ratio": 0.3}}},
            "grid": {"knobs.deepcache.interval": ["off", 2], "knobs.deepcache.schedule": ["uniform", "non-uniform"]},
            "reference": {"sampler": "DPM++ 2M", "steps": 10}}


def test_an_off_cell_is_the_plain_run_without_that_knob():
    sweep = sweep_from_dict(_off_preset())
    assert [c["knobs.deepcache.interval"] for c in sweep.cells] == [OFF, OFF, 2, 2]
    plain = {**_off_preset()["base"], "knobs": {"token_merging": {"ratio": 0.3}}}
    alone, _info = resolve(RunSpec.from_dict(plain))
    # both "off" cells drop DeepCache (its base settings and the other axis on it too), and nothing else
    assert sweep.specs[0] == sweep.specs[1] == alone and config_hash(sweep.specs[0]) == config_hash(alone)
    assert sweep.specs[3].knobs["deepcache"] == {"branch": 1, "interval": 2, "schedule": "non-uniform"}
    assert sweep.specs[3].knobs["token_merging"] == {"ratio": 0.3}
    # resuming finds the same sweep: its key is the resolved configurations, "off" cells included
    assert sweep_from_dict(copy.deepcopy(_off_preset())).key == sweep.key
    with pytest.raises(SpecError, match="in grid cell DeepCache: interval=0"):  # cells are named for people
        sweep_from_dict({**_off_preset(), "grid": {"knobs.deepcache.interval": ["off", 0]}})


def test_the_shown_yaml_is_a_preset_that_loads_into_the_same_cells(tmp_path):
    data = _off_preset()
    text = preset_yaml(data)
    assert text.startswith("# Question: Does DeepCache pay off here?\n")
    assert "\n  knobs.deepcache.interval: ['off', 2]\n" in text  # quoted: YAML 1.1 readers take a bare off as false
    path = tmp_path / "presets" / "deepcache-or-not.yaml"
    path.parent.mkdir()
    path.write_text(text)
    loaded, direct = load_preset(path), sweep_from_dict(data)
    assert loaded.cells == direct.cells and loaded.specs == direct.specs and loaded.key == direct.key
    assert (loaded.name, loaded.question, loaded.reference) == (data["name"], data["question"], data["reference"])
    # written by hand, a bare off is the knob left out (YAML 1.2 booleans: only true and false are flags)
    path.write_text(text.replace("['off', 2]", "[off, 2]"))
    assert "[off, 2]" in path.read_text() and load_preset(path).cells == direct.cells


def test_sweep_runs_each_cell_once_and_reruns_only_with_new(tmp_path, tiny_pipeline_dir):
    engine = Engine(RunStore(tmp_path))
    sweep = sweep_from_dict(_preset(tiny_pipeline_dir))
    seen = []
    out = run_sweep(engine, sweep, progress=lambda done, total, row: seen.append((done, total, row["status"])))
    assert out["status"] == "done" and out["ran"] == 4
    assert seen == [(1, 4, "ok"), (2, 4, "ok"), (3, 4, "ok"), (4, 4, "ok")]
    rows = engine.store.sweep_runs(out["sweep_id"])
    assert [r["sweep_index"] for r in rows] == [0, 1, 2, 3] and {r["status"] for r in rows} == {"ok"}
    again = run_sweep(engine, sweep, progress=False)
    assert again["ran"] == 0 and "already complete" in again["note"]
    fresh = run_sweep(engine, sweep, new=True, progress=False)
    assert fresh["sweep_id"] != out["sweep_id"] and fresh["ran"] == 4
    assert engine.store.db["runs"].count == 8


def test_kill_9_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path, tiny_pipeline_dir):
    preset = _preset(tiny_pipeline_dir, steps=[4, 5, 6, 7, 8, 9])
    preset["base"]["repeats"] = 15  # each run takes long enough to be caught in the middle
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(preset))
    data = tmp_path / "study"
    cmd = [sys.executable, "-m", "studio_core", "--data-dir", str(data), "sweep", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until one run is done and the next is in progress
            time.sleep(0.05)
            if not (data / "studio.db").exists():
                continue
            try:
                with sqlite3.connect(data / "studio.db", timeout=5) as c:
                    done = c.execute("SELECT count(*) FROM runs WHERE status = 'ok'").fetchone()[0]
                    running = c.execute("SELECT id FROM runs WHERE status = 'running'").fetchall()
            except sqlite3.OperationalError:
                continue
            if done >= 1 and running:
                break
        else:
            pytest.fail("the sweep never reached its second run")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_run = running[0][0]
    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"interrupted earlier (rerun now): runs [{killed_run}]" in resumed.stderr
    store = RunStore(data)
    rows = store.runs()
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["sweep_index"] for r in ok) == list(range(6))  # every cell once, none twice
    assert [r["id"] for r in rows if r["status"] == "interrupted"] == [killed_run]
    assert not [r for r in rows if r["status"] == "running"]
    assert len({r["sweep_id"] for r in rows}) == 1 and store.sweeps()[0]["status"] == "done"
    assert store.integrity_check() == "ok"
