"""Distilled students in the studio: their lineage read from the folder, kept in the run row (and in a bundle
without the folders), one colour with their teacher on the frontier, in hovers and cards; list grids, which put a
teacher's samplers and steps and its student's in one sweep; and the distillation-study preset.

The student here is a fake one: the tiny SD pipeline with a UNet that takes the guidance embedding
(``time_cond_proj_dim``, its other weights the teacher's), LCMScheduler, and the ``distillation`` record that
``studio_core.distill`` writes into ``training_report.json``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from app import cards, compare, grid, plots
from studio_core.errors import SpecError
from studio_core.measure.engine import Engine
from studio_core.models import EMBEDDED_MODELS, family_name, lineage_text, student_info
from studio_core.spec import RunSpec, model_info, resolve, scheduler_steps_reason
from studio_core.store.bundle import bundle_study
from studio_core.store.store import RunStore
from studio_core.study.sweep import grid_size, load_preset, preset_yaml, run_sweep, sweep_from_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "presets" / "distillation-study.yaml"
REF = {"sampler": "DDIM", "steps": 2}  # the student cannot take DDIM: its reference is its own LCM at 2 steps
DEVICE = "CPU Intel(R) Xeon(R) Processor (2 threads)"


def _record(teacher: str, **kw) -> dict:
    return {"method": "lcm", "teacher": teacher, "minutes": 38.4, "device": "cpu", "device_name": DEVICE,
            "steps": 2100, **kw}


@pytest.fixture(scope="module")
def student(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """The tiny pipeline as an LCM student of itself (the teacher given as its folder path)."""
    import torch
    from diffusers import LCMScheduler, UNet2DConditionModel

    out = tmp_path_factory.mktemp("student") / "tiny-lcm"
    shutil.copytree(tiny_pipeline_dir, out)
    teacher = UNet2DConditionModel.from_pretrained(tiny_pipeline_dir / "unet")
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=32)
    missing, unexpected = unet.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("time_embedding.cond_proj") for k in missing)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    LCMScheduler.from_config({**LCMScheduler.load_config(tiny_pipeline_dir / "scheduler"),
                              "original_inference_steps": 50}).save_pretrained(out / "scheduler")
    (out / "training_report.json").write_text(json.dumps({"loss": [0.3, 0.2],
                                                          "distillation": _record(str(tiny_pipeline_dir))}))
    return out


def _spec(model, **kw) -> dict:
    return {"model": str(model), "prompts": ["grinning face"], "seeds": [0], "steps": 2, "guidance": 2.0,
            "warmup": 1, "repeats": 1, **kw}


# ------------------------------------------------------------------------------------------ the folder
def test_student_info_reads_the_distillation_record_and_nothing_else(student, tiny_pipeline_dir, tmp_path):
    assert student_info(student) == _record(str(tiny_pipeline_dir))
    assert student_info(tiny_pipeline_dir) is None  # no training_report.json: not a student
    for text in ('{"loss": [1.0]}', "not json", '{"distillation": "lcm"}', '{"distillation": {"method": "lcm"}}',
                 '["a list"]'):
        (tmp_path / "training_report.json").write_text(text)
        assert student_info(tmp_path) is None, text
    (tmp_path / "training_report.json").write_bytes(b"\xff\xfe not utf-8")
    assert student_info(tmp_path) is None
    # what a spec reads of the folder, torch-free: the student's record, the teacher none
    assert model_info(str(student)).student["teacher"] == str(tiny_pipeline_dir)
    assert model_info(str(tiny_pipeline_dir)).student is None


def test_lineage_is_one_line_naming_teacher_method_time_and_device():
    assert lineage_text(_record("emoji-sd")) == f"student of emoji-sd (LCM), distilled in 38 min on {DEVICE}"
    # a teacher given as a path is named by its folder; LoRA; a GPU without its name; seconds; hours
    assert lineage_text(_record("/home/me/models/sd15/", method="lcm-lora", minutes=0.5, device_name=None,
                                device="cuda")) == "student of sd15 (LCM-LoRA), distilled in 30 s on GPU"
    assert lineage_text(_record("emoji-sd", minutes=150.0)).startswith("student of emoji-sd (LCM), distilled in 2.5 h")
    assert lineage_text({"teacher": "emoji-sd"}) == "student of emoji-sd"
    assert lineage_text({"teacher": "emoji-sd", "method": "lcm", "device": "cpu"}) == \
        "student of emoji-sd (LCM), distilled on CPU"
    assert [family_name(m) for m in ("emoji-sd", "/a/b/sd15/", "org/name", r"C:\models\sd15")] == \
        ["emoji-sd", "sd15", "name", "sd15"]


def test_lcm_steps_are_capped_by_the_schedule_the_student_was_distilled_on(student):
    """diffusers' LCMScheduler refuses more steps than its ``original_inference_steps``: said before the run, and
    the student's reference (DPM++ 2M at 200 steps asked; a consistency model takes its own sampler) stays under."""
    from studio_core.measure.reference import reference_spec

    info = model_info(str(student))
    assert scheduler_steps_reason(info, "LCM", None, 50) is None
    assert "at most 50 for LCM (LCMScheduler)" in scheduler_steps_reason(info, "LCM", None, 51)
    with pytest.raises(SpecError) as err:
        resolve(RunSpec.from_dict(_spec(student, sampler="LCM", steps=60)))
    assert err.value.field == "steps" and "original_inference_steps" in str(err.value)
    spec, info = resolve(RunSpec.from_dict(_spec(student, sampler="LCM")))
    ref = reference_spec(spec, info, {"sampler": "DPM++ 2M", "steps": 200})
    assert (ref.sampler, ref.steps) == ("default", 50)


# ------------------------------------------------------------------------------------------ the run rows
@pytest.fixture(scope="module")
def study(student, tiny_pipeline_dir, tmp_path_factory):
    """A real study with a teacher run, a student run, and two failed student runs (broken weights; the folder
    gone since it last ran)."""
    engine = Engine(RunStore(tmp_path_factory.mktemp("study")))
    teacher_run = engine.run(_spec(tiny_pipeline_dir, sampler="DDIM"), reference=REF)
    student_run = engine.run(_spec(student, sampler="LCM"), reference=REF)
    broken = shutil.copytree(student, student.parent / "tiny-lcm-broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    broken_run = engine.run(_spec(broken, sampler="LCM"), reference=REF)
    moved = shutil.copytree(student, student.parent / "tiny-lcm-moved")
    assert engine.run(_spec(moved, sampler="LCM", steps=1), reference=REF).status == "ok"
    shutil.rmtree(moved)
    lost_run = engine.run(_spec(moved, sampler="LCM", steps=1), reference=REF)
    yield engine.store, [teacher_run, student_run, broken_run, lost_run]
    engine.store.close()


def test_runs_record_model_family_and_lineage_failed_ones_too(study, tiny_pipeline_dir):
    store, runs = study
    assert [r.status for r in runs] == ["ok", "ok", "failed", "failed"], [r.error for r in runs]
    rows = [store.get_run(r.run_id) for r in runs]
    lineage = f"student of pipe (LCM), distilled in 38 min on {DEVICE}"  # the teacher's folder is named pipe
    assert tiny_pipeline_dir.name == "pipe"
    assert [(r["model_family"], r["lineage"]) for r in rows] == [("pipe", None), ("pipe", lineage),
                                                                 ("pipe", lineage), ("pipe", lineage)]
    assert "It ran earlier in this session" in rows[3]["error"]  # the folder is gone: the row's lineage is as last read


def test_a_bundle_and_the_csv_keep_the_lineage_without_the_model_folders(study, tmp_path):
    store, runs = study
    bundle_study(store, tmp_path / "bundle")
    demo = RunStore(tmp_path / "bundle", read_only=True)
    try:
        rows = {r["id"]: r for r in demo.runs()}
        assert rows[runs[1].run_id]["lineage"].startswith("student of pipe (LCM)")
        assert {rows[r.run_id]["model_family"] for r in runs} == {"pipe"}
    finally:
        demo.close()
    store.export_csv(tmp_path / "runs.csv")
    import pandas as pd

    csv = pd.read_csv(tmp_path / "runs.csv")
    assert {"model_family", "lineage"} <= set(csv.columns)
    assert csv.set_index("id").loc[runs[1].run_id, "lineage"].startswith("student of pipe")


def test_the_frontier_coloured_by_model_family_puts_teacher_and_student_in_one_colour(study):
    store, runs = study
    frame = store.runs_frame(matching={"status": "ok"})
    by_family = plots.make_frontier_plot(frame, "psnr", color="model_family")
    points = [t for t in by_family.data if t.mode == "markers" and t.customdata is not None]
    assert sorted(i for t in points for i in t.customdata) == sorted(frame["id"])
    assert len({t.marker.color for t in points}) == 1 and {t.name for t in points} == {"pipe"}
    assert by_family.layout.legend.title.text == "model family (teacher and its students)"
    hovers = {i: h for t in points for i, h in zip(t.customdata, t.hovertext)}
    assert "student of pipe (LCM), distilled in 38 min on CPU" in hovers[runs[1].run_id]
    assert "student of" not in hovers[runs[0].run_id]
    by_model = plots.make_frontier_plot(frame, "psnr", color="model")  # by model: teacher, student, its copy apart
    assert len({t.marker.color for t in by_model.data if t.mode == "markers" and t.customdata is not None}) == 3
    # a row from before the column: its model is its own family, named as a folder
    assert plots.group_value({"model": "/home/me/sd15/"}, "model_family") == "sd15"


def test_the_page_offers_the_group_and_the_cards_say_the_lineage(study):
    import app.layout

    store, runs = study
    assert ("model family (teacher and its students)", "model_family") in app.layout.COLOR_COLUMNS
    teacher, pupil = store.get_run(runs[0].run_id), store.get_run(runs[1].run_id)
    card = cards.metrics_card(pupil)
    assert f"**Model** {pupil['model']}: student of pipe (LCM), distilled in 38 min" in card
    assert "student of" not in cards.metrics_card(teacher)
    header = compare.compare_html([teacher, pupil], {})  # the column heads name each run, lineage and all
    assert "student of pipe (LCM), distilled in 38 min" in header


# ------------------------------------------------------------------------------------------ list grids
def _list_preset(teacher, pupil) -> dict:
    return {"name": "teacher vs student", "question": "Is the student faster at the same quality?",
            "base": _spec(teacher), "reference": REF,
            "grid": [{"sampler": ["DDIM", "Euler"], "steps": [1, 2]},
                     {"model": [str(pupil)], "sampler": ["LCM"], "steps": [1, 2]}]}


def test_a_list_grid_is_its_products_one_after_another(tiny_pipeline_dir, student):
    sweep = sweep_from_dict(_list_preset(tiny_pipeline_dir, student))
    assert len(sweep) == grid_size(_list_preset(tiny_pipeline_dir, student)) == 6
    assert [(s.model == str(student), s.sampler, s.steps) for s in sweep.specs] == [
        (False, "DDIM", 1), (False, "DDIM", 2), (False, "Euler", 1), (False, "Euler", 2),
        (True, "LCM", 1), (True, "LCM", 2)]
    assert sweep.parts == ((("sampler", ("DDIM", "Euler")), ("steps", (1, 2))),
                           (("model", (str(student),)), ("sampler", ("LCM",)), ("steps", (1, 2))))
    assert dict(sweep.axes) == {"sampler": ("DDIM", "Euler", "LCM"), "steps": (1, 2), "model": (str(student),)}
    # the single-mapping form is unchanged: no parts, its axes as written
    single = sweep_from_dict({**_list_preset(tiny_pipeline_dir, student), "grid": {"steps": [2, 1, 2]}})
    assert single.parts == () and single.axes == (("steps", (2, 1, 2)),) and len(single) == 3


@pytest.mark.parametrize("grid, field, text", [
    ([{"steps": [1]}, {"steps": []}], "grid[1].steps", "a non-empty list of values"),
    ([{"steps": [1]}, "steps"], "grid[1]", "a mapping of axis -> list of values"),
    ([{"steps": [1]}, {}], "grid[1]", "at least one axis"),
    ([], "grid", "or a list of such mappings"),
    ("steps", "grid", "or a list of such mappings"),
    ([{"steps": list(range(1, 501)), "guidance": [float(g) for g in range(21)]},
      {"guidance": [float(g) for g in range(501)]}], "grid", "at most 10,000 cells"),
    ([{"steps": [1]}, {"sampler": ["LCM"], "steps": [0]}], "steps", "(in grid[1] cell sampler='LCM', steps=0)"),
])
def test_a_bad_list_grid_is_refused_naming_its_part(tiny_pipeline_dir, grid, field, text):
    with pytest.raises(SpecError) as err:
        sweep_from_dict({**_list_preset(tiny_pipeline_dir, tiny_pipeline_dir), "grid": grid})
    assert err.value.field == field and text in str(err.value), str(err.value)


def test_a_list_grid_round_trips_through_preset_yaml(tiny_pipeline_dir, student, tmp_path):
    data = _list_preset(tiny_pipeline_dir, student)
    text = preset_yaml(data)
    assert "grid:\n- sampler: [DDIM, Euler]\n  steps: [1, 2]\n- model:" in text
    path = tmp_path / "teacher-vs-student.yaml"
    path.write_text(text)
    loaded, direct = load_preset(path), sweep_from_dict(data)
    assert (loaded.cells, loaded.specs, loaded.parts, loaded.key) == (direct.cells, direct.specs, direct.parts,
                                                                      direct.key)


def test_a_stopped_list_grid_sweep_resumes_with_only_its_missing_cells(tiny_pipeline_dir, student, tmp_path):
    from studio_core.study.service import StudyService

    engine = Engine(RunStore(tmp_path / "study"))
    sweep = sweep_from_dict(_list_preset(tiny_pipeline_dir, student))
    done: list[int] = []
    first = run_sweep(engine, sweep, progress=lambda n, total, row: done.append(n), should_stop=lambda: len(done) >= 3)
    assert (first["status"], first["ran"]) == ("cancelled", 3)
    second = run_sweep(engine, sweep, progress=False)
    assert (second["sweep_id"], second["ran"], second["skipped"], second["status"]) == (first["sweep_id"], 3, 3,
                                                                                         "done")
    rows = engine.store.sweep_runs(first["sweep_id"])
    assert sorted(r["sweep_index"] for r in rows) == list(range(6)) and {r["status"] for r in rows} == {"ok"}
    assert [r["model_family"] for r in rows] == ["pipe"] * 6 and sum(bool(r["lineage"]) for r in rows) == 2
    # the grid view draws each part, its cells numbered as the sweep numbered them
    g = StudyService(engine.store).sweep_grid(first["sweep_id"])
    assert [[a for a, _ in part] for part in g.parts] == [["sampler", "steps"], ["model", "sampler", "steps"]]
    html = grid.sweep_parts_html(g.parts, g.runs_by_index, engine.store.load_images, title="s")
    assert "part 1 of 2" in html and "part 2 of 2" in html and html.count("Latency: median") == 1
    by_index = {int(i): int(r) for i, r in re.findall(r'data-sweep-index="(\d+)" data-run-id="(\d+)"', html)}
    assert by_index == {r["sweep_index"]: r["id"] for r in rows}
    engine.store.close()


# ------------------------------------------------------------------------------------------ the preset
def test_the_distillation_study_preset_is_teacher_then_student():
    """Read as data, so it holds whether or not the student is in this checkout."""
    data = yaml.safe_load(PRESET.read_text())
    assert PRESET.read_text().startswith("# Question:") and data["name"] == "distillation-study"
    assert data["question"] == ("How do the LCM student's 1-8 steps compare with its teacher's 50/20/10/4 steps on "
                                "distribution quality and latency?")
    assert data["base"] == {"model": "emoji-sd", "prompt_set": "emoji-8", "seeds": [0], "warmup": 1, "repeats": 3,
                            "distribution": 200}
    teacher, pupil = data["grid"]
    assert teacher["model"] == ["emoji-sd"] and teacher["steps"] == [50, 20, 10, 4] and len(teacher["sampler"]) == 3
    assert pupil == {"model": ["emoji-sd-lcm"], "sampler": ["LCM"], "steps": [1, 2, 4, 8]}
    assert grid_size(data) == 16


@pytest.mark.skipif(not (EMBEDDED_MODELS["emoji-sd-lcm"] / "model_index.json").is_file(),
                    reason="the shipped student emoji-sd-lcm is not in this checkout yet "
                           "(studio_core/embedded/emoji-sd-lcm/model_index.json is missing)")
def test_the_distillation_study_preset_resolves_on_the_shipped_student():
    sweep = load_preset(PRESET)
    assert len(sweep) == 16 and [len(s.prompts) for s in sweep.specs] == [8] * 16
    assert {s.distribution for s in sweep.specs} == {200}
    info = model_info("emoji-sd-lcm")
    assert info.student and family_name(info.student["teacher"]) == "emoji-sd"
    assert [s.sampler for s in sweep.specs[12:]] == ["LCM"] * 4
