"""The sampler shootout on distribution metrics: does a sampler's standing change between PSNR and FD-emoji?

PSNR and SSIM ask how close a run's images come to the same-seed reference (a converged solver at many
steps); a stochastic sampler leaves that path by design, so it ranks low there whatever its images look
like. The distribution metrics ask instead whether the images it draws look like the training set: FD-emoji,
KID, precision / recall and the classifier's top-5 on a distribution set of N images (N training captions,
seed = i), all on the studio's own emoji feature network (``measure.emoji_metrics``).

The grid comes from a sweep preset (``--preset``, default ``presets/sampler-shootout.yaml``): its model,
samplers, step counts, an optional ``flow_shift`` axis (a flow model's schedule shift: rows per shift), its
base settings and its reference. On a fresh temporary study, one ``Engine.run`` per cell, steps outermost
(emoji-8, seed 0, 1 warm-up call, 3 timed repeats in the shipped presets, then the distribution set, timed
apart as ``dist_gen_ms``), and the model's own default sampler at its default steps as the baseline row. The
table ranks the grid rows by PSNR and by FD-emoji side by side; a failed run is a row with its reason. Every
row's figures go to ``benchmarks/results/sampler_distribution-<date>.json`` for the default preset, and to
``sampler_distribution_<preset>-<date>.json`` for another (``flux-sampler-shootout``: ``_flux``), so each
model keeps its own table (``--dirty`` on uncommitted code; ``--model`` runs the preset on another folder).

Work on 2 CPU cores, counted in image-steps (every row's 4 passes over the 8 images and its distribution set,
and the 8 reference images at 200 steps once): emoji-sd's default (12 samplers x 10/20 steps, N=100) is about
65,000 image-steps at about 6 ms each (scoring included), 7 minutes. An emoji-flux image-step costs about
twice that (12-14 ms measured: a 7-block transformer on 64 tokens, called twice per step for true CFG), so
the flux preset (5 flow samplers x 8/14/28 steps, Heun at two calls per step) runs at N=50, the least a run
takes: about 28,500 image-steps, 8 minutes with the first row's set-up; N=100 would take about 12.

    .venv/bin/python benchmarks/sampler_distribution.py                      # emoji-sd: 12 samplers x 10/20 steps
    .venv/bin/python benchmarks/sampler_distribution.py --preset presets/flux-sampler-shootout.yaml   # emoji-flux
    .venv/bin/python benchmarks/sampler_distribution.py --quick --dirty      # development: 2 samplers, N=50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_PRESET = ROOT / "presets" / "sampler-shootout.yaml"
RESULTS_NAME = "sampler_distribution"  # the default preset's results; another preset's get its name appended
AXES = ("sampler", "steps", "flow_shift")  # the grid axes a shootout takes (the first two required)
# images per distribution set by preset name (about 10 minutes on 2 cores, see the docstring); others: 50
DEFAULT_N = {"sampler-shootout": 100, "flux-sampler-shootout": 50}
QUICK_N = 50
# a row's figures kept in the results file (with its wall time, ``cell_s``)
RAW_KEYS = ("status", "error", "sampler", "steps", "flow_shift", "scheduler_class", "nfe", "cold_ms",
            "latencies_ms", "latency_median_ms", "latency_iqr_ms", "psnr", "psnr_std", "psnr_min", "psnr_max",
            "identical_images", "ssim", "ssim_std", "perceptual_emoji", "perceptual_emoji_std", "classifier_top1",
            "classifier_top5", "fd_emoji", "kid_emoji", "kid_emoji_std", "precision_emoji", "recall_emoji",
            "dist_classifier_top1", "dist_classifier_top5", "dist_classifier_n", "dist_n", "dist_gen_ms",
            "dist_score_ms", "dist_method", "metrics_note", "timing_note")


def read_preset(path: Path, model: str | None = None):
    """A preset's dict, read as ``sweep.load_preset`` reads it (YAML 1.2 booleans, no anchors), with ``model`` in
    place of its base's when given, and its ``Sweep``: every cell resolved and checked before any work."""
    import yaml

    from studio_core.errors import SpecError
    from studio_core.study.sweep import _PresetLoader, load_preset, sweep_from_dict

    if not path.is_file():
        raise SpecError("preset", str(path), "an existing YAML file (see presets/)")
    sweep = load_preset(path) if model is None else None  # the loader's own checks, in one line each
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_PresetLoader)
    except yaml.YAMLError as exc:
        raise SpecError("preset", str(path), f"valid YAML ({' '.join(str(exc).split())})") from None
    if sweep is None:
        data = {**data, "base": {**(data.get("base") or {}), "model": model}} if isinstance(data, dict) else data
        sweep = sweep_from_dict(data, str(path))
    return data, sweep


def results_name(preset: Path, preset_name: str) -> str:
    """``sampler_distribution`` for the default preset; otherwise with the preset's name, less its
    ``sampler-shootout`` (``flux-sampler-shootout`` -> ``sampler_distribution_flux``)."""
    if preset.resolve() == DEFAULT_PRESET.resolve():
        return RESULTS_NAME
    tag = preset_name.replace("sampler-shootout", "").strip("-_ ") or preset_name
    return f"{RESULTS_NAME}_{tag}"


def quick_samplers(names) -> list[str]:
    """``--quick``: the preset's first deterministic and first stochastic sampler, or its first two when it has
    no stochastic one (the flow samplers)."""
    from studio_core.knobs.sampler import SAMPLERS

    picked = [s for s in names if not SAMPLERS[s].stochastic][:1] + [s for s in names if SAMPLERS[s].stochastic][:1]
    return [s for s in names if s in picked] if len(picked) == 2 else list(names[:2])


def cell_label(sampler: str, shift) -> str:
    """A grid row's name: the sampler, with its flow shift when the preset sets one."""
    return sampler if shift is None else f"{sampler} (shift {float(shift):g})"


def is_stochastic(row: dict) -> bool:
    """Whether the row's sampler injects fresh noise each step (``SamplerDef.stochastic``: ancestral, SDE, DDPM);
    the model's default is looked up by its scheduler class."""
    from studio_core.knobs.sampler import SAMPLERS

    name = row.get("sampler")
    if name in SAMPLERS:
        return SAMPLERS[name].stochastic
    plain = [d for d in SAMPLERS.values() if d.cls == row.get("scheduler_class") and not d.overrides]
    return bool(plain and plain[0].stochastic)


def ranks(rows: list[dict], key: str, *, higher_is_better: bool) -> dict[int, int]:
    """Competition ranks (1 = best, ties share the better rank) of the rows that have ``key``, by index."""
    values = {i: r[key] for i, r in enumerate(rows) if r.get("status") == "ok" and r.get(key) is not None}
    sign = -1 if higher_is_better else 1
    return {i: 1 + sum(sign * w < sign * v for w in values.values()) for i, v in values.items()}


def _f(value, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, fmt)


def table_row(label: str, steps, row: dict, psnr_rank: int | None, fd_rank: int | None) -> list[str]:
    """One table row: the figures of an ok run, or its reason in the latency cell of a failed one."""
    cells = [label, str(steps), "yes" if is_stochastic(row) else "no"]
    if row.get("status") != "ok":
        reason = " ".join(str(row.get("error") or row.get("status")).split()).replace("|", "/")
        return cells + [f"**{row.get('status', 'failed')}**: {reason}"] + ["-"] * 11
    iqr = row.get("latency_iqr_ms")
    return cells + [
        _f(row.get("nfe"), ".0f"), f"{row['latency_median_ms']:.0f} ({_f(iqr, '.0f')})",
        _f(row.get("psnr"), ".2f"), _f(row.get("ssim"), ".3f"), _f(row.get("fd_emoji"), ".2f"),
        f"{_f(row.get('kid_emoji'), '.2f', 1e3)} ± {_f(row.get('kid_emoji_std'), '.2f', 1e3)}",
        _f(row.get("precision_emoji"), ".2f"), _f(row.get("recall_emoji"), ".2f"),
        _f(row.get("dist_classifier_top5"), ".1%"),
        f"{_f(row.get('perceptual_emoji'), '.3f')} ± {_f(row.get('perceptual_emoji_std'), '.3f')}",
        "-" if psnr_rank is None else str(psnr_rank), "-" if fd_rank is None else str(fd_rank),
    ]


def main() -> None:
    import torch
    from _harness import add_publish_args, check_tree, print_table, publish, setup_line, setup_of

    from studio_core.errors import SpecError
    from studio_core.measure.engine import Engine
    from studio_core.measure.environment import resolve_device
    from studio_core.measure.reference import reference_spec
    from studio_core.spec import RunSpec, resolve
    from studio_core.store.store import RunStore
    from studio_core.study.labels import sampler_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=DEFAULT_PRESET,
                    help="the sweep preset whose model, samplers, steps (and flow_shift axis) make the grid "
                         "(default presets/sampler-shootout.yaml)")
    ap.add_argument("--model", help="run the preset on this model instead of its own (an embedded name or a folder)")
    ap.add_argument("--distribution", type=int, default=None,
                    help=f"images per distribution set (default by preset: {DEFAULT_N}, else 50; {QUICK_N} with "
                         "--quick)")
    ap.add_argument("--quick", action="store_true", help="development: the preset's first deterministic and first "
                                                         f"stochastic sampler only, N={QUICK_N}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = add_publish_args(ap).parse_args()
    check_tree(a.dirty)

    # 1. the grid, the baseline and the reference, from the preset (every cell resolved and checked before work)
    try:
        data, sweep = read_preset(a.preset, a.model)
        base = dict(data.get("base") or {})
        baseline, info = resolve(RunSpec.from_dict(base))
    except SpecError as exc:
        ap.error(f"--preset {a.preset}: {exc}")
    axes = dict(sweep.axes)
    if set(axes) - set(AXES) or not {"sampler", "steps"} <= set(axes):
        ap.error(f"--preset {a.preset}: a sampler shootout's grid is sampler and steps, optionally flow_shift; this "
                 f"one has {', '.join(axes)}")
    torch.set_num_threads(a.threads)
    n = a.distribution or (QUICK_N if a.quick else DEFAULT_N.get(sweep.name, 50))
    samplers = quick_samplers(axes["sampler"]) if a.quick else list(axes["sampler"])
    shifts = list(axes.get("flow_shift", [None]))
    cells = [(s, steps, shift) for steps in axes["steps"] for shift in shifts for s in samplers]
    reference = reference_spec(baseline, info, sweep.reference)
    model = base.get("model", "emoji-sd")
    device = resolve_device("auto")

    # 2. one Engine.run per cell on a fresh study: the baseline (the model's defaults) first, then the grid
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sampler-distribution-") as study:
        engine = Engine(RunStore(study))
        for sampler, steps, shift in [(None, None, None), *cells]:
            cell = {"sampler": sampler, "steps": steps, **({"flow_shift": shift} if shift is not None else {})}
            spec = {**base, "distribution": n, **(cell if sampler else {})}
            t0 = time.perf_counter()
            try:
                result = engine.run(spec, reference=sweep.reference)
                row = dict(result.row)
            except SpecError as exc:  # refused before any work: still a row, with the reason
                row = {"status": "failed", "error": f"refused: {exc}", **cell}
            row["cell_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"{cell_label(sampler, shift) if sampler else 'model default'}, {row.get('steps') or steps} "
                  f"steps: {row['status']} in {row['cell_s']:.0f} s", file=sys.stderr, flush=True)

    # 3. the table: ranks among the grid rows only (the baseline is the yardstick, not a contender)
    base_row, grid = rows[0], rows[1:]
    psnr_rank = ranks(grid, "psnr", higher_is_better=True)
    fd_rank = ranks(grid, "fd_emoji", higher_is_better=False)
    lines = [table_row(f"{sampler_text(base_row)}, baseline", base_row.get("steps") or baseline.steps, base_row,
                       None, None)]
    lines += [table_row(cell_label(s, shift), steps, r, psnr_rank.get(i), fd_rank.get(i))
              for i, ((s, steps, shift), r) in enumerate(zip(cells, grid))]
    n_images = len(baseline.images())
    ref_text = (f"{sampler_text({'sampler': reference.sampler, 'scheduler_class': info.scheduler_class})} at "
                f"{reference.steps} steps")
    preset = a.preset.resolve().relative_to(ROOT) if a.preset.resolve().is_relative_to(ROOT) else a.preset
    setup = setup_of(device, baseline.repeats, model=model, pipeline=info.pipeline_class, preset=str(preset),
                     prompt_set=base.get("prompt_set"), seeds=list(baseline.seeds), warmup=baseline.warmup,
                     repeats=baseline.repeats, distribution=n, samplers=samplers, steps=list(axes["steps"]),
                     flow_shifts=shifts if "flow_shift" in axes else None,
                     reference={"sampler": reference.sampler, "steps": reference.steps,
                                "guidance": reference.guidance}, quick=a.quick)
    shift_text = f" x shift {'/'.join(f'{float(s):g}' for s in shifts)}" if "flow_shift" in axes else ""
    seeds_text = f"seed{'s' * (len(baseline.seeds) > 1)} {', '.join(map(str, baseline.seeds))}"
    setup_text = setup_line(
        f"{model} ({info.pipeline_class}) {baseline.width}x{baseline.height}, {base.get('prompt_set') or 'prompts'} "
        f"({n_images} images, {seeds_text}) in one call, guidance {baseline.guidance:g}; {len(samplers)} samplers x "
        f"steps {'/'.join(map(str, axes['steps']))}{shift_text} from {preset} and the model's default "
        f"({sampler_text(base_row)} at {baseline.steps} steps); reference {ref_text}; distribution set of {n} "
        "training captions per row (seed = i)", setup,
        f"each row one Engine.run on a fresh study: {baseline.warmup} warm-up call{'s' * (baseline.warmup != 1)}, "
        f"{baseline.repeats} timed repeats, then the distribution set (generated and scored outside the timed "
        "repeats); rows one after another, not rotated.")
    print(f"# samplers on the distribution metrics: {model}\n{setup_text}\n")
    header = ["sampler", "steps", "stochastic", "denoiser calls", "median latency (ms) (IQR)",
              "PSNR vs ref (dB, pooled)", "SSIM vs ref", "FD-emoji", "KID-emoji ×10³ ± std", "precision", "recall",
              "top-5 (dist. set)", "perceptual distance ± std", "PSNR rank", "FD rank"]
    table = print_table(header, "lrlrrrrrrrrrrrr", lines)

    # 4. notes under the table, then the results file
    ok = [r for r in rows if r.get("status") == "ok" and r.get("dist_method")]
    stochastic = [i for i, r in enumerate(grid) if is_stochastic(r) and i in psnr_rank and i in fd_rank]
    notes = [
        "FD-emoji, KID-emoji and precision/recall are on the studio's own emoji feature network, not Inception: "
        "they are not FID or KID, and compare rows of this table only. Method: "
        f"{ok[0]['dist_method'] if ok else 'none (no run scored a distribution set)'}.",
        f"n = {n} generated images per row (training captions spread evenly over the split, seed = i, the run's "
        "settings); FD falls as n grows, so compare rows only at the same n. PSNR is pooled over the "
        f"{n_images} images against the same-seed reference ({ref_text}), SSIM their mean; the perceptual "
        f"distance (to the same-seed reference, on the feature network) is mean ± std over the {n_images} images; "
        "top-5 is the classifier's over the distribution set.",
        "Denoiser calls: the UNet's or transformer's forward calls in one timed pass over all images; a "
        "second-order sampler (Heun, DPM2) makes two per step, and so does a model with true classifier-free "
        "guidance (one per branch), so compare such rows at equal calls, not equal steps.",
        "Stochastic = the sampler injects fresh noise at every step (ancestral, SDE and DDPM samplers; "
        "`SamplerDef.stochastic`): with the same seed it leaves the reference's path by design, so its PSNR "
        "says \"different image\", not \"worse image\"; the distribution metrics do not reward staying on that "
        "path.",
        f"Ranks: 1 = best of the {len(psnr_rank)} ranked rows (the baseline is not ranked; a failed row has "
        "none): highest PSNR, lowest FD-emoji."
        + (f" Stochastic rows: PSNR ranks {sorted(psnr_rank[i] for i in stochastic)} (median "
           f"{statistics.median(psnr_rank[i] for i in stochastic):g}), FD ranks "
           f"{sorted(fd_rank[i] for i in stochastic)} (median {statistics.median(fd_rank[i] for i in stochastic):g})."
           if stochastic else ""),
    ]
    print("\n" + "\n".join(notes))
    raw = {f"{line[0]}, {line[1]} steps": {k: r.get(k) for k in (*RAW_KEYS, "cell_s")}
           for line, r in zip(lines, rows)}
    publish(results_name(a.preset, sweep.name), setup, raw, table, setup_text=setup_text, notes=notes)


if __name__ == "__main__":
    main()
