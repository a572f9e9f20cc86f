"""Pure figure, picture and text functions of the UI, on small hand-made frames and images."""

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app import cards, compare, grid, pictures, plots


def _runs():
    # (id, latency, psnr, sampler, precision): 1, 2 and 4 are the front; 3 is beaten by 2
    rows = [(1, 100.0, 20.0, "DDIM", "fp32"), (2, 200.0, 30.0, "Euler", "fp32"), (3, 300.0, 25.0, "DDIM", "fp16"),
            (4, 400.0, 35.0, "Euler", "fp16"), (5, 500.0, None, "DDIM", "fp32")]
    return pd.DataFrame([{"id": i, "latency_median_ms": x, "psnr": y, "sampler": s, "precision": p, "steps": 10,
                          "repeats": 3, "n_images": 2, "latency_iqr_ms": 1.0, "peak_mem_bytes": 2**20 * i,
                          "device_name": "CPU test (2 cores)", "threads": 2} for i, x, y, s, p in rows])


def test_frontier_plot_points_front_and_colours():
    fig = plots.make_frontier_plot(_runs(), "psnr", "latency_median_ms", color="sampler", symbol="precision",
                                   selected=[3])
    points = [t for t in fig.data if t.mode == "markers"]
    assert sorted(i for t in points for i in t.customdata) == [1, 2, 3, 4]  # run 5 has no PSNR
    assert {t.name for t in points} == {"DDIM / fp32", "Euler / fp32", "DDIM / fp16", "Euler / fp16"}
    front = [t for t in fig.data if t.name == "Pareto front"][0]
    assert list(front.x) == [100.0, 200.0, 400.0] and list(front.y) == [20.0, 30.0, 35.0] and front.line.shape == "hv"
    ring = [t for t in fig.data if t.name == "selected"][0]
    assert list(ring.x) == [300.0] and list(ring.text) == ["#3"]
    assert "4 runs, 3 on the Pareto front" in fig.layout.title.text and "CPU test" in fig.layout.title.text
    assert "lower is better" in fig.layout.xaxis.title.text and "higher is better" in fig.layout.yaxis.title.text
    hover = points[0].hovertext[0]
    assert "latency" in hover and "IQR" in hover and "n=3" in hover and "±" in hover


def test_frontier_plot_lower_is_better_metric_memory_in_mib_and_empty():
    df = _runs().assign(lpips=[0.5, 0.2, 0.3, 0.1, 0.4], peak_mem_method="cpu: above the baseline")
    fig = plots.make_frontier_plot(df, "lpips", "peak_mem_bytes", color=None)
    front = [t for t in fig.data if t.name == "Pareto front"][0]
    assert list(front.x) == [1.0, 2.0, 4.0] and "MiB" in fig.layout.xaxis.title.text
    assert "lower is better" in fig.layout.yaxis.title.text
    empty = plots.make_frontier_plot(pd.DataFrame(), "psnr")
    assert not empty.data and "No finished runs" in empty.layout.annotations[0].text
    older = plots.make_frontier_plot(df.drop(columns="peak_mem_method"), "lpips", "peak_mem_bytes")
    assert "None of these 5 runs measured its peak memory above its own baseline" in older.layout.annotations[0].text
    none = plots.make_frontier_plot(_runs(), "fidelity_top1")
    assert "None of these 5 runs has a prompt fidelity top-1 value" in none.layout.annotations[0].text


def _frame_row(**kw):
    """A run as ``RunStore.runs_frame`` gives it: JSON as text, NULLs as NaN."""
    row = {"id": 1, "status": "ok", "model": "emoji-sd", "sampler": "default", "scheduler_class": "DDIMScheduler",
           "timestep_spacing": None, "steps": 4, "guidance": 5.0, "precision": "fp32", "height": 32, "width": 32,
           "knobs": "{}", "knobs_label": "", "knobs_inactive": float("nan"), "knob_report": "[]", "repeats": 3,
           "n_images": 1, "latency_median_ms": 180.0, "latency_iqr_ms": 6.0, "latency_min_ms": 170.0,
           "latency_max_ms": 190.0, "latencies_ms": "[170.0, 180.0, 190.0]", "psnr": 21.0, "ssim": 0.85,
           "lpips": float("nan"), "fidelity_top1": 1.0, "fidelity_top5": 1.0, "peak_mem_bytes": 690 * 2**20,
           "device_name": "CPU Intel(R) Xeon(R) Processor (2 cores)", "threads": 2, "prompt_set": None,
           "sweep_id": float("nan")}
    row.update(kw)
    return row


def _plain(text):
    return text.replace("<b>", "").replace("</b>", "")


def test_hover_names_the_configuration_in_short_lines_without_nan_or_json():
    deepcache = _frame_row(id=3, knobs='{"deepcache": {"interval": 2}}',
                           knobs_label='deepcache={"interval": 2}', device_name="CPU " + "very long name " * 6)
    for row in (_frame_row(), deepcache, _frame_row(id=4, sampler="DDIM", knobs_inactive="sampler")):
        text = plots.hover_text(row)
        assert not any(bad in text for bad in ("nan", "None", "{", "did nothing")), text
        assert "DDIM (model default)" in text and "latency 180.0 ms median, IQR 6.00 ms (n=3)" in text
        assert max(len(_plain(line)) for line in text.split("<br>")) <= plots.HOVER_WIDTH, text
    assert "DeepCache N=2" in plots.hover_text(deepcache)
    useless = plots.hover_text(_frame_row(knobs='{"deepcache": {"interval": 1}}', knobs_inactive="deepcache"))
    assert "did nothing: DeepCache N=1" in useless
    noisy = plots.hover_text(_frame_row(latency_iqr_ms=60.0))
    assert "noisy (IQR 33% of median)" in noisy


def test_default_and_the_named_model_sampler_are_one_series_and_configuration_tells_knobs_apart():
    frame = pd.DataFrame([_frame_row(id=1), _frame_row(id=2, sampler="DDIM", knobs_inactive="sampler", psnr=22.0),
                          _frame_row(id=3, knobs='{"deepcache": {"interval": 2}}', psnr=19.0, latency_median_ms=120.0),
                          _frame_row(id=4, sampler="Euler", psnr=20.0, latency_median_ms=150.0)])
    by_sampler = plots.make_frontier_plot(frame, color="sampler")
    names = sorted(t.name for t in by_sampler.data if t.mode == "markers")
    assert names == ["DDIM (model default)", "Euler"] and by_sampler.layout.legend.title.text == "sampler"
    by_config = plots.make_frontier_plot(frame)  # the default colouring: sampler and active knobs
    names = sorted(t.name for t in by_config.data if t.mode == "markers")
    assert names == ["DDIM (model default)", "DDIM (model default)<br>DeepCache N=2", "Euler"]
    assert [plots.group_value(_frame_row(sweep_id=s), "sweep_id") for s in (3.0, float("nan"))] == ["sweep 3",
                                                                                                    "no sweep"]
    assert plots.group_value(_frame_row(), "knobs_label") == "no knobs"
    assert plots.group_value(_frame_row(), "height") == "32×32"
    assert plots.group_value(_frame_row(), "prompt_set") == "custom prompts"


def _bars(fig):
    """run id -> (bar to the right, bar to the left) of each point."""
    return {i: (plus, minus) for t in fig.data if t.mode == "markers" and not t.error_x.symmetric
            for i, plus, minus in zip(t.customdata, t.error_x.array, t.error_x.arrayminus)}


def test_latency_spread_draws_quartile_bars_from_the_repeats_or_half_the_iqr():
    frame = pd.DataFrame([_frame_row(id=1, latencies_ms="[10, 11, 12, 20]", latency_median_ms=11.5,
                                     latency_iqr_ms=3.25),
                          _frame_row(id=2, latencies_ms=None, latency_median_ms=30.0, latency_iqr_ms=4.0, psnr=25.0,
                                     n_images=2)])
    assert plots.latency_quartiles(frame.iloc[0].to_dict()) == (10.75, 14.0, True)
    assert plots.latency_quartiles(frame.iloc[1].to_dict()) == (28.0, 32.0, False)
    fig = plots.make_frontier_plot(frame, spread=True)
    assert _bars(fig) == {1: (2.5, 0.75), 2: (2.0, 2.0)}  # to Q3 and to Q1: asymmetric where the repeats are
    assert "quartiles of the timed repeats (1 runs)" in fig.layout.title.text
    assert "median ± IQR/2 (1 runs without recorded repeats)" in fig.layout.title.text
    frame["per_image_ms"] = frame["latency_median_ms"] / frame["n_images"]
    assert _bars(plots.make_frontier_plot(frame, cost="per_image_ms", spread=True))[2] == (1.0, 1.0)  # per image
    memory = plots.make_frontier_plot(frame.assign(peak_mem_method="cpu: above the baseline"), cost="peak_mem_bytes",
                                      spread=True)
    assert all(t.error_x.array is None for t in memory.data if t.mode == "markers")
    assert "shown when the cost is a latency" in memory.layout.title.text
    assert all(t.error_x.array is None for t in plots.make_frontier_plot(frame).data if t.mode == "markers")


def test_pixel_upscale_is_nearest_neighbour():
    img = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    big = pictures.pixel_upscale(img, 8)
    assert big.shape == (8, 8, 3) and (big[:4, :4] == img[0, 0]).all() and (big[4:, 4:] == img[1, 1]).all()
    assert pictures.pixel_upscale(np.zeros((512, 512, 3), np.uint8), 256).shape == (512, 512, 3)


def test_diff_heatmap_colours():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    heat = pictures.make_diff_heatmap(a, b, vmax=255)
    assert heat.shape == (4, 4, 3) and heat.dtype == np.uint8
    assert tuple(heat[1, 1]) == (0, 0, 4) and tuple(heat[0, 0]) == (252, 255, 164)  # ends of the ramp
    assert tuple(pictures.heat_colors(np.array(0.5))) == (188, 55, 84)
    with pytest.raises(ValueError, match="differ in shape"):
        pictures.make_diff_heatmap(a, np.zeros((8, 8, 3), np.uint8))
    assert pictures.make_colorbar(16, 2).shape == (2, 16, 3)


# ------------------------------------------------------------------------------------------ cards
def _ok_row(**kw):
    row = {"id": 7, "status": "ok", "n_images": 2, "repeats": 3, "latencies_ms": [10, 11, 12],
           "latency_median_ms": 11.0, "latency_iqr_ms": 1.0, "latency_min_ms": 10.0, "latency_max_ms": 12.0,
           "per_image_ms": 5.5, "cold_ms": 30.0, "load_ms": 0.0, "text_encode_ms": 1.0, "denoise_ms": 9.0,
           "step_mean_ms": 2.25, "nfe": 4, "decode_ms": 0.5, "peak_mem_bytes": 600 * 2**20,
           "mem_baseline_bytes": 500 * 2**20, "peak_mem_kind": "cpu_peak_rss", "psnr": 30.0, "psnr_std": 1.5,
           "ssim": 0.9, "ssim_std": 0.01, "lpips": None, "fidelity_top1": 0.5, "fidelity_top5": 1.0,
           "fidelity_n": 2, "metrics_note": "LPIPS unavailable: test", "knobs_inactive": "sampler",
           "knob_report": [{"knob": "precision", "active": False, "summary": "weights in float32"},
                           {"knob": "sampler", "active": False, "summary": "model's own DDIMScheduler"},
                           {"knob": "steps", "active": True, "summary": "4 steps"}],
           "device_name": "CPU test (2 cores)", "threads": 2, "torch_version": "2.13.0",
           "diffusers_version": "0.42.1", "git_commit": "abc123", "prompts": ["sun"], "seeds": [0, 1],
           "images": ["h0", "h1"], "sampler": "DDIM", "steps": 4, "precision": "fp32", "knobs": {}}
    row.update(kw)
    return row


def test_metrics_card_carries_spread_setup_and_flags():
    text = cards.metrics_card(_ok_row(), {"id": 1, "sampler": "DPM++ 2M", "steps": 10, "guidance": 3.0})
    for part in ["11.0 ms median of 3 timed repeats", "IQR 1.00 ms", "min..max 10.0..12.0 ms", "cold (first) call",
                 "text encode 1.00 ms", "2.25 ms per step, 4 denoiser calls", "VAE decode 0.50 ms",
                 "600.0 MiB (older run: absolute, the whole process's peak)", "PSNR 30.00 ± 1.50 dB",
                 "SSIM 0.9000 ± 0.0100", "LPIPS n/a", "mean ± std over 2 images", "DPM++ 2M, 10 steps",
                 "top-1 50%", "top-5 100%", "LPIPS unavailable: test", "CPU test (2 cores) · 2 torch threads",
                 "torch 2.13.0", "diffusers 0.42.1", "commit abc123"]:
        assert part in text, part
    # the model's own sampler asked for by name is a baseline, not a failure
    assert cards.knob_lines(_ok_row()) == ["**Precision**: weights in float32 (baseline)",
                                           "**Sampler**: model's own DDIMScheduler (baseline)",
                                           "**Steps**: 4 steps"]
    assert "DDIM (model default) · 4 steps" in text and "9% of the median (noisy above 25%)" in text
    failed = cards.metrics_card({"id": 3, "status": "failed", "error": "out of memory: x"})
    assert "Run 3: failed" in failed and "out of memory: x" in failed
    single = cards.metrics_card(_ok_row(n_images=1))
    assert "±" not in single and "one image, so no spread" in single


def _readable(text):
    """No nan, None or raw dict anywhere a person reads (the inline images' data aside)."""
    words = re.sub(r'src="data:[^"]*"', "", text)
    return not re.search(r"\bnan\b|\bNone\b|\{|\}", words)


def test_metrics_card_draws_the_time_breakdown_as_a_stacked_bar():
    text = cards.metrics_card(_ok_row())  # 1 + 9 + 0.5 of an 11 ms pass: 0.5 ms is "other"
    bar = re.search(r'<div title="time breakdown of the median pass"[^>]*>(.*?)</div>', text).group(1)
    widths = [float(w) for w in re.findall(r"width:([\d.]+)%", bar)]
    assert widths == pytest.approx([100 / 11, 900 / 11, 50 / 11, 50 / 11], abs=0.01)
    for part in ["text encode 1.00 ms (9%)", "denoise 9.00 ms (82%)", "VAE decode 0.50 ms (5%)", "other 0.50 ms"]:
        assert part in text, part
    assert "time breakdown" not in cards.metrics_card(_ok_row(text_encode_ms=None, denoise_ms=None, decode_ms=None))


def test_metrics_card_knob_lines_read_human_even_for_an_old_karras_report():
    row = _ok_row(sampler="DPM++ 2M Karras", knobs_inactive=None, knobs={"deepcache": {"interval": 3}}, knob_report=[
        {"knob": "sampler", "active": True, "summary": "DDIMScheduler -> DPMSolverMultistepScheduler "
                                                       "{'use_karras_sigmas': True}"},
        {"knob": "deepcache", "active": True, "summary": "uniform every 3: 2 of 4 steps reused the cache"}])
    lines = cards.knob_lines(row)
    assert lines == ["**Sampler**: DDIMScheduler → DPMSolverMultistepScheduler with use karras sigmas on",
                     "**DeepCache N=3**: uniform every 3: 2 of 4 steps reused the cache"]
    text = cards.metrics_card(row)
    assert _readable(text) and "DPM++ 2M Karras · DeepCache N=3 · 4 steps" in text


def test_metrics_card_compares_with_the_pinned_baseline_in_fixed_units():
    base = _ok_row(id=3, latency_median_ms=20.0, latency_iqr_ms=1.0, psnr=29.0, peak_mem_bytes=612 * 2**20)
    text = cards.metrics_card(_ok_row(), baseline=base)
    assert "Against the baseline**, run 3 (DDIM (model default), 4 steps)" in text
    assert "**0.55×** the baseline's latency (45% faster: 11.0 vs 20.0 ms median)" in text
    assert "PSNR **+1.00** dB (better: 30.00 vs 29.00 dB)" in text and "peak memory **−12.0** MiB (less)" in text
    close = cards.metrics_card(_ok_row(), baseline=_ok_row(id=3, latency_median_ms=11.5, latency_iqr_ms=1.0))
    assert "**0.96×** the baseline's latency (within noise: 11.0 vs 11.5 ms median, the IQR ranges overlap)" in close
    assert "PSNR **+0.00** dB (same" in close and "peak memory **+0.0** MiB (same)" in close
    other = cards.metrics_card(_ok_row(), baseline=_ok_row(id=3, n_images=4, per_image_ms=11.0, prompts=["moon"]))
    assert "**0.50×** the baseline's latency per image" in other and "latency compared per image" in other
    assert "PSNR compares scores against different references" in other
    assert "this is the pinned baseline" in cards.metrics_card(_ok_row(), baseline=_ok_row())
    assert "none pinned. Pick a run in *Baseline run*" in cards.metrics_card(_ok_row(), baseline_hint=True)
    assert "Baseline" not in cards.metrics_card(_ok_row())  # the Runs tab's card pins nothing
    gaps = cards.metrics_card(_ok_row(psnr=None), baseline=_ok_row(id=3, latency_median_ms=None, peak_mem_bytes=None))
    assert "latency × n/a" in gaps and "PSNR Δ n/a" in gaps and "memory Δ n/a" in gaps and _readable(gaps)


def test_metrics_card_flags_noisy_timings_and_a_stage_no_setting_explains():
    noisy = cards.metrics_card(_ok_row(latency_iqr_ms=4.0))  # 36% of the 11 ms median
    assert "⚠ **Noisy timing**: IQR 4.00 ms is 36% of the median (over 25%)" in noisy
    assert "Noisy" not in cards.metrics_card(_ok_row(latency_iqr_ms=2.0))
    base = _ok_row(id=3, text_encode_ms=0.3, decode_ms=0.5)
    slow = cards.metrics_card(_ok_row(), baseline=base)
    assert "⚠ **text encode 3.3× the baseline's** (0.50 vs 0.15 ms per image)" in slow and "machine was" in slow
    assert "VAE decode" not in "".join(cards.timing_flags(_ok_row(), base))
    # a knob outside the denoising loop (or another size) explains a slower stage: no flag
    for change in ({"knobs": {"component_precision": {"text_encoder": "fp16"}}}, {"height": 64}):
        assert cards.timing_flags(_ok_row(**change), base) == []
    # a knob inside the denoising loop does not
    assert len(cards.timing_flags(_ok_row(knobs={"deepcache": {"interval": 3}}), base)) == 1


def test_metrics_card_shows_the_images_beside_their_reference():
    mine, ref = np.zeros((2, 8, 8, 3), np.uint8), np.full((2, 8, 8, 3), 200, np.uint8)
    text = cards.metrics_card(_ok_row(), {"id": 1, "sampler": "DPM++ 2M", "steps": 10, "precision": "fp32"},
                              images=mine, reference_images=ref)
    assert "**Beside the reference (DPM++ 2M, 10 steps, fp32)** (2 images, same prompts and seeds)" in text
    assert text.count("<img") == 4 and 'title="run 7: sun · seed 1"' in text
    assert 'title="reference (DPM++ 2M, 10 steps, fp32): sun · seed 1"' in text and _readable(text)
    assert cards.reference_strip(_ok_row(), mine, None) == ""


def test_sweep_grid_annotates_each_cell():
    axes = [("steps", (2, 4)), ("sampler", ("DDIM", "Euler"))]
    runs = {0: _ok_row(id=1), 1: _ok_row(id=2, latency_median_ms=22.0), 2: _ok_row(id=3, knobs_inactive=None),
            3: {"id": 4, "status": "failed", "error": "boom"}}
    html = grid.sweep_grid_html(axes, runs, lambda hashes: np.zeros((len(hashes), 32, 32, 3), np.uint8),
                                 title="Sweep 1")
    assert html.count("<img") == 6 and html.count("data-sweep-index") == 4
    assert "steps = 2" in html and "sampler = Euler" in html and "22.0 ms" in html and "PSNR 30.00 dB" in html
    assert "SSIM 0.900" in html and "IQR 1.00, n=3" in html and "failed</b> (run 4): boom" in html
    # the model's own sampler is the baseline, named as such: never flagged as a knob that did nothing
    assert "DDIM (model default)" in html and "did nothing" not in html
    # cells with images open them at full size: they carry their run id (the failed cell has none)
    assert html.count("data-run-id") == 3 and 'data-run-id="2"' in html and "cursor:zoom-in" in html
    # cells are placed by grid order: index 1 is (steps=2, sampler=Euler), second row, first column
    rows = html.split("<tr>")
    assert "run 2" in rows[3].split("</td>")[0]
    three = grid.sweep_grid_html(axes + [("precision", ("fp32", "fp16"))], {}, lambda h: None)
    assert three.count("<table") == 2 and "precision = fp16" in three and "not run" in three


def test_sweep_grid_names_axes_for_people_and_sizes_thumbnails_crisply():
    axes = [("knobs.deepcache.interval", ("off", 3)), ("knobs", ({}, {"token_merging": {"ratio": 0.5}}))]
    runs = {0: _ok_row(id=1, knobs_inactive=None, knobs={}),
            1: _ok_row(id=2, knobs_inactive="deepcache", knobs={"deepcache": {"interval": 1}})}
    small = grid.sweep_grid_html(axes, runs, lambda hashes: np.zeros((len(hashes), 32, 32, 3), np.uint8),
                                  image_size=64)
    big = grid.sweep_grid_html(axes, runs, lambda hashes: np.zeros((len(hashes), 32, 32, 3), np.uint8),
                                image_size=256)
    assert "DeepCache: interval = off" in small and "DeepCache: interval = 3" in small
    assert "knobs = no knobs" in small and "knobs = ToMe" in small and "knobs." not in small
    assert "did nothing here: DeepCache" in small  # a knob asked to act that did nothing is still said
    text = re.sub(r"<[^>]+>", " ", small)  # what a person reads
    assert not {"nan", "None", "{"} & set(re.findall(r"nan|None|\{", text))
    assert 'width="64" height="64"' in small and 'width="256" height="256"' in big
    assert small.count("image-rendering:pixelated") == 4
    # a 32 px image is upscaled nearest-neighbour on the server: the PNG sent is the thumbnail's size
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', big).group(1))
    assert Image.open(io.BytesIO(png)).size == (256, 256)


def test_compare_html_shows_shared_pairs_and_differences():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[1] = 40
    rows = [_ok_row(id=1), _ok_row(id=2)]
    html = compare.compare_html(rows, {1: a, 2: b})
    assert "sun<br>seed 0" in html and "sun<br>seed 1" in html and "|run 2 − run 1|: mean |Δ|" in html
    assert "mean |Δ| 0.0 of 255" in html and "mean |Δ| 40.0 of 255" in html
    assert "share no (prompt, seed)" in compare.compare_html([rows[0], _ok_row(id=3, prompts=["moon"])], {})
    assert compare.compare_html([], {}).count(compare.EMPTY) == 1


def test_compare_heatmaps_share_one_printed_scale_and_images_fill_the_width():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    small, large = a.copy(), a.copy()
    small[:, 0, 0] = 10
    large[:, 0, 0] = 200
    one = compare.compare_html([_ok_row(id=1), _ok_row(id=2)], {1: a, 2: small})
    two = compare.compare_html([_ok_row(id=1), _ok_row(id=3)], {1: a, 3: large})
    assert compare.SCALE_TEXT in one and compare.SCALE_TEXT in two and "64+ of 255" in compare.SCALE_TEXT
    # the same difference gets the same colour whichever pair it is in; past the top it saturates
    assert (pictures.make_diff_heatmap(a[0], large[0], compare.HEAT_VMAX)[0, 0] == pictures.heat_colors(1.0)).all()
    assert compare.image_size(2) == 256 and compare.image_size(4) == 246 and compare.image_size(40) == 96
    assert 'width="256"' in one and "(baseline)" in one and "DDIM" in one


def test_the_figure_draws_one_front_per_setup_and_says_so():
    runs = _runs().assign(model="emoji-sd", height=32, width=32, reference_id=1)
    runs.loc[runs["id"] == 3, ["model", "reference_id"]] = ["my-model", 2]  # beaten on the shared front, alone here
    fig = plots.make_frontier_plot(runs, "psnr", "latency_median_ms")
    fronts = [t for t in fig.data if t.mode == "lines"]
    assert len(fronts) == 1 and fronts[0].name == "front: emoji-sd · reference #1"  # my-model: one run, no line
    assert "4 on the Pareto fronts" in fig.layout.title.text and "2 setups" in fig.layout.title.text
