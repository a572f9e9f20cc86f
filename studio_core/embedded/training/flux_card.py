"""The model card (README.md) of an emoji-flux folder, generated entirely from its files.

Every figure comes from ``training_report.json`` (written by ``training/flux.py``), ``evaluation.json``
(``python -m studio_core.embedded.training evaluate --model-dir DIR``) and ``mag_ratios.json`` (MagCache's
calibrated ratios, when shipped). ``card --model-dir DIR`` rewrites it from those files alone; an evaluation of
other weights (its digest differs) is left out, as for emoji-sd.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio_core.embedded.training.card_parts import chain as _chain
from studio_core.embedded.training.card_parts import kind_rows as _kind_rows
from studio_core.embedded.training.card_parts import measured_head, verdict
from studio_core.embedded.training.card_parts import pct as _pct
from studio_core.prompts import GALLERY_PROMPTS

__all__ = ["FLUX_MODEL_DIR_TEXT", "render_flux_card"]

FLUX_MODEL_DIR_TEXT = "studio_core/embedded/emoji-flux"


def _stage_rows(report: dict) -> str:
    rows = []
    for c in _chain(report) + [report]:
        r, f = c["recipe"], c.get("fidelity")
        fid = (f"{_pct(f['train']['top1'])} / {_pct(f['train']['top5'])} (guidance {f['guidance']})" if f else
               "not measured")
        rows.append(f"| `{r['name']}`{' (these weights)' if c is report else ''} | {c['steps_done']} of {r['steps']} "
                    f"(stopped by {c['stopped_by']}) | {r['batch']} | {r['lr']} | {c['timings']['total_s'] / 60:.1f} min on "
                    f"{c['device']} | {c['final_loss']:.4f} | {fid} |")
    return "\n".join(rows)


def _curve(report: dict) -> str:
    """The loss per 100 steps of every stage, as one line of numbers."""
    parts = []
    for c in _chain(report) + [report]:
        pts = c.get("loss_curve_per_100_steps") or []
        shown = pts[:: max(1, len(pts) // 12)]
        parts.append(f"`{c['recipe']['name']}`: " + ", ".join(f"{x:.3f}" for x in shown))
    return "; ".join(parts)


def _rebuilt(report: dict) -> str:
    """A note for each stage whose report was rebuilt from its training log."""
    return "".join(f"\n\nStage `{c['recipe']['name']}`: {c['rebuilt_from_log']}." for c in _chain(report) + [report]
                   if c.get("rebuilt_from_log"))


def _mag_text(model_dir: Path) -> str:
    path = model_dir / "mag_ratios.json"
    if not path.is_file():
        return ("MagCache's ratios are not shipped with these weights: the `transformer_cache` knob calibrates them "
                "before a run.")
    data = json.loads(path.read_text(encoding="utf-8"))
    ratios = data.get("ratios") or []
    shown = ", ".join(f"{x:.3f}" for x in ratios[:8]) + (" ..." if len(ratios) > 8 else "")
    setup = (f"{data.get('steps')} steps of {data.get('scheduler')} at {data.get('height')}x{data.get('width')}, "
             f"guidance {data.get('guidance_scale')}, {data.get('dtype')}, {len(data.get('prompts') or [])} prompts x "
             f"{len(data.get('seeds') or [])} seeds, made by `{data.get('made_by')}`")
    return (f"MagCache's magnitude ratios for this model ship in `mag_ratios.json` ({len(ratios)} values: {shown}; "
            f"{setup}), so the `transformer_cache` knob's `mag` method needs no calibration call. Method: "
            f"{data.get('method', 'not recorded')}.")


def _measured(report: dict, ev: dict | None) -> str:
    command = f"`python -m studio_core.embedded.training evaluate --model-dir {FLUX_MODEL_DIR_TEXT}`"
    lines = measured_head(command, report, ev)
    if ev is None:
        return lines[0] + "\n"
    t, s, env = ev["targets"], ev["speed"], ev["setup"]
    for g in ev["fidelity"]:
        lines.append(f"- Guidance {g['guidance']}, same sample ({g['steps']} {g['sampler']} steps): training "
                     f"top-1 {_pct(g['train']['top1'])} / top-5 {_pct(g['train']['top5'])}, held-out "
                     f"{_pct(g['held_out']['top1'])} / {_pct(g['held_out']['top5'])}.")
    lines.append(f"- Speed: {len(s['prompts'])} images x {s['steps']} {s['sampler']} steps with guidance "
                 f"{s['guidance']} (true CFG: two transformer calls of batch {len(s['prompts'])} per step), "
                 f"{env['threads']} threads, {s['warmup']} warm-up calls, {s['repeats']} repeats: median "
                 f"{s['median_s']:.3f} s (min {s['min_s']:.3f}, max {s['max_s']:.3f}; target at most "
                 f"{t['speed_median_s']:g} s: {verdict(s['median_s'], t['speed_median_s'], most=True)}), "
                 f"{s['per_image_s']:.3f} s per image"
                 + (f"; 1-minute load average {env['load_average_1m']:.2f} when timing began"
                    if "load_average_1m" in env else "") + ".")
    return "\n".join(lines) + "\n"


def render_flux_card(model_dir: Path, report: dict, evaluation: dict | None) -> str:
    """The card's text: what it is, components, data, objective, stages, fidelity, caching facts, measurements."""
    r, d, p = report["recipe"], report["data"], report["parameters"]
    f = report.get("fidelity")
    vae = report["vae"]
    size = r["image_size"]
    latent = size // 4
    guidance = f["guidance"] if f else 3.5
    total_min = sum(c["timings"]["total_s"] for c in _chain(report) + [report]) / 60
    if f:
        fid = f"""| captions | n | top-1 | top-5 |
|---|---|---|---|
| training (fixed random sample) | {f['train']['n']} | {_pct(f['train']['top1'])} | {_pct(f['train']['top5'])} |
| held out (never trained on) | {f['held_out']['n']} | {_pct(f['held_out']['top1'])} | {_pct(f['held_out']['top5'])} |

Setup: {f['steps']} steps of {f['sampler']} (the model's dynamic shift), guidance {f['guidance']} (true CFG), one image
per caption, seed = its index. By kind:

| kind | n | top-1 | top-5 |
|---|---|---|---|
{_kind_rows(f['train'].get('by_kind', {})) or '| (not measured) | | | |'}

The guidance was chosen on half of the training sample at {max(2, r['eval_steps'] // 2)} steps:

| guidance | top-1 | top-5 | n | steps |
|---|---|---|---|---|
""" + "\n".join(f"| {g} | {_pct(v['top1'])} | {_pct(v['top5'])} | {v['n']} | {v['steps']} |"
                for g, v in f["guidance_sweep"].items())
    else:
        fid = "Not measured: training ran with `--no-eval`."
    gallery = (f"![gallery](gallery.png)\n\nGallery (seed 0, {r['eval_steps']} steps, guidance {guidance}), row by row: "
               + ", ".join(f"`{q}`" for q in GALLERY_PROMPTS) + ".") if (model_dir / "gallery.png").exists() else ""
    stages = _chain(report) + [report]
    reproduce = " then ".join(
        f"`python -m studio_core.embedded.training flux --recipe {c['recipe']['name']}"
        + (" --init PREVIOUS" if i else "") + f" --out {'PREVIOUS' if i < len(stages) - 1 else FLUX_MODEL_DIR_TEXT}`"
        for i, c in enumerate(stages))
    return f"""---
license: other
library_name: diffusers
pipeline_tag: text-to-image
---
# emoji-flux: the studio's embedded flow-matching transformer

A complete `FluxPipeline` (FluxTransformer2DModel with double- and single-stream blocks + CLIPTextModel and
T5EncoderModel with their tokenizers + AutoencoderKL + FlowMatchEulerDiscreteScheduler) trained by this project with
a rectified-flow objective on {d['train']} Noto Color Emoji glyphs at {size}x{size} px, so that the studio's
transformer knobs (First Block Cache, FasterCache, PAB, TaylorSeer, MagCache, flow samplers and shift) act on a
trained model, on a 2-core CPU.

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{FLUX_MODEL_DIR_TEXT}", local_files_only=True)
image = pipe("grinning face", true_cfg_scale={guidance}, negative_prompt="", num_inference_steps={r['eval_steps']},
             height={size}, width={size}, max_sequence_length={r['t5_tokens']}).images[0]
```

Guidance is **true classifier-free guidance** (`true_cfg_scale` with an empty negative prompt): the transformer
has no guidance embedding (FLUX.1-dev's is distilled from a guided teacher, which this model does not have), so
FluxPipeline's `guidance_scale` alone would do nothing. The studio passes it this way for every Flux without a
guidance embedding. Documented defaults (`studio_defaults.json`): guidance {guidance}, {r['eval_steps']} steps,
{size}x{size}.

{gallery}

## Shape
{size} px images through emoji-sd's VAE (4x downsampling, 4 channels) give {latent}x{latent} latents; FluxPipeline
packs them 2x2 into **{report['image_tokens']} image tokens** of 16 values, which the transformer attends to
jointly with {r['t5_tokens']} T5 text tokens. 64 px with a 4x VAE rather than 32 px: the issue asks for at least
64 image tokens so token- and block-level methods have work to skip, and emoji-sd's VAE (trained at 32 px,
convolutional) reconstructs 64 px renders within 1 dB PSNR of its 32 px figure, so no new VAE is needed.

## Components
| component | parameters | shape |
|---|---|---|
| transformer (`FluxTransformer2DModel`) | {p['transformer']:,} | {r['double_blocks']} double-stream + {r['single_blocks']} single-stream blocks, width {r['heads'] * r['head_dim']} ({r['heads']} heads of {r['head_dim']}), RoPE axes {list(r['rope_axes'])}, no guidance embedding |
| text encoder (`CLIPTextModel`, pooled) | {p['text_encoder']:,} | {r['clip_layers']} layer(s), width {r['clip_hidden']}, {r['max_tokens']} tokens; BPE vocabulary of {r['clip_vocab']} merges learned from the captions |
| text encoder 2 (`T5EncoderModel`, sequence) | {p['text_encoder_2']:,} | {r['t5_layers']} layers, width {r['t5_hidden']}, gated-GELU feed-forward {r['t5_ff']}; Unigram vocabulary of the captions' words and characters, {r['t5_tokens']} tokens |
| VAE (`AutoencoderKL`) | {p['vae']:,} | emoji-sd's, unchanged, with Flux's latent normalisation measured at {size} px: shift {vae['shift_factor']}, scale {vae['scaling_factor']} |

## Data
The emoji data of emoji-sd (`studio_core/embedded/training/data.py`), rendered at {size} px: {d['emoji']} emoji,
{d['train']} for training and {d['held_out']} held out (single-skin-tone variants; their base emoji and other tones
are in training). Dropped: {d['dropped']}.

## Objective and recipe
Rectified flow: x_t = (1 - t) x_0 + t eps, the transformer predicts eps - x_0 (the convention of FLUX and of
diffusers' `FlowMatchEulerDiscreteScheduler`), plain MSE. t is drawn **logit-normal({r['logit_mean']}, {r['logit_std']})**,
the sampling Esser et al. 2024 (SD3, section 5.1) found best among those compared: it trains the middle of the path,
where the prediction is hardest, more than its ends. {r['cfg_dropout']:.0%} of captions are dropped (both encoders
see "") for classifier-free guidance. AdamW (transformer lr {r['lr']}, text encoders lr {r['text_lr']}, weight decay
0.01), {r['warmup']} warm-up steps then cosine to 5% over the steps or the {r['budget_minutes']:g}-minute budget,
whichever ends first; forward passes under {r['amp'] or 'fp32'} autocast with fp32 master weights; EMA
{r['ema_decay']} (the EMA weights ship). Sampling uses FLUX.1-dev's schedule: dynamic shift from the token count
(exp(mu) = 1.6 at 64 tokens).

| stage | steps done | batch | lr | time | final loss | training captions top-1 / top-5 |
|---|---|---|---|---|---|---|
{_stage_rows(report)}

{total_min:.1f} min in all. Loss per 100 steps (sampled): {_curve(report)}.{_rebuilt(report)}

Reproduce: {reproduce}. A `gpu` recipe (batch 256, 40,000 steps or 20 minutes) is defined for a lent accelerator;
{'these weights come from it' if report['device'].startswith('cuda') else 'it has not been run for these weights (no GPU was lent)'}.

## Prompt fidelity
For a generated image, is its nearest training image the prompt's own emoji? (16x16 thumbnails, exact search over
all {d['emoji']} images: `studio_core/measure/fidelity.py`.)

{fid}

## Caching
{_mag_text(model_dir)}

## Limitations
Tiny and low-resolution by design: it knows emoji names, not language; it is here to make the cost of the
transformer knobs measurable, not to make good pictures.

{_measured(report, evaluation)}"""
