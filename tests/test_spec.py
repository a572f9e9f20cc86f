"""Every invalid configuration is refused before any work, naming the field, the value and what is allowed."""

import pytest

from studio_core.errors import SpecError
from studio_core.spec import RunSpec, resolve


def _err(**fields) -> SpecError:
    with pytest.raises(SpecError) as info:
        resolve(RunSpec.from_dict({"prompts": ["grinning face"], **fields}))
    return info.value


@pytest.mark.parametrize("fields, field, allowed", [
    ({"steps": 0}, "steps", "from 1 to 1000"),
    ({"steps": 5000}, "steps", "from 1 to 1000"),
    ({"steps": 2.5}, "steps", "whole number"),
    ({"sampler": "Eular"}, "sampler", "DPM++ 2M Karras"),
    ({"sampler": "PNDM", "steps": 3}, "steps", "at least 4 for PNDM"),
    ({"sampler": "LCM"}, "sampler", "consistency-distilled"),
    ({"timestep_spacing": "sideways"}, "timestep_spacing", "trailing"),
    ({"height": 30}, "height", "multiple of"),
    ({"width": 8192}, "width", "up to"),
    ({"guidance": -1}, "guidance", "from 0 to 50"),
    ({"prompts": []}, "prompts", "at least one prompt"),
    ({"prompts": ["  "]}, "prompts", "non-empty"),
    ({"prompts": [], "prompt_set": "nope"}, "prompt_set", "emoji-8"),
    ({"seeds": []}, "seeds", "at least one seed"),
    ({"seeds": [1, 1]}, "seeds", "distinct"),
    ({"seeds": [-3]}, "seeds", "from 0"),
    ({"precision": "fp8"}, "precision", "fp32, fp16, bf16"),
    ({"device": "tpu"}, "device", "auto, cpu, cuda"),
    ({"repeats": -1}, "repeats", "from 1 to 100"),
    ({"warmup": -1}, "warmup", "from 1 to 20"),
    ({"knobs": {"nosuchknob": {}}}, "knobs", "one of"),
    ({"model": "/definitely/not/here"}, "model", "model folder not found"),
])
def test_invalid_values_name_field_value_and_allowed(fields, field, allowed):
    exc = _err(**fields)
    assert exc.field == field
    assert allowed in str(exc)
    assert repr(exc.value)[:20] in str(exc) or str(exc.value) in str(exc)


def test_unknown_key_is_an_error_not_ignored():
    with pytest.raises(SpecError, match="stepz"):
        RunSpec.from_dict({"prompts": ["x"], "stepz": 4})


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    exc = _err(model=str(tmp_path))
    assert exc.field == "model" and "model_index.json is missing" in str(exc)


def test_resolve_fills_model_defaults_and_prompt_set():
    spec, info = resolve(RunSpec.from_dict({"prompt_set": "emoji-4"}))
    assert info.is_embedded and info.pipeline_class == "StableDiffusionPipeline"
    import json

    from studio_core.models import EMBEDDED_MODEL_DIR

    documented = json.loads((EMBEDDED_MODEL_DIR / "studio_defaults.json").read_text())  # the card's defaults
    assert (spec.steps, spec.guidance, spec.height, spec.width) == (50, documented["guidance_scale"], 32, 32)
    assert spec.prompts[0] == "grinning face" and spec.n_images == 4
    assert "DPMSolverMultistepScheduler" in info.compatible_schedulers
    assert resolve(spec)[0] == spec  # resolving is idempotent (sweeps resolve, then the engine again)


def test_a_pipeline_the_studio_does_not_drive_is_refused_with_the_supported_list(tiny_pipeline_dir, tmp_path):
    import json
    import shutil

    from studio_core.models import SUPPORTED_PIPELINES
    from studio_core.spec import defaults_text, model_info

    folder = tmp_path / "img2img"
    shutil.copytree(tiny_pipeline_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}))
    info = model_info(str(folder))  # the configs still read: the page can say why
    assert info.sample_size == 32 and "StableDiffusionImg2ImgPipeline is not one of" in defaults_text(info)
    exc = _err(model=str(folder))
    assert exc.field == "model" and "not one of the text-to-image pipelines" in str(exc)
    assert ", ".join(SUPPORTED_PIPELINES) in str(exc)


def test_samplers_named_as_the_community_does():
    from studio_core.knobs.sampler import SAMPLERS

    wanted = {"DDIM", "DDPM", "PNDM", "PLMS", "LMS", "Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M",
              "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ SDE", "DEIS", "UniPC", "LCM"}
    assert wanted <= set(SAMPLERS)
    for name in wanted - {"LCM"}:  # every one but LCM runs on the embedded (DDIM-trained) model
        resolve(RunSpec.from_dict({"prompts": ["sun"], "sampler": name}))


def test_named_prompt_sets_are_captions_the_embedded_model_knows(emoji32):
    from studio_core.prompts import PROMPT_SETS

    captions = set(emoji32.captions)
    for name, prompts in PROMPT_SETS.items():
        assert set(prompts) <= captions, (name, sorted(set(prompts) - captions))


@pytest.mark.parametrize("sampler, spacing", [("default", None), ("DDIM", None), ("PNDM", None), ("PLMS", None),
                                              ("DPM++ 2M", None), ("DEIS", None), ("UniPC", None), ("DDPM", None)])
def test_steps_past_what_the_scheduler_can_index_are_refused_up_front(sampler, spacing):
    """1000 steps passed validation on the embedded model (1000 training timesteps) and failed mid-run with
    "IndexError: index 1000 is out of bounds" for these schedulers' 'leading' spacing: refused at resolve."""
    exc = _err(sampler=sampler, steps=1000)
    assert exc.field == "steps" and "at most 999" in str(exc) and "'leading' timestep spacing" in str(exc)
    resolve(RunSpec.from_dict({"prompts": ["sun"], "sampler": sampler, "steps": 1000,
                               "timestep_spacing": "trailing"}))  # the way out the message names


@pytest.mark.parametrize("sampler", ["default", "PNDM", "DPM++ 2M", "UniPC", "Euler", "DPM++ 2M Karras"])
def test_the_largest_accepted_step_count_runs_and_one_more_would_fail(sampler):
    """The refusal is the scheduler's real limit: the most steps ``resolve`` accepts run through diffusers'
    scheduler (random denoiser outputs), and one more, where refused, fails there."""
    import diffusers
    import torch

    from studio_core.knobs.sampler import SAMPLERS

    most = max(n for n in (998, 999, 1000) if _accepts(sampler, n))
    _, info = resolve(RunSpec.from_dict({"prompts": ["sun"], "sampler": sampler, "steps": most}))
    cls = getattr(diffusers, SAMPLERS[sampler].cls if sampler in SAMPLERS else info.scheduler_class)
    overrides = dict(SAMPLERS[sampler].overrides) if sampler in SAMPLERS else {}

    def denoise(steps: int) -> None:
        scheduler = cls.from_config(info.scheduler_config, **overrides)
        scheduler.set_timesteps(steps)
        x, gen = torch.zeros(1, 1, 2, 2), torch.Generator().manual_seed(0)
        for t in scheduler.timesteps:
            x = scheduler.step(torch.randn(1, 1, 2, 2, generator=gen), t, scheduler.scale_model_input(x, t)).prev_sample

    denoise(most)
    if most < info.num_train_timesteps:
        with pytest.raises((IndexError, AssertionError)):
            denoise(most + 1)


def _accepts(sampler: str, steps: int) -> bool:
    try:
        resolve(RunSpec.from_dict({"prompts": ["sun"], "sampler": sampler, "steps": steps}))
    except SpecError:
        return False
    return True


def test_a_lone_surrogate_in_a_prompt_is_refused_up_front():
    """It used to pass validation, make a failed run, and break that run's details page for good."""
    exc = _err(prompts=["grinning \ud800 face"])
    assert exc.field == "prompts" and "valid Unicode" in str(exc)
    str(exc).encode("utf-8")  # the message itself can be shown and stored


def test_the_work_of_one_run_is_capped_and_named():
    """steps 999 x warm-up 20 + repeats 100 was "inside the limits" and ran for hours: the product is capped."""
    exc = _err(steps=999, warmup=20, repeats=100)
    assert exc.field == "steps" and "at most 100,000 denoiser steps per run" in str(exc)
    assert "999 x 1 x (20 + 100) = 119,880" in str(exc)


@pytest.mark.parametrize("fields, field, allowed", [
    ({"model": "m" * 1_000_000}, "model", "at most 4,096 characters"),
    ({"model": "m" * 300}, "model", "not a usable path (File name too long)"),
    ({"seeds": list(range(100_000))}, "seeds", "at most 256 images per run"),
    ({"prompts": ["sun"] * 100_000}, "prompts", "at most 256 prompts"),
    ({"steps": 10 ** 4000}, "steps", "a whole number from 1 to 1000"),
])
def test_huge_inputs_are_refused_with_a_short_message(fields, field, allowed):
    """Counted before each item is read, and echoed by their start only: a 1 MB model name once came back
    whole, inside "OSError: File name too long"."""
    exc = _err(**fields)
    assert exc.field == field and allowed in str(exc) and len(str(exc)) < 400
