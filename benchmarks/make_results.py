"""Generate ``benchmarks/RESULTS.md`` from the raw results in ``benchmarks/results/``, and nothing else.

Each section belongs to one script (``SECTIONS``): its prose, and the table of the newest results file
written by that script through ``_harness.publish``, headed by the file's setup line, commit, date and
the command that regenerates it. A file measured on uncommitted code is marked so; a script with no file
yet says "not measured yet" with the command to run, so no hand-made figure outlives its code.

    .venv/bin/python benchmarks/make_results.py            # rewrite benchmarks/RESULTS.md
    .venv/bin/python benchmarks/make_results.py --check    # exit 1 when RESULTS.md is not what the files give
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from _harness import RESULTS_DIR, markdown_table

__all__ = ["SECTIONS", "Section", "latest_results", "render_results", "render_section"]

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass(frozen=True)
class Section:
    """One table of RESULTS.md: the results name it reads, its title, the command that measures it, and
    the prose before (what is measured and how) and after the table (how to read it; no measured figures)."""

    name: str
    title: str
    command: str
    intro: str
    reading: str = ""


SECTIONS = [
    Section("embedded_cpu_speed", "CPU speed of the embedded models (`benchmarks/embedded_cpu_speed.py`)",
            ".venv/bin/python benchmarks/embedded_cpu_speed.py",
            "Issue 2's protocol, for each embedded model: 4 images x 20 steps of its own sampler with its default "
            "guidance, at its default size, in one call; 2 torch threads, untimed warm-up calls, then timed "
            "repeats with the models in rotated order. emoji-sd's UNet runs one batch of 8 per step; emoji-flux's "
            "transformer two calls of batch 4 (true CFG). Target: median at most 2 s for each (issues 2 and 20)."),
    Section("overhead", "Engine overhead (`benchmarks/overhead.py`)", ".venv/bin/python benchmarks/overhead.py",
            "The same configuration through `Engine.run` and through a bare diffusers call on the same loaded "
            "pipeline, prompts and seeds, alternating in rotated rounds. Target: the engine at most 3% above bare.",
            "Row (a) compares single calls pair by pair (median of the paired ratios, robust to a noisy "
            "machine); row (b) whole `Engine.run` calls against bare medians. Bookkeeping (reference lookup, "
            "scoring, store writes) happens outside the timed region and is not part of any reported latency."),
    Section("caching", "Feature caching and token merging (`benchmarks/caching.py`)",
            ".venv/bin/python benchmarks/caching.py --rounds 5",
            "DeepCache, cross-attention caching and token merging side by side on the embedded model, each knob "
            "applied just before its call and undone just after. PSNR/SSIM are mean ± std over the images, "
            "against the engine's reference (DPM++ 2M, 200 steps, fp32, no knobs) and against the uncached "
            "output at the same steps.",
            "Reading it:\n\n"
            "- **DeepCache**: the speed-up should grow with N and so should the distance to the uncached "
            "output, while the distance to the converged reference moves little at small N. Published: 2.3x at "
            "N=3 (SD 1.5, 50 PLMS steps, GPU; diffusers docs: 2.33x at interval 3 on SD 2.1 / A5000). The "
            "embedded UNet is shallow (3 levels, one layer per block, 8x8 latent), so the shallow path it still "
            "runs on cached steps is a larger share of its layers (the knob's report says how much), and text "
            "encoding plus VAE decode are a larger share of the call than on SD 1.5.\n"
            "- **Cross-attention caching** (T-GATE): once every cross-attention returns the same cached output "
            "for both halves, the conditional and unconditional predictions are equal and guidance has nothing "
            "left to do, so the \"keep CFG\" row gives the same images and shows what the caching alone saves. "
            "T-GATE's own setting (gate 10 of 25 steps, SD 1.5) reports 7.03 s -> 4.31 s with FID 23.93 -> 20.79 "
            "on a GTX 1080 Ti.\n"
            "- **ToMe** at 64 tokens per self-attention: the matching and gathering can cost more than the "
            "attention they save; a ratio below 1.00x is reported, not hidden. ToMe's own table (SD 1.5, 512 px, "
            "4096 tokens at the top level, RTX 4090) gives 1.87x at 50%."),
    Section("caching_sd15", "Caching on SD 1.5's architecture, GPU (`benchmarks/caching.py --sd15`)",
            ".venv/bin/python benchmarks/caching.py --sd15 --device cuda --dtype fp16",
            "SD 1.5's published UNet, VAE and text-encoder configs with random weights "
            "(`benchmarks/architectures.py`, nothing downloaded) at 512x512: speed on the real shapes; quality "
            "columns compare against the uncached output only, since random weights have no reference worth "
            "matching."),
    Section("transformer_caching", "Transformer caching on emoji-flux (`benchmarks/transformer_caching.py`)",
            ".venv/bin/python benchmarks/transformer_caching.py",
            "The cells of `presets/transformer-caching.yaml` side by side on emoji-flux (a FluxPipeline: 3 double- "
            "and 4 single-stream blocks of width 192, 64 image tokens) at 28 steps with its own guidance, true "
            "classifier-free guidance, so two transformer calls per step: the uncached baseline, First Block Cache "
            "at two thresholds, FasterCache, Pyramid Attention Broadcast, TaylorSeer, and MagCache with the "
            "magnitude ratios shipped in the model folder. Each cell's knobs are applied through the engine just "
            "before its pass and undone just after. PSNR/SSIM are mean ± std over the images, against the "
            "uncached output and against the engine's reference (the model's own flow-matching Euler at 200 "
            "steps, fp32); fidelity is the emoji retrieval top-1 / top-5; \"cached calls\" counts the "
            "transformer calls that ran fewer layers than a full one (the knob's own count), of all calls. Under "
            "the table, each method's figure beside its published one, generated from the same results file.",
            "Reading it: a cached call skips only the transformer's blocks (First Block Cache and MagCache: all "
            "but the first block, or all of them) or its attention (PAB, FasterCache, TaylorSeer), so the "
            "speed-up is bounded by the share of a call those take; text encoding and the VAE decode run "
            "uncached. The published figures are FLUX.1-dev at 1024 px (4096 image tokens, 19 double- and 38 "
            "single-stream blocks of width 3072) on datacenter GPUs, where the blocks are nearly the whole call; "
            "at 64 tokens on a CPU, per-call overhead is a larger share, so expect smaller ratios for the same "
            "fraction of cached calls. The anchors run their own settings (First Block Cache at 0.08, as the "
            "first FBCache row here; TaylorSeer its own interval and order; MagCache at threshold 0.24 with 5 "
            "skips in a row), and FLUX.1-dev is "
            "guidance-distilled (one call per step), where emoji-flux's cond and uncond calls each keep their "
            "own cache. Read a row's PSNR against the uncached output as the cost of the cache alone, and against "
            "the reference beside the uncached row's own distance to it."),
    Section("quantization_cpu", "Precision and quantization on CPU (`benchmarks/quantization_cpu.py`)",
            ".venv/bin/python benchmarks/quantization_cpu.py",
            "Every configuration has its own pipeline, loaded and (for the quantization knob) quantized once "
            "before timing. Weights in MiB, quantized tensors counted by their inner data and scales. "
            "bitsandbytes rows need the package from `requirements-gpu.txt` on the path; schemes that cannot run "
            "here are listed under the table with the knob's reason.",
            "Reading it: without native half-precision units and without `torch.compile`, fp16/bf16 and dynamic "
            "int8 are expected to be slower than fp32 on a CPU (the diffusers-torchao anchor: Flux int8 dynamic "
            "without compile 130.5 s vs 3.41 s compiled on an H100). Weight memory falls less than the scheme's "
            "bit width suggests because most of this small UNet's weights are convolutions, which these schemes "
            "leave in fp32. A GPU table (SD 1.5 architecture, 512x512, with compile) has no script yet."),
    Section("embedded_fidelity", "Prompt fidelity by sampler and guidance (`benchmarks/embedded_fidelity.py`)",
            ".venv/bin/python benchmarks/embedded_fidelity.py --guidance 3 5",
            "The model card's caption sample (200 training captions drawn with seed 1234, and the held-out "
            "captions), one image per caption with seed = its index: is the nearest training image the "
            "prompt's own emoji (`studio_core/measure/fidelity.py`)?"),
    Section("distribution_validation",
            "Validation of the emoji feature network's metrics (`benchmarks/distribution_validation.py`)",
            ".venv/bin/python benchmarks/distribution_validation.py",
            "Do FD-emoji, KID-emoji, precision/recall and the perceptual distance behave as such metrics must? At "
            "32 px with the shipped feature network, against the training-split renders: two random halves of the "
            "renders against each other (5 seeds); one half against the other corrupted by Gaussian noise, blur, "
            "JPEG and hue rotation at four rising levels; the embedded model at 50/20/10/4 DDIM steps on 500 "
            "distribution captions, with the network's classifier and the thumbnail index scoring the same images; "
            "1,000 generated images subsampled to n = 50...1000 (5 seeds); and the cost of "
            "`emoji_metrics.distribution_scores` with a cold and a warm real-feature cache. The tables follow in "
            "that order.",
            "Reading it: real against real should give KID near 0 and precision and recall near 1; FD is above 0 "
            "even there, by a bias that shrinks with the sample size, so FD-emoji compares runs with the same "
            "distribution-set size only. Along each corruption FD, KID and the perceptual distance must rise (the "
            "monotone table names any that did not); fewer sampling steps should raise FD and KID and lower the "
            "fidelity. Kappa says how far the classifier and the thumbnail index agree beyond chance on which "
            "images hit their prompt. All are emoji-domain figures, not comparable with published FID, KID or "
            "LPIPS."),
    Section("sampler_distribution",
            "The sampler shootout on distribution metrics (`benchmarks/sampler_distribution.py`)",
            ".venv/bin/python benchmarks/sampler_distribution.py",
            "Every sampler of `presets/sampler-shootout.yaml` at 10 and 20 steps, and the model's default (DDIM at "
            "50 steps) as the baseline, each one `Engine.run` on a fresh study (emoji-8, seed 0, 1 warm-up call, 3 "
            "timed repeats): latency, PSNR and SSIM against the same-seed reference (DPM++ 2M, 200 steps), and on a "
            "distribution set of N training captions generated after the timed repeats with the run's settings, "
            "FD-emoji, KID-emoji, precision/recall and the classifier's top-5, with the perceptual distance to the "
            "reference. The grid rows are ranked by PSNR and by FD-emoji side by side.",
            "Reading it: PSNR asks whether a sampler lands on the reference's image for the same seed; FD-emoji "
            "asks whether its images look like the training set. A stochastic sampler (ancestral, SDE, DDPM) "
            "leaves the reference's path by design, so it should rank lower on PSNR than on FD when its images "
            "are as good as a deterministic sampler's; where both ranks agree, it is genuinely worse at that step "
            "budget. FD-emoji falls as N grows, so compare rows of one table (same N) only; these are emoji-domain "
            "figures on the studio's feature network, not comparable with published FID or KID."),
    Section("sampler_distribution_flux",
            "The sampler shootout on emoji-flux (`benchmarks/sampler_distribution.py --preset "
            "presets/flux-sampler-shootout.yaml`)",
            ".venv/bin/python benchmarks/sampler_distribution.py --preset presets/flux-sampler-shootout.yaml",
            "The same shootout on the flow-matching model: the flow samplers of `presets/flux-sampler-shootout.yaml` "
            "(Euler, Heun, DPM++ 2M, UniPC and DPM++ 2S, the last three on flow sigmas) at 8, 14 and 28 steps on "
            "emoji-flux (a FluxPipeline at 64 px with true classifier-free guidance: two transformer calls per step), "
            "and the model's default (its flow-matching Euler at 28 steps) as the baseline, each one `Engine.run` on "
            "a fresh study (emoji-8, seed 0, 1 warm-up call, 3 timed repeats). The reference is the model's own "
            "Euler at 200 steps (a flow model cannot take DPM++ 2M's noise schedule); the distribution set is N "
            "training captions as on emoji-sd, N set in the script so the table takes about 10 minutes on 2 cores. "
            "A `flow_shift` axis in the preset adds a row per sampler, steps and shift.",
            "Reading it: Euler (flow) at 28 steps is the model's default run, so its images are the baseline's and "
            "its quality figures must match that row (only the latency may differ, by noise). Heun makes two "
            "transformer calls per step and guidance branch, so set it beside the others at equal denoiser calls "
            "(Heun at 14 steps against the rest at 28), not equal steps. Every sampler here is deterministic, so a "
            "row whose PSNR and FD ranks disagree lands near the reference's image but off the training "
            "distribution, or the other way round. FD-emoji compares rows of this table only (one N), and it is not "
            "comparable with emoji-sd's table: another model at another size and N."),
    Section("distillation", "The LCM student against its teacher (`benchmarks/distillation.py`)",
            ".venv/bin/python benchmarks/distillation.py",
            "emoji-sd-lcm is the studio's own latent-consistency student of emoji-sd (`python -m studio_core distill`, "
            "its card in `studio_core/embedded/emoji-sd-lcm/README.md`). The first table times, in rotated rounds, "
            "the teacher with its own sampler at 50 and at 4 guided steps and the student with LCMScheduler at 1, 2, "
            "4 and 8 steps, 4 images in one call. The second runs every cell of `presets/distillation-study.yaml` "
            "(the teacher at 50 / 20 / 10 / 4 steps with DPM++ 2M, UniPC and DDIM; the student at 1 / 2 / 4 / 8 "
            "steps with LCM) as one `Engine.run` on a fresh study, with a distribution set of N training captions "
            "scored on the studio's emoji feature network.",
            "Reading it: the student's target is the teacher's distribution, not its sample paths, so compare it on "
            "FD-emoji, KID and the classifier's top-5, not PSNR against the teacher's reference. The teacher's guidance "
            "costs a second UNet pass per step (batched into one call); the student's is an input, so its denoiser "
            "calls equal its steps. The untrained-student rows are the control: the same LCMScheduler on the "
            "teacher's UNet before any distillation step (unguided, since its guidance projection is still zero). "
            "Where the control scores as well as the student or better, the few-step quality comes from the "
            "consistency sampler, not from the distillation. FD-emoji compares rows of this table only (one N), and "
            "is not FID."),
    Section("store_scale", "The store and the page at 1k, 10k and 100k runs (`benchmarks/store_scale.py`)",
            ".venv/bin/python benchmarks/store_scale.py",
            "Issue 22's question: does the page stay fast as a study grows? Each study clones a few real runs of the "
            "embedded model (a small sweep of the sampler shootout, or `--source`) with jittered latencies and "
            "scores, over sweeps of 500 runs, several model names and prompt sets, and 8% failed, interrupted or "
            "cancelled runs. The page's own handlers (`app.handlers.Studio`) are timed in process: the Frontier "
            "tab's first draw (a new page: every successful run read and drawn) and the JSON gradio sends of it; "
            "its refresh after 100 new runs and after one run finished (what the timer redraws during a sweep: "
            "only the runs new or finished since are read, `app/kept_runs.py`); a redraw with nothing new; the "
            "filter choices after a change (distinct values off the `m008` indexes, kept until the study "
            "changes) and the timer's check when nothing changed; the Runs table's first page (100 runs); and the "
            "CSV of every run, streamed. The second table sets these beside the figures issue 22 measured before "
            "(the full reads each view made, on the same 2-core machine); the third times the refresh of the "
            "largest study after 10, 100 and 1,000 new runs. Goals (issue 22): at 100k runs the frontier refresh "
            "at most 300 ms and the Runs table's first page at most 200 ms, growing no worse than linearly in the "
            "new runs; the notes under the tables say whether they were met.",
            "Reading it: the first draw reads every successful run once and names each run's configuration, so it "
            "grows with the study; a page keeps what it read, and later refreshes read only the new runs. The "
            "figure itself is classified and drawn again over every point at each refresh (one sort per setup, "
            "vectorised), which is most of a refresh at 100k runs. Past 1,000 points the runs off the front that "
            "the limit leaves out are drawn small on WebGL with their run id and standing on hover (the title "
            "says how many), so the JSON stays a few MB. The CSV holds every column of every run: its time and "
            "size grow with the study, and it is written in chunks without holding the study in memory or the "
            "store's lock."),
    Section("dispatch_scale", "Sweeps on Ray at simulated scale (`benchmarks/dispatch_scale.py`)",
            ".venv/bin/python benchmarks/dispatch_scale.py",
            "Issue 22's scale test without a cluster: a Ray cluster of this machine with as many CPU slots as "
            "workers (`ray start --head --num-cpus W`), the studio's own dispatch (`RayCluster`, `run_cells`, the "
            "driver writing a real SQLite study) and the workers' stand-in engine, which sleeps a fixed time per "
            "cell and returns a made-up row, so no model runs and the figures are the dispatch's own. The clean "
            "run has no faults; the faults run kills a tenth of the workers (SIGKILL, spread over the run) and the "
            "driver once (SIGKILL at 40% done), then starts the driver again, which resumes. Each ends with the "
            "study read from outside: every cell finished exactly once, none lost, none twice.",
            "Reading it: the overhead per cell is what the steady throughput falls short of W workers each "
            "finishing a cell per stand-in time. Here W processes share 2 cores, so most of it is Ray's "
            "scheduling and its workers' wake-ups competing for the CPU with each other and the driver; on a "
            "cluster each worker has its own device and the overhead is a share of seconds-long cells. The "
            "interrupted rows are the record of the kills: a killed worker's cell is handed out again once, and "
            "a killed driver's running rows are marked interrupted when the next driver resumes the sweep."),
    Section("ray_sweep", "The sampler shootout on Ray (`benchmarks/ray_sweep.py`)",
            ".venv/bin/python benchmarks/ray_sweep.py",
            "The preset sweep through the studio's command line on a local Ray cluster of 2 one-thread CPU "
            "workers, beside the same sweep in one process, then with a Ray worker killed mid-cell and with the "
            "driver killed and started again. The last column compares each run's PSNR against the reference "
            "with the same cell's in the in-process sweep.",
            "Reading it: on 2 cores, 2 workers of 1 thread do about what one process of 2 threads does, so the "
            "wall times are close; the figure worth having is that every cell finished once and that the images "
            "agree. The workers' runs say `timed on a CPU shared by 2 workers` (their own setup on the fronts), "
            "since two timings on one CPU are not what either would be alone."),
    Section("devices_gpu", "`sweep --devices` on a GPU (`benchmarks/devices_gpu.py`)",
            ".venv/bin/python benchmarks/devices_gpu.py --cells 8",
            "The sampler shootout's first cells in one process and on one worker pinned to `cuda:0` (each on a "
            "fresh study), for the worker's overhead per cell and whether the images match. Needs a CUDA device."),
    Section("load_test", "Load: many clients against one studio (`benchmarks/load_test.py`)",
            ".venv/bin/python benchmarks/load_test.py --clients 8 --requests 240 --steps 8",
            "`app.py` with its defaults in a subprocess; the clients are threads of a second process, each with "
            "its own `gradio_client.Client`. Afterwards the store is checked from outside the server: every "
            "accepted generate left exactly one `ok` run, none duplicated or lost, `PRAGMA integrity_check` ok.",
            "Reading it: reads should stay fast while the device is busy (they never queue behind a "
            "generation); a generate's latency is mostly waiting its turn (one run on the device at a time keeps "
            "timings honest), and one past the waiting limit is refused at once instead of hanging."),
]


def latest_results(results_dir: Path = RESULTS_DIR) -> dict[str, tuple[Path, dict]]:
    """The newest results file (by its recorded UTC time) of every name in ``results_dir``."""
    newest: dict[str, tuple[Path, dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not a readable results file ({exc})") from None
        if not isinstance(data, dict) or "name" not in data or "utc" not in data:
            raise SystemExit(f"{path}: not a results file of _harness.publish (no 'name' or 'utc')")
        if data["name"] not in newest or data["utc"] > newest[data["name"]][1]["utc"]:
            newest[data["name"]] = (path, data)
    return newest


def render_section(section: Section, found: tuple[Path, dict] | None) -> str:
    """One section: title, prose, then the file's provenance, setup line, table(s) and notes, then reading."""
    parts = [f"## {section.title}", section.intro]
    if found is None:
        parts.append(f"Not measured yet: run `{section.command}` on a clean commit, then "
                     "`.venv/bin/python benchmarks/make_results.py`.")
    else:
        path, data = found
        commit = data["commit"][:12]
        provenance = (f"`{data['command']}` — {data['utc'][:10]}, commit `{commit}`, raw results "
                      f"[`results/{path.name}`](results/{path.name}).")
        if data.get("dirty"):
            provenance += (f" **Measured on uncommitted code** (`{commit}` with {len(data.get('changed', []))} "
                           "changed paths): not reproducible from the commit alone.")
        parts.append(provenance)
        if data.get("setup_text"):
            parts.append(data["setup_text"])
        tables = data.get("tables") or [data["table"]]
        parts += [markdown_table(t["header"], t.get("align") or "l" * len(t["header"]), t["rows"]) for t in tables]
        if data.get("notes"):
            parts.append("\n".join(data["notes"]))
    if section.reading:
        parts.append(section.reading)
    return "\n\n".join(parts)


def render_results(results_dir: Path = RESULTS_DIR, sections: list[Section] = SECTIONS) -> str:
    """The whole RESULTS.md from the files in ``results_dir``."""
    found = latest_results(results_dir)
    unknown = sorted(set(found) - {s.name for s in sections})
    head = ("# Benchmark results\n\n"
            "*Generated by `.venv/bin/python benchmarks/make_results.py` from the raw results in `results/`; do "
            "not edit by hand (the prose is in that script).*\n\n"
            "Every table comes from the newest results file of one script, which keeps the command, commit, setup "
            "and every raw repeat. Ratios are measured side by side in one process (configurations rotated round "
            "by round), never across runs. The timing scripts share one harness (`_harness.py`) that times "
            "through the engine's timing core (`studio_core/measure/timing.py`), and refuse to run on uncommitted "
            "code unless given `--dirty`. Published figures to stand beside them are in `../shared/ANCHORS.md`; "
            "where setups differ it is said.")
    body = [render_section(s, found.get(s.name)) for s in sections]
    if unknown:
        body.append("## Results without a section\n\n" + "\n".join(
            f"- `{found[n][0].name}` ({n}): add a `Section` for it in `make_results.py`." for n in unknown))
    return "\n\n".join([head, *body]) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of results files")
    p.add_argument("--out", type=Path, default=RESULTS_MD)
    p.add_argument("--check", action="store_true", help="only compare: exit 1 when --out differs")
    a = p.parse_args()
    text = render_results(a.results)
    if a.check:
        same = a.out.is_file() and a.out.read_text(encoding="utf-8") == text
        print(f"{a.out}: {'up to date' if same else 'differs from what the results files give; rerun without --check'}")
        return 0 if same else 1
    a.out.write_text(text, encoding="utf-8")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
