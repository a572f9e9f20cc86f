"""Consistency distillation (``studio_core/distill``) on tiny pipelines built from config: the loss falls, the
student folder loads and samples with LCMScheduler, a LoRA student loads with ``load_lora_weights``, a killed run
resumes to the same weights as an uninterrupted one, and bad data or teachers are refused before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_families import build_sd15, build_sdxl

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star", "a black cross", "a white moon"]


def _data_folder(folder: Path, layout: str = "txt", size: int = 40) -> Path:
    """Six small drawn images with captions, in either documented layout."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(CAPTIONS):
        im = Image.new("RGB", (size, size + 8), tuple(int(v) for v in rng.integers(0, 255, 3)))
        ImageDraw.Draw(im).ellipse((4, 4, size - 4, size - 4), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        name = f"img{i}.png"
        im.save(folder / name)
        if layout == "txt":
            (folder / f"img{i}.txt").write_text(caption + "\n")
        rows.append({"file_name": name, "text": caption})
    if layout == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> Path:
    return build_sd15(tmp_path_factory.mktemp("teacher") / "sd15")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return _data_folder(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def student(sd15, shapes, tmp_path_factory) -> Path:
    """A full LCM student of the tiny SD teacher, trained with the tiny recipe and evaluated (gallery, card)."""
    from studio_core.distill.run import distill

    out = tmp_path_factory.mktemp("student") / "student"
    distill(str(sd15), out, _recipe(), data=str(shapes), evaluate_after=True)
    return out


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "studio_core", "distill", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def _recipe(**kw):
    from dataclasses import replace

    from studio_core.distill.run import DISTILL_RECIPES

    return replace(DISTILL_RECIPES["tiny"], threads=1, **kw)


def test_lcd_steps_lower_the_loss_on_a_tiny_sd(sd15, shapes, one_torch_thread):
    import torch

    from studio_core.distill.data import folder_data
    from studio_core.distill.lcm import LCDTrainer
    from studio_core.distill.run import _batch, encode_data
    from studio_core.models import load_pipeline

    pipe = load_pipeline(str(sd15))
    enc = encode_data(pipe, folder_data(shapes, 64), "cpu")
    trainer = LCDTrainer(pipe.unet, pipe.scheduler.alphas_cumprod, "epsilon", lr=1e-4, w_min=2, w_max=6, seed=0)
    batch = _batch(enc, torch.arange(len(CAPTIONS)))

    def held_loss() -> float:  # the same noise, grid points and w every time
        with torch.no_grad():
            return float(np.mean([trainer.loss(batch, torch.Generator().manual_seed(s)).item() for s in range(4)]))

    before = held_loss()
    for _ in range(40):
        trainer.step(batch)
    after = held_loss()
    assert after < 0.9 * before, (before, after)  # measured: 0.144 -> 0.111


def test_student_starts_as_its_teacher(sd15):
    """The guidance projection starts at zero: before training, the student's output is the teacher's."""
    import torch

    from studio_core.distill.lcm import build_student_unet, guidance_embedding
    from studio_core.models import load_pipeline

    unet = load_pipeline(str(sd15)).unet
    student = build_student_unet(unet, 32)
    x, ehs = torch.randn(2, 4, 8, 8), torch.randn(2, 7, unet.config.cross_attention_dim)
    t = torch.tensor([999, 500])
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=ehs).sample
        wemb = guidance_embedding(torch.tensor([3.0, 6.0]), 32)
        b = student(x, t, encoder_hidden_states=ehs, timestep_cond=wemb).sample
    assert student.config.time_cond_proj_dim == 32
    torch.testing.assert_close(a, b)


def test_full_student_folder_loads_and_samples_with_lcm(sd15, shapes, student, one_torch_thread):
    from diffusers import DiffusionPipeline, LCMScheduler

    from studio_core.measure.generation import generate
    from studio_core.models import student_info
    from studio_core.spec import model_info

    out = student
    report = json.loads((out / "training_report.json").read_text())
    assert report["distillation"]["method"] == "lcm" and report["distillation"]["steps"] == 12
    assert report["data"] == {"source": str(shapes.resolve()), "items": len(CAPTIONS), "size": 64}
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 256
    assert not (out / "checkpoint.pt").exists()  # a finished run leaves no checkpoint behind
    pipe.set_progress_bar_config(disable=True)
    for steps in (1, 2, 4):
        imgs = generate(pipe, [("a red square", 0), ("a blue circle", 1)], num_inference_steps=steps,
                        guidance_scale=4.0, height=64, width=64)
        assert imgs.shape == (2, 64, 64, 3) and imgs.std() > 0
    # guidance is an input of the student: another w draws another image from the same seed
    a, b = (generate(pipe, [("a red square", 0)], num_inference_steps=2, guidance_scale=g, height=64, width=64)
            for g in (2.0, 8.0))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0
    info = model_info(str(out))
    assert info.prediction_type == "consistency"
    assert student_info(out)["teacher"] == str(sd15)
    card = (out / "README.md").read_text()
    assert f"Student of {sd15}" in card and "12 of 12" in card and "## Gallery" in card
    assert (out / "gallery.png").is_file()
    defaults = json.loads((out / "studio_defaults.json").read_text())
    assert defaults["num_inference_steps"] == 4 and defaults["height"] == 64


def test_the_studio_runs_a_student_with_lcm_and_refuses_teacher_samplers(student, tmp_path, one_torch_thread):
    from studio_core.errors import SpecError
    from studio_core.knobs.sampler import samplers_for
    from studio_core.measure.engine import Engine
    from studio_core.spec import RunSpec, model_info, resolve
    from studio_core.store.store import RunStore

    info = model_info(str(student))
    assert set(samplers_for(info)) <= {"LCM", "TCD"} and "LCM" in samplers_for(info)
    with pytest.raises(SpecError, match="DDIM"):
        resolve(RunSpec(model=str(student), prompts=("a red square",), sampler="DDIM", steps=4))
    engine = Engine(RunStore(tmp_path / "study"))
    rows = {}
    for steps in (1, 4):
        result = engine.run({"model": str(student), "prompts": ["a red square", "a blue circle"], "seeds": [0],
                             "sampler": "LCM", "steps": steps, "guidance": 4.0, "warmup": 0, "repeats": 1})
        rows[steps] = result.row
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows[1]["steps"] == 1 and rows[4]["steps"] == 4
    # one UNet call per step: the guidance is an input, not a second (unconditional) pass
    assert rows[4]["nfe"] == 4 and rows[1]["nfe"] == 1


def test_lora_student_loads_with_load_lora_weights(sd15, shapes, tmp_path, one_torch_thread):
    import torch

    from studio_core.distill.run import distill
    from studio_core.models import load_pipeline

    out = tmp_path / "lora"
    report = distill(str(sd15), out, _recipe(), data=str(shapes), lora_rank=4, evaluate_after=False)
    assert report["distillation"]["method"] == "lcm-lora" and (out / "pytorch_lora_weights.safetensors").is_file()
    assert not (out / "model_index.json").exists()
    pipe = load_pipeline(str(sd15))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    ehs = pipe.encode_prompt("a red square", "cpu", 1, False)[0]
    with torch.no_grad():
        before = pipe.unet(x, t, encoder_hidden_states=ehs).sample
        pipe.load_lora_weights(str(out))
        after = pipe.unet(x, t, encoder_hidden_states=ehs).sample
    assert "default_0" in pipe.get_active_adapters() or pipe.get_active_adapters()
    assert (before - after).abs().max() > 1e-6  # the trained adapters change the UNet


def test_sdxl_teacher_with_jsonl_data(tmp_path, one_torch_thread):
    from diffusers import DiffusionPipeline, LCMScheduler, StableDiffusionXLPipeline

    from studio_core.distill.run import distill
    from studio_core.measure.generation import generate

    teacher = build_sdxl(tmp_path / "sdxl")
    data = _data_folder(tmp_path / "data", layout="jsonl")
    out = tmp_path / "student"
    distill(str(teacher), out, _recipe(steps=4), data=str(data), evaluate_after=False)
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipe, StableDiffusionXLPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    pipe.set_progress_bar_config(disable=True)
    imgs = generate(pipe, [("a red square", 0)], num_inference_steps=2, guidance_scale=4.0, height=64, width=64)
    assert imgs.shape == (1, 64, 64, 3)


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, at_least: int) -> int:
    """Block until the run's checkpoint.json reports ``at_least`` steps (a condition, not a sleep)."""
    import select

    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if path.is_file():
            step = json.loads(path.read_text())["step"]
            if step >= at_least:
                return step
        if proc.poll() is not None and not line:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before a checkpoint of step {at_least}")


def test_killed_run_resumes_to_the_same_student(sd15, shapes, tmp_path):
    import torch
    from safetensors.torch import load_file

    args = ["--teacher", str(sd15), "--data", str(shapes), "--recipe", "tiny", "--steps", "16", "--no-eval"]
    whole = _cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "studio_core", "distill", *args, "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        step = _wait_for_checkpoint(proc, out / "checkpoint.json", 8)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=120)
        proc.stdout.close()
    assert step < 16 and not (out / "training_report.json").exists()
    again = _cli(*args, "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stdout + again.stderr
    report = json.loads((out / "training_report.json").read_text())
    assert report["distillation"]["steps"] == 16 and report["resumed_at_steps"] and report["resumed_at_steps"][0] >= 8
    a = load_file(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_checkpoint_of_other_settings_is_refused(sd15, shapes, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    import torch

    torch.save({"fingerprint": "something-else"}, out / "checkpoint.pt")
    r = _cli("--teacher", str(sd15), "--data", str(shapes), "--recipe", "tiny", "--no-eval", "--out", str(out))
    assert r.returncode == 2 and "different distillation" in r.stderr and "--restart" in r.stderr
    assert (out / "checkpoint.pt").is_file()  # nothing discarded without being asked


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such folder"),
    ("empty", "no images"),
    ("no_caption", "img2.png has no caption: img2.txt is missing"),
    ("empty_caption", "img1.txt is empty"),
    ("jsonl_missing_file", "names gone.png, which is not there"),
    ("jsonl_no_text", "line 2 (img1.png) has no caption"),
    ("not_an_image", "img0.png cannot be read as an image"),
])
def test_bad_data_folder_names_what_is_missing(sd15, tmp_path, case, expected):
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case in ("no_caption", "empty_caption", "not_an_image"):
        _data_folder(folder)
        if case == "no_caption":
            (folder / "img2.txt").unlink()
        elif case == "empty_caption":
            (folder / "img1.txt").write_text("  \n")
        else:
            (folder / "img0.png").write_bytes(b"not a png")
    elif case.startswith("jsonl"):
        _data_folder(folder, layout="jsonl")
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
        if case == "jsonl_missing_file":
            rows[3]["file_name"] = "gone.png"
        else:
            del rows[1]["text"]
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = _cli("--teacher", str(sd15), "--data", str(folder), "--recipe", "tiny", "--out", str(out))
    assert r.returncode == 2, r.stderr[-2000:]
    assert expected in r.stderr and str(folder) in r.stderr and "metadata.jsonl" in r.stderr, r.stderr
    assert not out.exists() or not any(out.iterdir())  # refused before any work


def test_teachers_it_cannot_drive_are_refused_before_work(tmp_path, tiny_emoji_flux, sd15, shapes):
    from studio_core.distill.run import check_teacher
    from studio_core.errors import SpecError

    with pytest.raises(SpecError, match="FluxPipeline cannot be distilled here"):
        check_teacher(tiny_emoji_flux)
    r = _cli("--teacher", str(sd15), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--data" in r.stderr and "folder of images with captions" in r.stderr
    r = _cli("--teacher", str(sd15), "--data", str(shapes), "--lora", "-2", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "LoRA rank" in r.stderr
