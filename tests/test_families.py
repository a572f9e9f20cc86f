"""Every model family on a tiny pipeline built from config: the true geometry and each pipeline's own defaults
read from its configs, a default run whose recorded size is the size computed, and the refusals made before
any work (an unconditional pipeline, PixArt at one step)."""

from __future__ import annotations

import pytest

from studio_core.errors import SpecError
from studio_core.measure.engine import Engine
from studio_core.measure.pipelines import load_options
from studio_core.models import SUPPORTED_PIPELINES
from studio_core.spec import RunSpec, defaults_text, model_info, resolve
from studio_core.store.store import RunStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# family -> (pipeline, native px, size multiple, steps, guidance, where steps and guidance come from)
EXPECTED = {
    "sd15": ("StableDiffusionPipeline", 64, 16, 50, 7.5, "StableDiffusionPipeline.__call__"),
    "sdxl": ("StableDiffusionXLPipeline", 64, 16, 50, 5.0, "StableDiffusionXLPipeline.__call__"),
    "pixart": ("PixArtAlphaPipeline", 256, 16, 20, 4.5, "PixArtAlphaPipeline.__call__"),
    "sd3": ("StableDiffusion3Pipeline", 64, 16, 28, 7.0, "StableDiffusion3Pipeline.__call__"),
    "flux": ("FluxPipeline", 512, 8, 4, 3.5, "studio_defaults.json"),  # 128 latent px x 4, packed 2x2
    "sana_flow": ("SanaPipeline", 512, 32, 20, 4.5, "SanaPipeline.__call__"),  # DC-AE: 32x, patch 1
    "sana_eps": ("SanaPipeline", 512, 32, 20, 4.5, "SanaPipeline.__call__"),
}
RUNNABLE = sorted(EXPECTED)
# 2 steps, one prompt, one repeat, the smallest size every family takes; the reference: its own scheduler
SMALL = {"prompts": ["red heart"], "seeds": [0], "steps": 2, "repeats": 1, "height": 64, "width": 64, "device": "cpu"}
REFERENCE = {"sampler": "default", "steps": 2}


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict:
    """Every family of ``tiny_families`` built once for the module: family -> folder."""
    from tiny_families import FAMILIES

    root = tmp_path_factory.mktemp("families")
    return {name: str(build(root / name)) for name, build in FAMILIES.items()}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    e = Engine(RunStore(tmp_path_factory.mktemp("study") / "study"), max_pipelines=1)
    yield e
    e.store.close()


@pytest.mark.parametrize("family", RUNNABLE)
def test_model_info_reads_true_geometry_and_the_pipelines_own_defaults(families, family):
    pipeline, native, multiple, steps, guidance, source = EXPECTED[family]
    info = model_info(families[family])
    assert (info.pipeline_class, info.sample_size, info.size_multiple) == (pipeline, native, multiple)
    assert info.unsupported is None
    assert (info.defaults["num_inference_steps"], info.defaults["guidance_scale"]) == (steps, guidance)
    assert info.defaults_source["num_inference_steps"] == info.defaults_source["guidance_scale"] == source
    spec, _ = resolve(RunSpec(model=families[family], prompts=("red heart",)), info)
    size = 32 if family == "flux" else native  # tiny_flux's studio_defaults.json says 32x32
    assert (spec.steps, spec.guidance, spec.height, spec.width) == (steps, guidance, size, size)
    text = defaults_text(info)
    assert f"{steps} steps, guidance {guidance:g}" in text and f"{size}x{size} px" in text
    assert (f"({pipeline}'s defaults)" if source.endswith("__call__") else "(studio_defaults.json)") in text


@pytest.mark.parametrize("family", RUNNABLE)
def test_default_run_records_the_size_it_computed(families, engine, family):
    """The recorded height and width are the images' and the decoder's: resolution binning (PixArt, Sana) would
    otherwise compute at 256 or 512 px and resize the image back to the size asked for."""
    small = {**SMALL, "height": 32, "width": 32} if family == "flux" else SMALL
    spec = RunSpec.from_dict({"model": families[family], **small})
    resolved, info = resolve(spec)
    pipe, _ = engine.pipeline(info, "cpu", load_options(resolved))
    decoded: list[tuple[int, int]] = []
    hook = pipe.vae.decoder.register_forward_hook(lambda m, args, out: decoded.append(tuple(out.shape[-2:])))
    try:
        result = engine.run(spec, reference=REFERENCE)
    finally:
        hook.remove()
    assert result.status == "ok", result.error
    size = (result.row["height"], result.row["width"])
    assert size == (small["height"], small["width"]) == result.images.shape[1:3]
    assert decoded and set(decoded) == {size}
    report = next(r for r in result.row["knob_report"] if r["knob"] == "resolution")
    if family in ("pixart", "sana_flow", "sana_eps"):
        assert report["details"]["resolution_binning"] is False
        assert f"resolution binning off ({EXPECTED[family][0]} would have computed {EXPECTED[family][1]}x" in (
            report["summary"])


def test_unconditional_ddpm_is_refused_before_any_work_naming_the_supported_pipelines(families, engine):
    info = model_info(families["ddpm"])
    assert (info.pipeline_class, info.sample_size, info.size_multiple) == ("DDPMPipeline", 32, 2)  # pixel space
    before = len(engine.store.runs())
    with pytest.raises(SpecError) as e:
        engine.run({"model": families["ddpm"], **SMALL, "height": 32, "width": 32})
    assert e.value.field == "model" and "DDPMPipeline is an unconditional pipeline" in str(e.value)
    assert all(name in str(e.value) for name in SUPPORTED_PIPELINES)
    assert len(engine.store.runs()) == before  # nothing recorded, nothing loaded


def test_pixart_at_one_step_is_refused_with_the_reason(families):
    with pytest.raises(SpecError) as e:
        resolve(RunSpec.from_dict({"model": families["pixart"], **SMALL, "steps": 1}))
    assert e.value.field == "steps" and "at least 2 for PixArtAlphaPipeline" in str(e.value)
    resolve(RunSpec.from_dict({"model": families["pixart"], **SMALL}))  # 2 steps resolve
