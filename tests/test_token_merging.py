"""Token merging (ToMe for SD): the matching on random tensors, then the knob on the tiny pipeline,
once on the embedded model and once through the engine."""

import json
import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import studio_core.knobs.token_merging  # noqa: F401  (registers the knob)
from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs._hooks import StepTracker
from studio_core.knobs.token_merging import (
    TokenMergingSettings,
    _State,
    bipartite_soft_matching,
    cell_partition,
    self_attentions,
    token_grid,
)
from studio_core.spec import ModelInfo, RunSpec, model_info, validate

KNOB = KNOBS["token_merging"]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    from studio_core.models import load_pipeline

    return load_pipeline(tiny_pipeline_dir)


def _images(pipe, call_kwargs=None, steps=4, size=None):
    extra = {} if size is None else {"height": size, "width": size}
    out = pipe(["grinning face", "red heart"], num_inference_steps=steps, guidance_scale=2.0, output_type="np",
               generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
               **(call_kwargs or {}), **extra)
    return out.images


def _run(pipe, settings, steps=4, repeat=1, size=None):
    """Images of ``repeat`` pipeline calls with the knob applied, its report, then undo."""
    applied = KNOB.apply(pipe, settings)
    try:
        images = [_images(pipe, applied.call_kwargs, steps, size) for _ in range(repeat)]
        report = applied.report()
    finally:
        applied.undo()
    return images, report


# ------------------------------------------------------------------------------------------ settings
def test_registered_with_defaults_and_literal_choices():
    assert KNOB.title == "Token merging (ToMe)" and KNOB.order == 62 and KNOB.field_name == "knobs.token_merging"
    assert TokenMergingSettings() == TokenMergingSettings(0.5, 1, True)
    hints = typing.get_type_hints(TokenMergingSettings)
    assert typing.get_origin(hints["max_downsample"]) is typing.Literal
    assert typing.get_args(hints["max_downsample"]) == (1, 2, 4, 8)
    assert KNOB.parse({"ratio": 0.75, "max_downsample": 8, "random_dst": False}) == TokenMergingSettings(0.75, 8, False)


@pytest.mark.parametrize("raw, field", [({"ratio": 0}, "ratio"), ({"ratio": 0.9}, "ratio"), ({"ratio": True}, "ratio"),
                                        ({"max_downsample": 3}, "max_downsample"),
                                        ({"random_dst": "yes"}, "random_dst")])
def test_bad_settings_raise_spec_error(raw, field):
    with pytest.raises(SpecError) as exc:
        KNOB.parse(raw)
    assert exc.value.field == f"knobs.token_merging.{field}"
    with pytest.raises(SpecError, match=f"knobs.token_merging.{field}="):
        validate(RunSpec(prompts=("x",), knobs={"token_merging": raw}))


# ------------------------------------------------------------------------------------------ matching
def test_token_grid_follows_stride_two_downsampling():
    assert token_grid(16, 16, 256) == (1, 16, 16)
    assert token_grid(16, 16, 64) == (2, 8, 8)
    assert token_grid(10, 10, 9) == (4, 3, 3)  # 10 -> 5 -> 3
    assert token_grid(16, 16, 77) is None


@pytest.mark.parametrize("rows, cols", [(4, 4), (5, 3), (1, 1)])
def test_cell_partition_covers_the_grid_once(rows, cols):
    offsets = torch.randint(4, ((rows // 2) * (cols // 2),), generator=torch.Generator().manual_seed(0))
    dst, src, rest = cell_partition(rows, cols, offsets)
    assert sorted(torch.cat([dst, src, rest]).tolist()) == list(range(rows * cols))
    assert len(src) == 3 * len(dst) and len(dst) == (rows // 2) * (cols // 2)
    for k, t in enumerate(dst.tolist()):  # one destination in each 2x2 cell, at its offset
        cy, cx = divmod(k, cols // 2)
        assert (t // cols, t % cols) == (2 * cy + int(offsets[k]) // 2, 2 * cx + int(offsets[k]) % 2)
    assert all(t // cols >= 2 * (rows // 2) or t % cols >= 2 * (cols // 2) for t in rest.tolist())


@pytest.mark.parametrize("rows, cols, ratio, random", [(8, 8, 0.5, True), (8, 8, 0.75, False), (5, 7, 0.5, True),
                                                       (5, 7, 0.75, False), (6, 4, 0.1, True)])
def test_unmerge_of_merge_keeps_unmerged_tokens_and_copies_destinations(rows, cols, ratio, random):
    g = torch.Generator().manual_seed(rows * cols)
    x = torch.randn(3, rows * cols, 5, generator=g)
    x[:, 1] = x[:, 0] * 2  # a source parallel to a destination: cosine similarity 1
    offsets = torch.randint(4, ((rows // 2) * (cols // 2),), generator=g) if random else None
    n, sources = rows * cols, 3 * (rows // 2) * (cols // 2)
    m = bipartite_soft_matching(x, rows, cols, int(n * ratio), offsets)
    assert m.r == min(int(n * ratio), sources)
    merged = m.merge(x)
    assert merged.shape == (3, n - m.r, 5)
    y = m.unmerge(merged)
    assert y.shape == x.shape
    for b in range(3):
        unmerged = torch.cat([m.kept[b], m.rest]).tolist()
        assert torch.equal(y[b, unmerged], x[b, unmerged])  # tokens nobody merged come back unchanged
        alone = m.dst[m.count[b] == 1]
        assert torch.equal(y[b, alone], x[b, alone])
        assert torch.equal(y[b, m.merged[b]], y[b, m.dst[m.into[b]]])  # a merged source gets its destination
        for k in range(len(m.dst)):  # a destination is the mean of itself and its sources
            group = [int(m.dst[k])] + m.merged[b][m.into[b] == k].tolist()
            assert len(group) == int(m.count[b, k])
            torch.testing.assert_close(y[b, int(m.dst[k])], x[b, group].mean(0))
    if offsets is None:  # token 1 (top-left cell, source) is parallel to token 0 (its destination)
        assert all(1 in m.merged[b].tolist() for b in range(3))


def test_matching_is_per_sample_and_r0_is_identity():
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(1))
    both = bipartite_soft_matching(x, 8, 8, 20)
    one = bipartite_soft_matching(x[1:], 8, 8, 20)
    assert torch.equal(both.merged[1], one.merged[0]) and torch.equal(both.merge(x)[1:], one.merge(x[1:]))
    m = bipartite_soft_matching(x, 8, 8, 0)
    assert m.r == 0 and m.merge(x) is x and m.unmerge(x) is x


def test_report_says_when_max_downsample_excludes_every_block():
    state = _State(StepTracker(), TokenMergingSettings(max_downsample=1))
    state.size = (16, 16)
    assert state.plan(64, masked=False) is None  # an 8x8 grid is downsampled 2x
    report = KNOB._report(TokenMergingSettings(max_downsample=1), state, 1)
    assert not report.active and "max_downsample=1" in report.summary and "8x8" in report.summary


# ------------------------------------------------------------------------------------------ support
def _fake_info(tmp_path, denoiser, config):
    (tmp_path / denoiser).mkdir(parents=True)
    (tmp_path / denoiser / "config.json").write_text(json.dumps(config))
    return ModelInfo(path=str(tmp_path), pipeline_class="X", scheduler_class="DDIMScheduler",
                     compatible_schedulers=("DDIMScheduler",), sample_size=32, size_multiple=8,
                     num_train_timesteps=1000, denoiser=denoiser, time_cond_proj_dim=None, defaults={}, fingerprint="f")


def test_check_model_refuses_transformers_and_unets_without_attention(tmp_path, tiny_pipeline_dir):
    s = TokenMergingSettings()
    assert KNOB.check_model(model_info(str(tiny_pipeline_dir)), s) is None
    dit = _fake_info(tmp_path / "dit", "transformer", {"_class_name": "SD3Transformer2DModel"})
    reason = KNOB.check_model(dit, s)
    assert reason.startswith("ToMe for SD merges tokens in the UNet's transformer blocks")
    assert reason.endswith("this model's denoiser is SD3Transformer2DModel")
    plain = _fake_info(tmp_path / "plain", "unet", {
        "_class_name": "UNet2DConditionModel", "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
        "mid_block_type": "UNetMidBlock2D"})
    assert "no transformer blocks" in KNOB.check_model(plain, s)


def test_supports_refuses_a_transformer_pipeline(tiny_pipe):
    assert KNOB.supports(tiny_pipe, TokenMergingSettings()) is None
    assert len(self_attentions(tiny_pipe.unet)) == 4
    fake = SimpleNamespace(transformer=torch.nn.Linear(1, 1))
    assert "this pipeline's denoiser is Linear" in KNOB.supports(fake, TokenMergingSettings())


# ------------------------------------------------------------------------------------------ pipeline
def test_tome_changes_images_repeats_exactly_counts_and_undoes(tiny_pipe):
    before = _images(tiny_pipe)
    (a, b), report = _run(tiny_pipe, TokenMergingSettings(), repeat=2)
    assert not np.array_equal(a, before) and np.isfinite(a).all()
    assert np.array_equal(a, b)  # random destinations are seeded per step: same seed, same image
    assert np.array_equal(_images(tiny_pipe), before)  # undo restores the original forward exactly
    # tiny UNet: latent 16x16; three self-attentions at 16x16 (one down, two up), one in the 8x8 mid block
    r = int(256 * 0.5)
    d = report.details
    assert report.active and d["steps"] == 4 and d["pipeline_calls"] == 2
    assert d["tokens_merged_per_step"] == [3 * r] * 4 and d["calls_merged_per_step"] == [3] * 4
    assert d["calls_left_alone_per_step"] == [1] * 4 and d["tokens_merged"] == 12 * r
    assert report.summary == (f"merged {r} of 256 tokens (50%) in 3 self-attention calls per step at the 16x16 level; "
                              "12 calls in 4 steps (1 call per step at coarser levels left alone: max_downsample=1)")


def test_max_downsample_and_top_left_destinations(tiny_pipe):
    (rand,), _ = _run(tiny_pipe, TokenMergingSettings(ratio=0.3, max_downsample=2))
    (top_left,), report = _run(tiny_pipe, TokenMergingSettings(ratio=0.3, max_downsample=2, random_dst=False))
    assert not np.array_equal(rand, top_left)
    d = report.details
    assert d["calls_merged_per_step"] == [4] * 4 and d["calls_left_alone_per_step"] == [0] * 4
    assert d["tokens_merged_per_step"] == [3 * int(256 * 0.3) + int(64 * 0.3)] * 4
    assert [lv["grid"] for lv in d["levels"]] == ["16x16", "8x8"]


def test_ratio_too_small_to_merge_a_token_is_reported_inactive(tiny_pipe):
    before = _images(tiny_pipe)
    (images,), report = _run(tiny_pipe, TokenMergingSettings(ratio=0.003))  # int(256 * 0.003) == 0
    assert not report.active and report.summary.startswith("nothing merged: ratio 0.003 of 256 tokens")
    assert report.details["tokens_merged"] == 0 and np.array_equal(images, before)


def test_embedded_model_merges_half_of_the_8x8_tokens(embedded_pipe):
    before = _images(embedded_pipe, steps=5)
    (images,), report = _run(embedded_pipe, TokenMergingSettings(), steps=5)
    assert not np.array_equal(images, before)
    assert report.summary.startswith("merged 32 of 64 tokens (50%) in 3 self-attention calls per step at the 8x8 "
                                     "level; 15 calls in 5 steps")
    assert np.array_equal(_images(embedded_pipe, steps=5), before)
    # 40 px: latent 10x10, and a 5x5 grid one level down whose last row and column are outside every cell
    (odd,), report = _run(embedded_pipe, TokenMergingSettings(max_downsample=2), steps=2, size=40)
    assert np.isfinite(odd).all() and odd.shape == (2, 40, 40, 3)
    assert "merged 50 of 100 tokens (50%)" in report.summary and "merged 12 of 25 tokens (48%)" in report.summary


def test_engine_records_the_report_and_identical_repeats(tmp_path, tiny_pipeline_dir):
    from studio_core.measure.engine import Engine
    from studio_core.store.store import RunStore

    engine = Engine(RunStore(tmp_path / "study"))
    try:
        r = engine.run({"model": str(tiny_pipeline_dir), "prompts": ["grinning face"], "seeds": [0], "steps": 3,
                        "guidance": 2.0, "repeats": 2, "knobs": {"token_merging": {"ratio": 0.5}}},
                       reference={"sampler": "DPM++ 2M", "steps": 4})
        assert r.status == "ok", r.error
        row = engine.store.get_run(r.run_id)
        report = [k for k in row["knob_report"] if k["knob"] == "token_merging"][0]
        assert report["active"] and report["details"]["calls_merged_per_step"] == [3] * 3
        assert row["repeats_identical"] == 1 and not row["knobs_inactive"]
    finally:
        engine.store.close()
