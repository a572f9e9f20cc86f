"""The model card (README.md) of a trained pipeline folder, generated entirely from its two files.

Every figure comes from ``training_report.json`` (written by training) or ``evaluation.json`` (written by
``python -m studio_core.embedded.training evaluate``), so retraining and re-evaluating regenerate the whole
card, and ``... card`` rewrites it from the files alone. An evaluation of other weights (its digest differs)
is not shown: the card then says the measurements are still to be made.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio_core.embedded.training.card_parts import chain as _chain
from studio_core.embedded.training.card_parts import kind_rows as _kind_rows
from studio_core.embedded.training.card_parts import measured_head, verdict
from studio_core.embedded.training.card_parts import pct as _pct
from studio_core.prompts import GALLERY_PROMPTS

__all__ = ["card_from_folder", "render_model_card", "write_model_card"]

MODEL_DIR_TEXT = "studio_core/embedded/emoji-sd"  # the folder the card's commands name


def card_from_folder(model_dir: Path) -> Path:
    """Rewrite ``model_dir/README.md`` from its ``training_report.json`` and ``evaluation.json``."""
    report = json.loads((Path(model_dir) / "training_report.json").read_text(encoding="utf-8"))
    write_model_card(Path(model_dir), report)
    return Path(model_dir) / "README.md"


def write_model_card(out: Path, report: dict, evaluation: dict | None = None) -> None:
    """README.md of the model folder from ``report`` and ``evaluation`` (default: the folder's
    ``evaluation.json`` if there is one); an evaluation of other weights than the folder's is left out."""
    from studio_core.embedded.training.evaluate import EVALUATION_FILE, weights_digest

    if evaluation is None and (out / EVALUATION_FILE).is_file():
        evaluation = json.loads((out / EVALUATION_FILE).read_text(encoding="utf-8"))
    if evaluation is not None and evaluation.get("weights") != weights_digest(out):
        evaluation = None  # measured on other weights: its figures would describe a different model
    if report.get("model") == "emoji-flux":
        from studio_core.embedded.training.flux_card import render_flux_card

        text = render_flux_card(out, report, evaluation)
    else:
        text = render_model_card(report, evaluation)
    (out / "README.md").write_text(text, encoding="utf-8")


def render_model_card(report: dict, evaluation: dict | None) -> str:
    """The card's text: data, recipe, compute, prompt fidelity, gallery, and what was measured afterwards."""
    r, f, t, d = report["recipe"], report["fidelity"], report["timings"], report["data"]
    params = report["parameters"]
    sweep = "\n".join(f"| {g} | {v['top1']:.1%} | {v['top5']:.1%} | {v['n']} | {v['steps']} |"
                       for g, v in f["guidance_sweep"].items())
    prompts = ", ".join(f"`{p}`" for p in GALLERY_PROMPTS)
    kinds = _kind_rows(f["train"].get("by_kind", {})) or "| (not measured) | | | |"
    chain = _chain(report)
    rv = chain[0]["recipe"] if chain else r  # the stage that trained the VAE
    vae_from = f" (trained by the `{rv['name']}` stage, kept since)" if chain else ""
    reproduce = ("\nReproduce: `python -m studio_core.embedded.training "
                 f"--recipe {r['name']} --out studio_core/embedded/emoji-sd`.\n")
    text = f"""---
license: other
library_name: diffusers
pipeline_tag: text-to-image
---
# emoji-sd: the studio's embedded default model

A complete `StableDiffusionPipeline` (AutoencoderKL + CLIPTextModel/CLIPTokenizer + UNet2DConditionModel
with cross-attention + DDIM scheduler) trained from scratch by this project on {d['train']} Noto Color Emoji
glyphs at {r['image_size']}x{r['image_size']} pixels, so that every efficiency knob of the studio meets
the same components as on SD 1.5, small enough to run on a 2-core CPU.

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("studio_core/embedded/emoji-sd", local_files_only=True)
image = pipe("grinning face", guidance_scale={f['guidance']}, num_inference_steps=50).images[0]
```

Documented defaults (also in `studio_defaults.json`): guidance scale **{f['guidance']}**, 50 steps,
{r['image_size']}x{r['image_size']}. Prompts are CLDR emoji names (`grinning face`, `flag: France`,
`man scientist: dark skin tone`); words outside the captions' vocabulary are split into bytes and mean
little to the model.

![gallery](gallery.png)

Gallery (seed 0, {r['eval_steps']} DDIM steps, guidance {f['guidance']}), row by row: {prompts}.

## Components
| component | parameters | shape |
|---|---|---|
| VAE (`AutoencoderKL`) | {params['vae']:,} | channels {list(r['vae_channels'])}, {r['latent_channels']} latent channels, {2 ** (len(r['vae_channels']) - 1)}x downsampling |
| text encoder (`CLIPTextModel`) | {params['text_encoder']:,} | {r['text_layers']} layers, width {r['text_hidden']}, {r['text_heads']} heads, {r['max_tokens']} tokens |
| UNet (`UNet2DConditionModel`) | {params['unet']:,} | channels {list(r['unet_channels'])}, {r['unet_layers_per_block']} layer(s) per block, cross-attention at all but the lowest level |
| tokenizer (`CLIPTokenizer`) | - | byte-level BPE learned from the training captions (`vocab.json`, `merges.txt`) |

## Data
Every fully-qualified emoji of the `emoji` package ({d['emoji'] + sum(d['dropped'].values())}), rendered with
Debian's `fonts-noto-color-emoji` 2.042 (SIL Open Font License 1.1) on white and resized with Lanczos;
dropped: {d['dropped']} (glyphs the font lacks, sequences it has no ligature for, identical renders).
Captions: CLDR short names from Unicode's `emoji-test.txt` (Debian `unicode-data`), else the `emoji`
package's name. {d['emoji']} images remain: {d['train']} for training and {d['held_out']} held out
(single-skin-tone variants picked by a stable hash; their base emoji and other tones are in training).
Builder: `studio_core/embedded/training/data.py`.

## Recipe `{r['name']}` ({r['notes']})
1. Tokenizer: BPE on the training captions.
2. VAE{vae_from}: {rv['vae_steps']} steps, batch {rv['vae_batch']}, AdamW lr {rv['vae_lr']}, L1 + L2 + 1e-6 KL;
   latent scaling factor 1/std of the training latents.
3. Text encoder + UNet together: {r['steps']} steps, batch {r['batch']}, AdamW (UNet lr {r['unet_lr']}, text lr
   {r['text_lr']}, weight decay 0.01, {r['warmup']} warm-up steps, cosine to 10%), epsilon prediction on SD 1.5's
   scaled-linear schedule, Min-SNR-{r['min_snr_gamma']} weighting, {r['cfg_dropout']:.0%} caption dropout for
   classifier-free guidance, EMA {r['ema_decay']} (the EMA weights are shipped).{_family_text(r)}
{_continued_text(report) or reproduce}
## Compute
These weights were produced by the **{r['name']}** recipe on **{report['device']}** ({report['threads']} threads,
torch {report['torch']}): VAE {'kept (latents encoded) ' if chain else ''}{t['vae_s'] / 60:.1f} min, text encoder + UNet {t['denoiser_s'] / 60:.1f} min,
evaluation and saving {t['eval_s'] / 60:.1f} min; {t['total_s'] / 60:.1f} min in all{_chain_total(report)}. Final training loss
{report['final_loss']:.4f} (Min-SNR-weighted), VAE loss {report['vae_final_loss']:.4f}.

## Prompt fidelity
For a generated image, is its nearest training image the prompt's own emoji? Feature space: the image
area-averaged to a 16x16 RGB thumbnail in [0, 1], Euclidean distance, exact search over all
{d['emoji']} images (`studio_core/measure/fidelity.py`). Validated on the data set itself:
every training image retrieves itself, copies with Gaussian noise (sigma 0.05) and with 1-pixel shifts
retrieve themselves at least 90% of the time (`tests/test_prompt_fidelity.py`).

| captions | n | top-1 | top-5 |
|---|---|---|---|
| training (fixed random sample) | {f['train']['n']} | {f['train']['top1']:.1%} | {f['train']['top5']:.1%} |
| held out (never trained on) | {f['held_out']['n']} | {f['held_out']['top1']:.1%} | {f['held_out']['top5']:.1%} |

Setup: {f['steps']} steps of {f['sampler']}, guidance {f['guidance']}, one image per caption, seed = its index.

The training sample by kind:

| kind | n | top-1 | top-5 |
|---|---|---|---|
{kinds}

The guidance was chosen on half of the training sample at {r['eval_steps'] // 2} steps:

| guidance | top-1 | top-5 | n | steps |
|---|---|---|---|---|
{sweep}

## Limitations
Tiny and low-resolution by design: it knows emoji names, not language. Held-out figures say how far
it composes a known base with a known skin tone it never saw together.

{_measured_text(report, evaluation)}"""
    return text




def _measured_text(report: dict, ev: dict | None) -> str:
    """The last section: targets, stages, held-out note, other guidance scales and speed (``evaluation.json``)."""
    command = f"`python -m studio_core.embedded.training evaluate --model-dir {MODEL_DIR_TEXT}`"
    lines = measured_head(command, report, ev)
    if ev is None:
        return lines[0] + "\n"
    t, s, env = ev["targets"], ev["speed"], ev["setup"]
    for c in _chain(report) + [report]:
        rc, tc = c["recipe"], c["timings"]
        rate = rc["steps"] * rc["batch"] / tc["denoiser_s"] if tc.get("denoiser_s") else None
        lines.append(f"- Stage `{rc['name']}`: {rc['steps']} denoiser steps in {tc['total_s'] / 60:.1f} min"
                     + (f" ({rate:.0f} training images/s)" if rate else "")
                     + f"; training captions top-1 / top-5 {_pct(c['fidelity']['train']['top1'])} / "
                     f"{_pct(c['fidelity']['train']['top5'])} at guidance {c['fidelity']['guidance']}.")
    lines.append("- Every held-out caption is a single-skin-tone variant (the split's design), so compare the "
                 "held-out figures with that kind's row in the training sample above, not with the whole sample.")
    for g in ev["fidelity"]:
        lines.append(f"- Guidance {g['guidance']}, same sample ({g['steps']} {g['sampler']} steps): training "
                     f"top-1 {_pct(g['train']['top1'])} / top-5 {_pct(g['train']['top5'])}, held-out "
                     f"{_pct(g['held_out']['top1'])} / {_pct(g['held_out']['top5'])}.")
    lines.append(f"- Speed (the protocol of `benchmarks/embedded_cpu_speed.py`): {len(s['prompts'])} images x "
                 f"{s['steps']} {s['sampler']} steps with guidance {s['guidance']} (UNet batch "
                 f"{2 * len(s['prompts'])}), {env['threads']} threads, {s['warmup']} warm-up calls, {s['repeats']} "
                 f"repeats: median {s['median_s']:.3f} s (min {s['min_s']:.3f}, max {s['max_s']:.3f}, IQR "
                 f"{'n/a' if s['iqr_s'] is None else format(s['iqr_s'], '.3f')}; target at most {t['speed_median_s']:g} s: "
                 f"{verdict(s['median_s'], t['speed_median_s'], most=True)}), {s['per_image_s']:.3f} s per image"
                 + (f"; 1-minute load average {env['load_average_1m']:.2f} on {env['device_name'].split('(')[-1][:-1]} "
                    "when timing began" if "load_average_1m" in env else "") + ".")
    return "\n".join(lines) + "\n"


def _family_text(r: dict) -> str:
    if not r.get("family_power"):
        return ""
    return (f" Items are drawn with\n   probability proportional to (family size)^-{r['family_power']}, a family being an "
            "emoji and its\n   skin-tone variants, so one-of-a-kind emoji get more epochs than the near-identical tones.")




def _chain_total(report: dict) -> str:
    chain = _chain(report)
    if not chain:
        return ""
    total = report["timings"]["total_s"] + sum(c["timings"]["total_s"] for c in chain)
    return f" (with the stage{'s' if len(chain) > 1 else ''} before: {total / 60:.1f} min of training in all)"


def _continued_text(report: dict) -> str:
    """For weights continued from an earlier folder (``--init``): each earlier stage with its own figures."""
    chain = _chain(report)
    if not chain:
        return ""
    rows = "\n".join(
        f"| `{c['recipe']['name']}` | {c['recipe']['steps']} | {c['recipe']['batch']} | {c['recipe']['unet_lr']} | "
        f"{c['timings']['total_s'] / 60:.1f} min | {c['final_loss']:.4f} | {c['fidelity']['train']['top1']:.1%} / "
        f"{c['fidelity']['train']['top5']:.1%} (guidance {c['fidelity']['guidance']}) |" for c in chain)
    r = report["recipe"]
    f = report["fidelity"]
    rows += (f"\n| `{r['name']}` (these weights) | {r['steps']} | {r['batch']} | {r['unet_lr']} | "
             f"{report['timings']['total_s'] / 60:.1f} min | {report['final_loss']:.4f} | {f['train']['top1']:.1%} / "
             f"{f['train']['top5']:.1%} (guidance {f['guidance']}) |")
    return f"""
The text encoder and UNet were **continued** from an earlier run's shipped (EMA) weights with a fresh
optimiser, warm-up and cosine (the VAE and tokenizer kept as they were). Stages, in order:

| recipe | denoiser steps | batch | UNet lr | time | final loss | training captions top-1 / top-5 |
|---|---|---|---|---|---|---|
{rows}

Reproduce: `python -m studio_core.embedded.training --recipe cpu --out A`, then
`python -m studio_core.embedded.training --recipe cpu-continue --init A --out studio_core/embedded/emoji-sd`.
"""
