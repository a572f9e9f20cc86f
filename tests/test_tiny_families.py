"""Every tiny family folder loads through ``DiffusionPipeline`` and makes a 2-step image of its native size."""

from __future__ import annotations

import pytest
from tiny_families import FAMILIES

NATIVE_PX = {"sd15": 64, "sdxl": 64, "pixart": 256, "sd3": 64, "flux": 32, "sana_flow": 512, "sana_eps": 512,
             "ddpm": 32}
PIPELINE_CLASS = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                  "pixart": "PixArtAlphaPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline",
                  "sana_flow": "SanaPipeline", "sana_eps": "SanaPipeline", "ddpm": "DDPMPipeline"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(root / name) for name, build in FAMILIES.items()}


def test_registry_names_every_family():
    assert set(FAMILIES) == set(NATIVE_PX) == set(PIPELINE_CLASS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_loads_and_makes_a_two_step_image(family, family_dirs):
    import torch
    from diffusers import DiffusionPipeline

    folder = family_dirs[family]
    assert (folder / "studio_defaults.json").exists() == (family == "flux")  # the others carry their own defaults
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    px = NATIVE_PX[family]
    kwargs = {"num_inference_steps": 2, "output_type": "np", "generator": torch.Generator().manual_seed(0)}
    if family != "ddpm":
        kwargs.update(prompt="a cat", height=px, width=px)
    images = pipe(**kwargs).images
    assert images.shape == (1, px, px, 3)
    assert images.min() >= 0.0 and images.max() <= 1.0
