import json
import shutil

import numpy as np
import pytest

from studio_core.errors import ModelLoadError
from studio_core.measure.generation import generate
from studio_core.models import (
    EMBEDDED_MODEL_DIR,
    SUPPORTED_PIPELINES,
    check_pipeline_folder,
    load_pipeline,
    resolve_model,
)


def test_tiny_pipeline_loads_through_from_pretrained(tiny_pipeline_dir):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_dir, local_files_only=True)
    assert isinstance(pipe, StableDiffusionPipeline)
    img = generate(pipe, [("grinning face", 0)], num_inference_steps=2, guidance_scale=2.0)
    assert img.shape == (1, 32, 32, 3) and img.dtype == np.uint8


def test_embedded_model_folder_is_a_complete_sd_pipeline():
    index = check_pipeline_folder(EMBEDDED_MODEL_DIR)
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert (EMBEDDED_MODEL_DIR / part).is_dir()
    size = sum(p.stat().st_size for p in EMBEDDED_MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 40 * 2**20
    assert (EMBEDDED_MODEL_DIR / "README.md").is_file() and (EMBEDDED_MODEL_DIR / "gallery.png").is_file()


def test_embedded_model_components(embedded_pipe):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = embedded_pipe
    assert isinstance(p, StableDiffusionPipeline)
    assert isinstance(p.vae, AutoencoderKL) and isinstance(p.unet, UNet2DConditionModel)
    assert isinstance(p.text_encoder, CLIPTextModel) and isinstance(p.tokenizer, CLIPTokenizer)
    assert p.unet.config.cross_attention_dim == p.text_encoder.config.hidden_size
    assert any("CrossAttn" in b for b in p.unet.config.down_block_types)


def test_same_seed_same_image_other_seed_other_image(embedded_pipe):
    a = generate(embedded_pipe, [("grinning face", 7)], num_inference_steps=10, guidance_scale=3.0)
    b = generate(embedded_pipe, [("grinning face", 7)], num_inference_steps=10, guidance_scale=3.0)
    c = generate(embedded_pipe, [("grinning face", 8)], num_inference_steps=10, guidance_scale=3.0)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0


def test_seed_is_per_image_not_per_batch(embedded_pipe):
    alone = generate(embedded_pipe, [("red heart", 3)], num_inference_steps=5, guidance_scale=3.0)
    batched = generate(embedded_pipe, [("grinning face", 1), ("red heart", 3)], num_inference_steps=5, guidance_scale=3.0)
    assert np.abs(alone[0].astype(int) - batched[1].astype(int)).max() <= 1


@pytest.mark.parametrize("breakage, expected", [
    ("missing_folder", "model folder not found"),
    ("no_index", "model_index.json is missing"),
    ("bad_index", "is not valid JSON"),
    ("no_unet", "component 'unet' is listed in model_index.json but"),
    ("no_weights", "has no weights file"),
    ("no_tokenizer_files", "has no tokenizer files"),
    ("corrupt_weights", "could not load the pipeline"),
])
def test_broken_folders_give_clear_errors(tiny_pipeline_dir, tmp_path, breakage, expected):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    if breakage == "missing_folder":
        folder = tmp_path / "does-not-exist"
    elif breakage == "no_index":
        (folder / "model_index.json").unlink()
    elif breakage == "bad_index":
        (folder / "model_index.json").write_text("{not json")
    elif breakage == "no_unet":
        shutil.rmtree(folder / "unet")
    elif breakage == "no_weights":
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    elif breakage == "no_tokenizer_files":
        for f in (folder / "tokenizer").iterdir():
            f.unlink()
    elif breakage == "corrupt_weights":
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(str(folder))
    assert expected in str(err.value)
    assert str(folder) in str(err.value)


def test_unknown_model_name_says_nothing_is_downloaded():
    with pytest.raises(ModelLoadError, match="nothing is downloaded"):
        resolve_model("runwayml/stable-diffusion-v1-5")
    with pytest.raises(ModelLoadError, match="no model given"):
        resolve_model("  ")


def test_model_index_names_the_embedded_defaults():
    defaults = json.loads((EMBEDDED_MODEL_DIR / "studio_defaults.json").read_text())
    assert defaults["height"] == 32 and defaults["guidance_scale"] >= 1.0


@pytest.mark.parametrize("name", sorted(SUPPORTED_PIPELINES))
def test_supported_pipeline_table_is_diffusers_own(name):
    """The static table the torch-free spec reads holds the installed pipelines' own ``__call__`` defaults,
    the arguments the studio passes, and the latent size a pipeline hard-codes (Flux's 128)."""
    import inspect

    import diffusers

    cls, facts = getattr(diffusers, name), SUPPORTED_PIPELINES[name]
    params = inspect.signature(cls.__call__).parameters
    for arg in ("prompt", "num_inference_steps", "guidance_scale", "height", "width", "generator", "output_type"):
        assert arg in params, f"{name}.__call__ takes no {arg}"
    assert (params["num_inference_steps"].default, params["guidance_scale"].default) == (
        facts.num_inference_steps, facts.guidance_scale)
    if facts.default_sample_size is not None:
        empty = cls(**dict.fromkeys(list(inspect.signature(cls.__init__).parameters)[1:]))  # no components
        assert empty.default_sample_size == facts.default_sample_size

