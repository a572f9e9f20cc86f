"""Pure figure, picture and text functions of the UI, on small hand-made frames and images."""

import numpy as np
import pandas as pd
import pytest

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
    df = _runs().assign(lpips=[0.5, 0.2, 0.3, 0.1, 0.4])
    fig = plots.make_frontier_plot(df, "lpips", "peak_mem_bytes", color=None)
    front = [t for t in fig.data if t.name == "Pareto front"][0]
    assert list(front.x) == [1.0, 2.0, 4.0] and "MiB" in fig.layout.xaxis.title.text
    assert "lower is better" in fig.layout.yaxis.title.text
    empty = plots.make_frontier_plot(pd.DataFrame(), "psnr")
    assert not empty.data and "No finished runs" in empty.layout.annotations[0].text
    none = plots.make_frontier_plot(_runs(), "fidelity_top1")
    assert "None of these 5 runs has a fidelity_top1" in none.layout.annotations[0].text


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
           "images": ["h0", "h1"], "sampler": "DDIM", "steps": 4, "precision": "fp32"}
    row.update(kw)
    return row


def test_metrics_card_carries_spread_setup_and_flags():
    text = cards.metrics_card(_ok_row(), {"id": 1, "sampler": "DPM++ 2M", "steps": 10, "guidance": 3.0})
    for part in ["11.0 ms median of 3 timed repeats", "IQR 1.00 ms", "min..max 10.0..12.0 ms", "cold (first) call",
                 "text encode 1.00 ms", "2.25 ms per step, 4 denoiser calls", "VAE decode 0.50 ms",
                 "600.0 MiB (peak resident memory of the process (CPU)", "PSNR 30.00 ± 1.50 dB",
                 "SSIM 0.9000 ± 0.0100", "LPIPS n/a", "mean ± std over 2 images", "DPM++ 2M, 10 steps",
                 "top-1 50%", "top-5 100%", "LPIPS unavailable: test", "CPU test (2 cores) · 2 torch threads",
                 "torch 2.13.0", "diffusers 0.42.1", "commit abc123"]:
        assert part in text, part
    assert cards.knob_lines(_ok_row()) == ["precision: weights in float32  (baseline)",
                                           "sampler: model's own DDIMScheduler  **[did nothing]**",
                                           "steps: 4 steps"]
    failed = cards.metrics_card({"id": 3, "status": "failed", "error": "out of memory: x"})
    assert "Run 3: failed" in failed and "out of memory: x" in failed
    single = cards.metrics_card(_ok_row(n_images=1))
    assert "±" not in single and "one image, so no spread" in single


def test_sweep_grid_annotates_each_cell():
    axes = [("steps", (2, 4)), ("sampler", ("DDIM", "Euler"))]
    runs = {0: _ok_row(id=1), 1: _ok_row(id=2, latency_median_ms=22.0), 2: _ok_row(id=3, knobs_inactive=None),
            3: {"id": 4, "status": "failed", "error": "boom"}}
    html = grid.sweep_grid_html(axes, runs, lambda hashes: np.zeros((len(hashes), 32, 32, 3), np.uint8),
                                 title="Sweep 1")
    assert html.count("<img") == 6 and html.count("data-sweep-index") == 4
    assert "steps = 2" in html and "sampler = Euler" in html and "22.0 ms" in html and "PSNR 30.00 dB" in html
    assert "SSIM 0.900" in html and "IQR 1.00, n=3" in html and "[did nothing: sampler]" in html
    assert "failed</b> (run 4): boom" in html
    # cells are placed by grid order: index 1 is (steps=2, sampler=Euler), second row, first column
    rows = html.split("<tr>")
    assert "run 2" in rows[3].split("</td>")[0]
    three = grid.sweep_grid_html(axes + [("precision", ("fp32", "fp16"))], {}, lambda h: None)
    assert three.count("<table") == 2 and "precision = fp16" in three and "not run" in three


def test_compare_html_shows_shared_pairs_and_differences():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[1] = 40
    rows = [_ok_row(id=1), _ok_row(id=2)]
    html = compare.compare_html(rows, {1: a, 2: b})
    assert "sun<br>seed 0" in html and "sun<br>seed 1" in html and "|run 2 − run 1|" in html
    assert "mean |Δ| 0.0" in html and "mean |Δ| 40.0" in html and "40 or more" in html
    assert "share no (prompt, seed)" in compare.compare_html([rows[0], _ok_row(id=3, prompts=["moon"])], {})
