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
    ({"repeats": 0}, "repeats", "from 1 to 100"),
    ({"warmup": 0}, "warmup", "from 1 to 20"),
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
