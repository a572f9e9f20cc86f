"""Output sanity: NaN, flat and all-black output fails the run with the reason; a sweep goes on past it."""

import json
import shutil

import numpy as np
import pytest

from studio_core.errors import BadOutput
from studio_core.measure.engine import Engine
from studio_core.measure.sanity import check_finite, check_pictures
from studio_core.store.store import RunStore
from studio_core.study.sweep import run_sweep, sweep_from_dict

REF = {"sampler": "DDIM", "steps": 2}


def test_finite_output_passes_and_nan_or_inf_names_the_images():
    ok = np.random.default_rng(0).random((3, 8, 8, 3), dtype=np.float32)
    check_finite(ok)
    bad = ok.copy()
    bad[1, 2, 3, 0] = np.nan
    bad[2, 0, 0, 1] = np.inf
    with pytest.raises(BadOutput, match=r"NaN or infinite values in 2 of 3 images \(index 1, 2\).*fp16"):
        check_finite(bad)


def test_flat_and_black_images_fail_and_real_pictures_pass():
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    check_pictures(pictures)
    emoji_like = np.full((1, 16, 16, 3), 255, np.uint8)  # white background, one dark shape: a picture
    emoji_like[0, 4:12, 4:12] = 0
    check_pictures(emoji_like)
    night = np.zeros((1, 16, 16, 3), np.uint8)
    night[0, 3, 3] = 200  # a few stars are not enough: nearly all black
    with pytest.raises(BadOutput, match=r"all-black images: 1 of 1 images \(index 0\)"):
        check_pictures(night)
    grey = np.full((2, 16, 16, 3), 128, np.uint8)
    grey[0] = pictures[0]
    with pytest.raises(BadOutput, match=r"one flat colour: 1 of 2 images \(index 1\)"):
        check_pictures(grey)


@pytest.fixture
def nan_at_the_last_timestep(tmp_path, tiny_pipeline_dir):
    """The tiny pipeline with a schedule whose last timestep has alpha_cumprod 0: DDIM's x0 prediction
    divides by zero there, so a run that visits t=999 ("trailing" spacing) returns NaN, and one that
    does not ("leading") is fine."""
    folder = tmp_path / "nan-model"
    shutil.copytree(tiny_pipeline_dir, folder)
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    betas = np.linspace(0.00085, 0.012, cfg.get("num_train_timesteps", 1000)).tolist()
    betas[-1] = 1.0
    cfg.update(trained_betas=betas, timestep_spacing="leading", set_alpha_to_one=True)
    cfg_file.write_text(json.dumps(cfg))
    return folder


def test_a_nan_run_is_failed_with_the_reason_and_a_sweep_goes_on_to_the_next_cell(tmp_path, nan_at_the_last_timestep):
    engine = Engine(RunStore(tmp_path / "study"))
    sweep = sweep_from_dict({
        "name": "spacing", "reference": REF,
        "base": {"model": str(nan_at_the_last_timestep), "prompts": ["grinning face"], "seeds": [0], "steps": 2,
                 "sampler": "DDIM", "repeats": 1},
        "grid": {"timestep_spacing": ["trailing", "leading"]}})
    out = run_sweep(engine, sweep, progress=False)
    rows = engine.store.sweep_runs(out["sweep_id"])
    assert [r["timestep_spacing"] for r in rows] == ["trailing", "leading"]
    bad, good = rows
    assert bad["status"] == "failed" and "NaN or infinite values in 1 of 1 images" in bad["error"]
    assert "try" in bad["error"] or "usual causes" in bad["error"]
    assert good["status"] == "ok" and good["psnr"] is not None  # the sweep went on past the NaN cell
    assert out["status"] == "done"
