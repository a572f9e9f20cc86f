"""The shipped second embedded model, emoji-flux: it loads as any user's FluxPipeline folder, is deterministic
per seed, stays within its size budget, every flow sampler and transformer cache knob runs on it, and its card
is generated from its reports."""

import json

import numpy as np
import pytest

from studio_core.models import EMBEDDED_MODELS, WEIGHT_SUFFIXES, load_pipeline

FOLDER = EMBEDDED_MODELS["emoji-flux"]
PAIRS = [("grinning face", 0), ("red heart", 1)]


@pytest.fixture(scope="module")
def pipe():
    p = load_pipeline("emoji-flux")
    p.set_progress_bar_config(disable=True)
    return p


def test_it_loads_from_its_folder_like_any_users_model():
    from diffusers import DiffusionPipeline, FluxPipeline, FluxTransformer2DModel

    p = DiffusionPipeline.from_pretrained(FOLDER, local_files_only=True)
    assert isinstance(p, FluxPipeline) and isinstance(p.transformer, FluxTransformer2DModel)
    assert p.transformer.config.guidance_embeds is False  # guidance is true CFG
    defaults = json.loads((FOLDER / "studio_defaults.json").read_text())
    assert defaults["domain"] == "emoji" and (defaults["height"], defaults["width"]) == (64, 64)
    # 64 px through a 4x VAE, packed 2x2: at least 64 image tokens for the token- and block-level knobs
    tokens = (defaults["height"] // p.vae_scale_factor // 2) ** 2
    assert tokens >= 64 and p.transformer.config.in_channels == 4 * p.vae.config.latent_channels


def test_the_folder_is_under_40_mb():
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    weights = [f for f in FOLDER.rglob("*") if f.suffix in WEIGHT_SUFFIXES]
    assert weights and size < 40 * 2 ** 20, size


def test_same_seed_same_images_other_seed_other_images(pipe):
    from studio_core.measure.generation import generate

    call = {"num_inference_steps": 6, "guidance_scale": 3.5, "height": 64, "width": 64}
    a = generate(pipe, PAIRS, **call)
    b = generate(pipe, PAIRS, **call)
    c = generate(pipe, [(p, s + 10) for p, s in PAIRS], **call)
    assert a.shape == (2, 64, 64, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    alone = generate(pipe, PAIRS[1:], **call)  # an image does not depend on its batch neighbours' seeds
    assert np.abs(alone[0].astype(int) - a[1].astype(int)).max() <= 1


def test_guidance_is_true_cfg_and_changes_the_image(pipe):
    from studio_core.measure.generation import generate, pipeline_call_kwargs

    kwargs = pipeline_call_kwargs(pipe, {"guidance_scale": 3.5})
    assert kwargs["true_cfg_scale"] == 3.5 and kwargs["negative_prompt"] == ""
    assert kwargs["max_sequence_length"] == pipe.tokenizer_2.model_max_length < 512
    assert "true_cfg_scale" not in pipeline_call_kwargs(pipe, {"guidance_scale": 1.0})
    call = {"num_inference_steps": 6, "height": 64, "width": 64}
    assert not np.array_equal(generate(pipe, PAIRS[:1], guidance_scale=1.0, **call),
                              generate(pipe, PAIRS[:1], guidance_scale=3.5, **call))


def test_every_flow_sampler_runs_on_it(pipe):
    from studio_core.knobs import KNOBS
    from studio_core.knobs.sampler import samplers_for
    from studio_core.measure.generation import generate
    from studio_core.spec import model_info

    names = samplers_for(model_info("emoji-flux"))
    assert {"Euler (flow)", "Heun (flow)", "DPM++ 2M (flow)", "UniPC (flow)"} <= set(names)
    from studio_core.knobs.sampler import SAMPLERS

    knob = KNOBS["sampler"]
    for name in names:
        applied = knob.apply(pipe, knob.Settings(sampler=name))
        try:
            assert type(pipe.scheduler).__name__ == SAMPLERS[name].cls, name
            images = generate(pipe, PAIRS[:1], num_inference_steps=4, guidance_scale=3.5, height=64, width=64)
            assert applied.report().active == (name != "Euler (flow)"), name  # Euler (flow): the model's own
        finally:
            applied.undo()
        assert images.shape == (1, 64, 64, 3) and images.std() > 1, name  # a picture, not a flat field


def test_the_card_is_generated_from_its_reports():
    from studio_core.embedded.training.evaluate import EVALUATION_FILE, weights_digest
    from studio_core.embedded.training.flux_card import render_flux_card

    report = json.loads((FOLDER / "training_report.json").read_text())
    evaluation = json.loads((FOLDER / EVALUATION_FILE).read_text())
    assert evaluation["weights"] == weights_digest(FOLDER)  # measured on these weights
    assert (FOLDER / "README.md").read_text() == render_flux_card(FOLDER, report, evaluation)
    assert (FOLDER / "gallery.png").is_file() and (FOLDER / "mag_ratios.json").is_file()
