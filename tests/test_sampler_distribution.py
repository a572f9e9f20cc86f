"""The sampler shootout benchmark reads its grid from a preset: which results file it writes, which samplers
``--quick`` keeps, ``--model`` in place of the preset's model (a tiny Flux pipeline built from config), and a
row's cells from the figures the engine stores (SQLite gives the denoiser calls back as a float)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import sampler_distribution as bench  # noqa: E402

from studio_core.errors import SpecError  # noqa: E402

FLUX_PRESET = ROOT / "presets" / "flux-sampler-shootout.yaml"


def test_each_preset_publishes_under_its_own_name(tmp_path: Path):
    assert bench.results_name(bench.DEFAULT_PRESET, "sampler-shootout") == "sampler_distribution"
    assert bench.results_name(FLUX_PRESET, "flux-sampler-shootout") == "sampler_distribution_flux"
    # a copy of the default preset elsewhere is another preset: it must not replace emoji-sd's table
    assert bench.results_name(tmp_path / "sampler-shootout.yaml", "sampler-shootout") == \
        "sampler_distribution_sampler-shootout"
    assert bench.results_name(tmp_path / "mine.yaml", "dpm-sweep") == "sampler_distribution_dpm-sweep"


def test_quick_keeps_one_deterministic_and_one_stochastic_sampler_or_the_first_two():
    assert bench.quick_samplers(("DDIM", "PNDM", "Euler a", "DPM++ 2M SDE")) == ["DDIM", "Euler a"]
    assert bench.quick_samplers(("Euler a", "UniPC", "DDIM")) == ["Euler a", "UniPC"]
    assert bench.quick_samplers(("Euler (flow)", "Heun (flow)", "UniPC (flow)")) == ["Euler (flow)", "Heun (flow)"]


def test_model_override_runs_the_flux_preset_on_another_folder(tmp_path: Path):
    from tiny_flux import build_tiny_flux

    folder = str(build_tiny_flux(tmp_path / "flux"))
    data, sweep = bench.read_preset(FLUX_PRESET, folder)
    assert data["base"]["model"] == folder and data["base"]["prompt_set"] == "emoji-8"
    assert sweep.name == "flux-sampler-shootout" and len(sweep) == 15
    assert {s.model for s in sweep.specs} == {folder}
    assert [(c["sampler"], c["steps"]) for c in sweep.cells[:3]] == [("Euler (flow)", 8), ("Euler (flow)", 14),
                                                                     ("Euler (flow)", 28)]


def test_a_missing_preset_or_a_model_that_cannot_take_its_samplers_is_refused(tmp_path: Path):
    with pytest.raises(SpecError, match="an existing YAML file"):
        bench.read_preset(tmp_path / "nope.yaml", "emoji-sd")
    # emoji-sd is a noise-prediction model: the flow samplers are refused before any work, naming the cell
    with pytest.raises(SpecError, match=r"flow.*in grid cell sampler='Euler \(flow\)', steps=8"):
        bench.read_preset(FLUX_PRESET, "emoji-sd")


def test_a_row_shows_the_stored_figures_and_a_failed_row_its_reason():
    ok = {"status": "ok", "sampler": "Heun (flow)", "nfe": 30.0, "latency_median_ms": 812.4, "latency_iqr_ms": 9.6,
          "psnr": 27.514, "ssim": 0.9751, "fd_emoji": 65.821, "kid_emoji": 0.04688, "kid_emoji_std": 0.0818,
          "precision_emoji": 0.9, "recall_emoji": 0.94, "dist_classifier_top5": 0.62, "perceptual_emoji": 0.0012,
          "perceptual_emoji_std": 0.0021}
    assert bench.table_row(bench.cell_label("Heun (flow)", 2), 8, ok, 11, 3) == [
        "Heun (flow) (shift 2)", "8", "no", "30", "812 (10)", "27.51", "0.975", "65.82", "46.88 ± 81.80", "0.90",
        "0.94", "62.0%", "0.001 ± 0.002", "11", "3"]
    failed = {"status": "failed", "error": "refused: steps | too\nmany", "sampler": "Euler a"}
    row = bench.table_row("Euler a", 10, failed, None, None)
    assert row[:4] == ["Euler a", "10", "yes", "**failed**: refused: steps / too many"] and row[4:] == ["-"] * 11
    assert len(row) == len(bench.table_row("x", 1, ok, None, None)) == 15
