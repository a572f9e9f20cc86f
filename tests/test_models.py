import json
import re
import shutil

import numpy as np
import pytest

from studio_core.errors import ModelLoadError
from studio_core.measure.generation import generate
from studio_core.models import (
    EMBEDDED_MODEL_DIR,
    EMBEDDED_MODEL_NAME,
    EMBEDDED_MODELS,
    SUPPORTED_PIPELINES,
    check_pipeline_folder,
    load_pipeline,
    resolve_model,
    shipped_embedded_models,
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


def test_unknown_model_name_names_the_embedded_models_and_says_nothing_is_downloaded():
    with pytest.raises(ModelLoadError, match="neither an embedded model \\('emoji-sd', 'emoji-flux', "
                                             "'emoji-sd-lcm'\\), an existing folder, nor a pipeline in the local "
                                             "Hugging Face cache .*nothing is downloaded"):
        resolve_model("runwayml/stable-diffusion-v1-5")
    with pytest.raises(ModelLoadError, match="no model given: use an embedded model \\('emoji-sd', 'emoji-flux', "
                                             "'emoji-sd-lcm'\\)"):
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



def test_the_embedded_models_are_named_with_the_default_first():
    assert list(EMBEDDED_MODELS) == ["emoji-sd", "emoji-flux", "emoji-sd-lcm"] and EMBEDDED_MODEL_NAME == "emoji-sd"
    assert EMBEDDED_MODEL_DIR == EMBEDDED_MODELS["emoji-sd"]
    for name, folder in EMBEDDED_MODELS.items():
        assert folder.name == name and folder.parent == EMBEDDED_MODEL_DIR.parent  # studio_core/embedded/<name>
    assert shipped_embedded_models()[0] == "emoji-sd"  # shipped in every checkout


@pytest.mark.parametrize("name, command", [
    ("emoji-sd", "python -m studio_core.embedded.training --recipe cpu"),
    ("emoji-flux", "python -m studio_core.embedded.training flux --recipe cpu"),
    ("emoji-sd-lcm", "python -m studio_core distill --method lcm --teacher emoji-sd --recipe cpu"),
])
def test_an_embedded_name_without_its_folder_is_refused_with_the_command_that_trains_it(name, command, tmp_path,
                                                                                          monkeypatch):
    from studio_core.errors import SpecError
    from studio_core.spec import model_info

    missing = tmp_path / "embedded" / name
    monkeypatch.setitem(EMBEDDED_MODELS, name, missing)
    for step in ("absent", "half-written"):  # a checkout from before it was trained; a training still writing it
        if step == "half-written":
            missing.mkdir(parents=True)
            (missing / "README.md").write_text("training")
        with pytest.raises(ModelLoadError) as err:
            resolve_model(name)
        assert str(err.value) == (f"the embedded model '{name}' is not in this checkout: {missing} has no "
                                  f"model_index.json (train it with `{command} --out {missing}`)")
        with pytest.raises(SpecError, match=f"the embedded model '{name}' is not in this checkout"):
            model_info(name)  # what a spec, the page and the CLI say
        assert name not in shipped_embedded_models()


def test_emoji_flux_resolves_by_name_once_its_folder_is_there(tiny_emoji_flux, tmp_path, monkeypatch):
    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-sd-lcm", tmp_path / "no-student")  # shipped or not: not this test's
    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-flux", tmp_path / "not-yet")
    assert shipped_embedded_models() == ["emoji-sd"]
    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-flux", tiny_emoji_flux)
    assert resolve_model("emoji-flux") == resolve_model(" emoji-flux ") == str(tiny_emoji_flux)
    assert shipped_embedded_models() == ["emoji-sd", "emoji-flux"]
    assert resolve_model("emoji-sd") == str(EMBEDDED_MODEL_DIR)


def test_both_embedded_models_are_embedded_and_in_the_emoji_domain(tiny_emoji_flux, tmp_path, monkeypatch):
    from studio_core.measure.emoji_metrics import is_emoji_domain, unavailable_reason
    from studio_core.spec import RunSpec, model_info, resolve

    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-flux", tiny_emoji_flux)
    sd, flux = model_info("emoji-sd"), model_info("emoji-flux")
    assert sd.is_embedded and flux.is_embedded and flux.pipeline_class == "FluxPipeline"
    assert is_emoji_domain(sd) and is_emoji_domain(flux) and unavailable_reason(flux) is None
    spec, _ = resolve(RunSpec(model="emoji-flux", prompts=("red heart",)))
    assert (spec.height, spec.width) == (64, 64)  # its studio_defaults.json, not FluxPipeline's native 512 px
    # the same weights elsewhere are a user's folder: not embedded, still emoji by what its defaults file says
    copy = shutil.copytree(tiny_emoji_flux, tmp_path / "my-flux")
    assert not model_info(str(copy)).is_embedded and is_emoji_domain(model_info(str(copy)))


def test_a_study_bundle_keeps_each_embedded_name_as_a_name():
    from studio_core.store.bundle import _is_model_path

    for name, folder in EMBEDDED_MODELS.items():
        assert not _is_model_path(name, str(folder))
    assert _is_model_path("/home/me/emoji-flux", "/home/me/emoji-flux")  # a folder of that name is a folder


def test_the_page_and_app_py_offer_every_shipped_embedded_model(tiny_emoji_flux, tiny_pipeline_dir, tmp_path,
                                                                monkeypatch):
    from live import load_app_main

    import app.layout

    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-flux", tiny_emoji_flux)
    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-sd-lcm", tmp_path / "no-student")  # named, not shipped here
    monkeypatch.setattr(app.layout, "list_cached_pipelines", lambda: [("org/tiny", str(tiny_pipeline_dir))])
    demo = app.layout.build_demo("emoji-sd", tmp_path / "study")
    try:
        box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model")
        assert [value for _, value in box.choices] == ["emoji-sd", "emoji-flux", "org/tiny"]
        assert "emoji-sd or emoji-flux or emoji-sd-lcm (embedded)" in box.info
    finally:
        demo.studio.store.close()
    parser, args = load_app_main().parse_args(["--model", "emoji-flux"])
    assert args.model == "emoji-flux"
    shown = re.sub(r"-\s+", "-", " ".join(parser.format_help().split()))  # argparse may wrap after a hyphen
    assert "embedded model (emoji-sd, emoji-flux, emoji-sd-lcm)" in shown
    assert load_app_main().parse_args([])[1].model == "emoji-sd"


def test_the_shipped_emoji_flux_is_a_64_px_flux_pipeline_of_emoji():
    from studio_core.spec import model_info

    folder = EMBEDDED_MODELS["emoji-flux"]
    assert shipped_embedded_models()[:2] == ["emoji-sd", "emoji-flux"]  # both ship with the project
    assert check_pipeline_folder(folder)["_class_name"] == "FluxPipeline"
    defaults = json.loads((folder / "studio_defaults.json").read_text())
    assert (defaults["height"], defaults["width"], defaults["domain"]) == (64, 64, "emoji")
    assert model_info("emoji-flux").is_embedded
