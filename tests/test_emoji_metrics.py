"""The feature-network and standard-metric scores through the engine: an embedded run with a distribution set
records FD-emoji, KID, precision/recall, the perceptual distance and classifier fidelity, timed apart from its
latency; other families say "unavailable for this model" and draw nothing; local random backbones give LPIPS,
CLIP-score and FID end to end; the spec refuses a distribution set it cannot use.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from test_standard_metrics import weights_dir  # noqa: F401  (the module-scoped fixture of random backbones)

from studio_core.errors import SpecError
from studio_core.measure.engine import Engine
from studio_core.measure.standard_metrics import MetricWeights
from studio_core.spec import RunSpec, resolve
from studio_core.store.store import RunStore

REF = {"sampler": "default", "steps": 4}


def test_an_embedded_run_with_a_distribution_set_records_every_feature_network_score(tmp_path, emoji32):
    engine = Engine(RunStore(tmp_path / "study"), metric_weights=MetricWeights())
    r = engine.run({"model": "emoji-sd", "prompts": ["red heart", "grinning face"], "seeds": [0], "steps": 4,
                    "warmup": 1, "repeats": 1, "distribution": 50}, reference=REF)
    assert r.status == "ok", r.error
    row = r.row
    assert row["distribution"] == 50 and row["dist_n"] == 50
    assert row["dist_gen_ms"] > 0 and row["dist_score_ms"] > 0
    # the latency is the timed repeats' alone: the distribution set's generation is not in it
    assert row["latency_median_ms"] < row["dist_gen_ms"]
    for col in ("fd_emoji", "kid_emoji", "kid_emoji_std", "perceptual_emoji", "perceptual_emoji_std"):
        assert row[col] is not None and math.isfinite(row[col]), col
    assert row["fd_emoji"] > 0 and row["perceptual_emoji"] > 0  # 4 steps against a 4-step default-sampler reference
    assert 0 <= row["precision_emoji"] <= 1 and 0 <= row["recall_emoji"] <= 1
    assert row["classifier_n"] == 2 and 0 <= row["classifier_top5"] <= 1
    assert row["dist_classifier_n"] == 50 and 0 <= row["dist_classifier_top5"] <= 1
    assert "not comparable with published FID" in row["dist_method"] and "50 renders" in row["dist_method"]
    # the real set's features are kept in the study's cache, once per feature network and size
    assert len(list((tmp_path / "study" / "cache").glob("emoji-features-*-32.npz"))) == 1
    assert "LPIPS, FID and CLIP-score unavailable: no --metric-weights folder" in row["metrics_note"]
    # a run without a distribution set still gets the scores on its own images, and none of the set's
    plain = engine.run({"model": "emoji-sd", "prompts": ["red heart"], "seeds": [0], "steps": 4, "warmup": 1,
                        "repeats": 1}, reference=REF).row
    assert plain["perceptual_emoji"] is not None and plain["fd_emoji"] is None and plain["dist_gen_ms"] is None


def test_an_emoji_flux_run_is_scored_against_the_emoji_set_at_its_own_64_px(tiny_emoji_flux, tmp_path, monkeypatch):
    from studio_core.models import EMBEDDED_MODELS

    monkeypatch.setitem(EMBEDDED_MODELS, "emoji-flux", tiny_emoji_flux)  # the tiny recipe standing in for the real one
    engine = Engine(RunStore(tmp_path / "study"), metric_weights=MetricWeights())
    r = engine.run({"model": "emoji-flux", "prompts": ["red heart", "grinning face", "a cat"], "seeds": [0],
                    "warmup": 1, "repeats": 1, "distribution": 50}, reference={"sampler": "default", "steps": 2})
    assert r.status == "ok", r.error
    row = r.row
    assert (row["model"], row["height"], row["width"]) == ("emoji-flux", 64, 64)
    # prompt fidelity over the two prompts that are emoji captions, against the gallery at the images' 64 px
    assert row["fidelity_n"] == 2 and 0 <= row["fidelity_top1"] <= row["fidelity_top5"] <= 1
    assert "prompt fidelity over 2 of 3 images" in row["metrics_note"]
    assert "applies to the emoji models only" not in row["metrics_note"]
    cache = tmp_path / "study" / "cache"
    assert [p.name.split("-")[0] for p in cache.glob("emoji*-*.npz") if not p.name.startswith("emoji-")] == [
        "emoji64"]  # one rendering of the set, at 64 px: not FluxPipeline's native 512 px
    # the feature network's scores: its real set at 64 px too
    assert row["classifier_n"] == 2 and math.isfinite(row["perceptual_emoji"])
    assert row["dist_n"] == 50 and math.isfinite(row["fd_emoji"]) and "training renders at 64 px" in row["dist_method"]
    assert len(list(cache.glob("emoji-features-*-64.npz"))) == 1


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict:
    from tiny_families import FAMILIES

    root = tmp_path_factory.mktemp("families")
    return {name: str(FAMILIES[name](root / name)) for name in ("sd15", "flux", "pixart")}


@pytest.mark.parametrize("family", ["sd15", "flux", "pixart"])
def test_other_models_say_unavailable_and_draw_no_distribution_set(families, family, tmp_path):
    engine = Engine(RunStore(tmp_path / "study"), metric_weights=MetricWeights())
    r = engine.run({"model": families[family], "prompts": ["red heart"], "seeds": [0], "steps": 2, "repeats": 1,
                    "warmup": 1, "height": 64, "width": 64, "device": "cpu", "distribution": 50},
                   reference={"sampler": "default", "steps": 2})
    assert r.status == "ok", r.error
    row = r.row
    assert "unavailable for this model" in row["metrics_note"]
    assert all(row[c] is None for c in ("fd_emoji", "kid_emoji", "perceptual_emoji", "classifier_top1",
                                        "dist_gen_ms", "dist_n"))


def test_local_random_backbones_give_lpips_clip_score_and_fid_through_the_engine(weights_dir,  # noqa: F811
                                                                                  tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    for p in weights_dir.iterdir():  # the fixture's backbones, plus a real set of the user's own
        (folder / p.name).symlink_to(p)
    (folder / "reference-images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "reference-images" / f"{i}.png")
    engine = Engine(RunStore(tmp_path / "study"), metric_weights=MetricWeights.from_dir(folder))
    r = engine.run({"model": str(tiny_pipeline_dir), "prompts": ["red heart", "sun"], "seeds": [0], "steps": 2,
                    "warmup": 1, "repeats": 1, "distribution": 50}, reference={"sampler": "default", "steps": 2})
    assert r.status == "ok", r.error
    row = r.row
    assert row["lpips"] >= 0 and "AlexNet alexnet-owt-7be5be79.pth" in row["lpips_method"]
    assert 0 <= row["clip_score"] <= 100 and row["clip_method"]
    assert math.isfinite(row["fid"]) and row["fid_n"] == 50 and "not the TF-FID network" in row["fid_method"]
    assert "real set: 8 images" in row["fid_method"] and row["dist_gen_ms"] > 0
    assert row["fd_emoji"] is None  # the tiny model is not an emoji model: no feature-network scores


@pytest.mark.parametrize("value, message", [
    (10, "from 50 to 2000"), (5000, "from 50 to 2000"), (-1, "from 50 to 2000"), ("many", "from 50 to 2000"),
    (2000, "at most 1,000 images at 100 steps"),
])
def test_the_spec_refuses_a_distribution_set_it_cannot_use(value, message):
    with pytest.raises(SpecError, match=message):
        resolve(RunSpec(model="emoji-sd", prompts=("red heart",), steps=100, warmup=1, repeats=1,
                        distribution=value))
    spec, _ = resolve(RunSpec(model="emoji-sd", prompts=("red heart",), warmup=1, repeats=1, distribution=500))
    assert spec.distribution == 500


def test_the_card_words_each_score_with_its_n_spread_and_costs():
    from app.cards import quality_lines
    from studio_core.study.quality_text import emoji_image_text

    one = {"perceptual_emoji": 0.0065, "perceptual_emoji_std": 0.0, "n_images": 1, "classifier_top1": 0.0,
           "classifier_top5": 1.0, "classifier_n": 1}
    assert emoji_image_text(one) == ("perceptual distance 0.0065 vs reference (one image, so no spread) · classifier "
                                     "top-1 0% · top-5 100% (n=1)")
    row = {**one, "n_images": 4, "perceptual_emoji_std": 0.002, "fd_emoji": 10.2, "kid_emoji": 0.019,
           "kid_emoji_std": 0.004, "precision_emoji": 0.9, "recall_emoji": 0.95, "dist_n": 300, "dist_gen_ms": 28000.0,
           "dist_score_ms": 1000.0, "dist_classifier_top5": 0.92, "dist_method": "emoji feature network (…)",
           "lpips": 0.12, "lpips_std": 0.03, "lpips_method": "LPIPS (Zhang et al. 2018), AlexNet a.pth"}
    text = "\n".join(quality_lines(row))
    assert "perceptual distance 0.0065 ± 0.0020 vs reference (mean ± std over the images)" in text
    assert ("FD-emoji 10.20 · KID-emoji 0.0190 ± 0.0040 · precision 0.900 · recall 0.950 · classifier top-5 92% "
            "(n=300 images; generated in 28.0 s and scored in 1.00 s, apart from the latency)") in text
    assert "not with published FID" in text and "LPIPS 0.1200 ± 0.0300 (LPIPS (Zhang et al. 2018), AlexNet a.pth)" in text
    assert quality_lines({"psnr": 30.0}) == []  # a run scored before issue 19 shows none of these lines
