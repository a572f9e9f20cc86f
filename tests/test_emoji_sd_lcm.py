"""The shipped student, emoji-sd-lcm: it loads as any user's folder, is emoji-sd with a guidance-conditioned UNet
and LCMScheduler, samples at 1-8 steps with one UNet call per step and its guidance as an input, meets the
issue's fidelity target in its own evaluation, and its card is generated from its reports."""

import json

import numpy as np
import pytest

from studio_core.models import EMBEDDED_MODELS, load_pipeline, student_info

FOLDER = EMBEDDED_MODELS["emoji-sd-lcm"]
TEACHER = EMBEDDED_MODELS["emoji-sd"]


@pytest.fixture(scope="module")
def pipe():
    p = load_pipeline("emoji-sd-lcm")
    p.set_progress_bar_config(disable=True)
    return p


def test_it_loads_as_a_student_of_emoji_sd():
    from diffusers import DiffusionPipeline, LCMScheduler, StableDiffusionPipeline

    p = DiffusionPipeline.from_pretrained(FOLDER, local_files_only=True)
    assert isinstance(p, StableDiffusionPipeline) and isinstance(p.scheduler, LCMScheduler)
    assert p.unet.config.time_cond_proj_dim == 256
    teacher = json.loads((TEACHER / "unet" / "config.json").read_text())
    assert {k: v for k, v in p.unet.config.items() if k != "time_cond_proj_dim" and not k.startswith("_")} == {
        k: v for k, v in teacher.items() if k != "time_cond_proj_dim" and not k.startswith("_")}
    info = student_info(FOLDER)
    assert info["teacher"] == "emoji-sd" and info["method"] == "lcm" and info["minutes"] <= 45
    defaults = json.loads((FOLDER / "studio_defaults.json").read_text())
    assert defaults["num_inference_steps"] == 4 and defaults["domain"] == "emoji"
    assert not (FOLDER / "checkpoint.pt").exists()


def test_it_samples_at_one_to_eight_steps_with_guidance_as_an_input(pipe):
    from studio_core.measure.generation import generate

    calls = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        for steps in (1, 2, 4, 8):
            calls.clear()
            imgs = generate(pipe, [("red heart", 0), ("rocket", 1)], num_inference_steps=steps, guidance_scale=5.0,
                            height=32, width=32)
            assert imgs.shape == (2, 32, 32, 3)
            assert calls == [2] * steps  # one call of the 2 images per step: no unconditional pass
    finally:
        hook.remove()
    a, b = (generate(pipe, [("red heart", 0)], num_inference_steps=4, guidance_scale=g, height=32, width=32)
            for g in (3.0, 9.0))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1  # the learned guidance input changes the image


def test_its_evaluation_meets_the_fidelity_target_on_the_teachers_captions():
    ev = json.loads((FOLDER / "evaluation.json").read_text())
    f = ev["fidelity"]
    assert f["student"]["4"]["train"]["n"] == 200 and f["student"]["4"]["train"]["top5"] >= 0.8
    assert {t["steps"] for t in f["teacher"]} == {50, 4}  # measured beside the teacher, same captions


def test_the_card_is_generated_from_its_reports():
    from studio_core.distill.card import card_text

    assert (FOLDER / "README.md").read_text(encoding="utf-8") == card_text(FOLDER)
    assert "Student of emoji-sd (LCM)" in card_text(FOLDER)
