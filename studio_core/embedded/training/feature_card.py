"""The emoji feature network's model card (README.md), generated entirely from its folder's two files.

Every figure comes from ``training_report.json`` (written by ``features.train_feature_net``) or
``evaluation.json`` (the validation benchmark's raw results, copied in by ``features evaluate``), so retraining
and re-validating regenerate the whole card and nothing in it is written by hand. Without an ``evaluation.json``
the card says how to measure one.

    python benchmarks/distribution_validation.py   # writes benchmarks/results/distribution_validation-<date>.json
    python -m studio_core.embedded.training features evaluate --results THAT_FILE   # evaluation.json, then the card
    python -m studio_core.embedded.training features card                           # the card alone
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

__all__ = ["EVALUATION_FILE", "EVALUATION_KEYS", "import_evaluation", "main", "render_feature_card",
           "weights_digest", "write_feature_card"]

FEATURES_DIR_TEXT = "studio_core/embedded/emoji-features"  # the folder the card's commands name
EVALUATION_FILE = "evaluation.json"
EVALUATION_KEYS = ("commit", "utc", "command", "setup_text", "card_tables", "agreement", "chosen_sizes")
_OPTIONAL_KEYS = ("dirty",)  # kept when present: figures measured on uncommitted code must say so
VALIDATE_COMMAND = ("`python benchmarks/distribution_validation.py` then `python -m studio_core.embedded.training "
                    "features evaluate --results benchmarks/results/distribution_validation-<date>.json`")

_RECIPE_FIELDS = {  # what each recipe field means, for the card's recipe table
    "name": "recipe name",
    "image_size": "input size in pixels (every image is area-resized to it)",
    "channels": "output channels of each conv stage",
    "vae_variants": "VAE round-trips per emoji (decoder artefacts to train on)",
    "vae_latent_noise": "largest latent noise of the round-trips, in latent std units",
    "steps": "planned optimiser steps",
    "batch": "images per step (half clean renders, half VAE round-trips)",
    "lr": "AdamW peak learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup": "linear warm-up steps, then cosine decay to 2%",
    "label_smoothing": "cross-entropy label smoothing",
    "budget_minutes": "time budget: training stops at the steps or this, whichever comes first",
    "limit": "first N emoji only (none: all)",
    "seed": "seed of the weights, batches and augmentation",
    "threads": "torch threads (0: torch's default)",
    "notes": "what the recipe is for",
}
_DROPPED = {"not_single_glyph": "sequences the font has no ligature for", "placeholder": "glyphs the font lacks",
            "duplicate_render": "renders identical to an earlier emoji's"}
_SPARK = "▁▂▃▄▅▆▇█"


# --------------------------------------------------------------------------- files and commands


def import_evaluation(folder: Path, results_file: Path) -> Path:
    """Copy the validation benchmark's figures from its raw results file into ``folder/evaluation.json``; a file
    that is not such results, or whose figures the card cannot render, is refused before anything is written."""
    try:
        results = json.loads(Path(results_file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--results {results_file}: cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ValueError(f"--results {results_file}: not JSON ({exc})") from exc
    missing = [k for k in EVALUATION_KEYS if k not in results] if isinstance(results, dict) else list(EVALUATION_KEYS)
    if missing:
        raise ValueError(f"--results {results_file}: not a distribution_validation results file (missing "
                         f"{', '.join(missing)})")
    kept = {k: results[k] for k in EVALUATION_KEYS + _OPTIONAL_KEYS if k in results}
    measured, ours = (results.get("setup") or {}).get("feature_net_weights"), weights_digest(folder)
    if measured and ours and measured != ours:
        raise ValueError(f"--results {results_file}: measured on feature-network weights {measured}, but this "
                         f"folder's are {ours}; run benchmarks/distribution_validation.py on these weights")
    if measured:
        kept["weights"] = measured  # so the card can leave these figures out once the weights change
    report = json.loads((Path(folder) / "training_report.json").read_text(encoding="utf-8"))
    try:
        render_feature_card(report, kept)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"--results {results_file}: its card_tables, agreement or chosen_sizes do not have the "
                         f"expected shape ({type(exc).__name__}: {exc})") from exc
    path = Path(folder) / EVALUATION_FILE
    path.write_text(json.dumps(kept, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def weights_digest(folder: Path) -> str | None:
    """The first 12 hex digits of the sha256 of ``folder/model.safetensors`` (as the distribution figures record
    it), or None without weights."""
    path = Path(folder) / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def write_feature_card(folder: Path) -> Path:
    """Rewrite ``folder/README.md`` from its ``training_report.json`` and (if present) ``evaluation.json``; an
    evaluation of other weights than the folder's is left out (its figures would describe another network)."""
    folder = Path(folder)
    report = json.loads((folder / "training_report.json").read_text(encoding="utf-8"))
    ev_path = folder / EVALUATION_FILE
    evaluation = json.loads(ev_path.read_text(encoding="utf-8")) if ev_path.is_file() else None
    if evaluation and evaluation.get("weights") and evaluation["weights"] != weights_digest(folder):
        evaluation = None
    out = folder / "README.md"
    out.write_text(render_feature_card(report, evaluation), encoding="utf-8")
    return out


def main(argv: list[str]) -> None:
    """``features evaluate --results FILE`` (copy the validation figures, then the card) and ``features card``."""
    p = argparse.ArgumentParser(prog="python -m studio_core.embedded.training features",
                                description="the emoji feature network's evaluation.json and model card")
    p.add_argument("command", choices=["evaluate", "card"])
    p.add_argument("--model-dir", type=Path, default=Path(FEATURES_DIR_TEXT))
    p.add_argument("--results", type=Path, default=None,
                   help="evaluate: the raw results file of benchmarks/distribution_validation.py")
    a = p.parse_args(argv)
    if not (a.model_dir / "training_report.json").is_file():
        p.error(f"--model-dir {a.model_dir}: no training_report.json there (not a trained feature network folder)")
    if a.command == "evaluate":
        if a.results is None:
            p.error("evaluate needs --results FILE (the raw results of benchmarks/distribution_validation.py)")
        try:
            print(import_evaluation(a.model_dir, a.results))
        except ValueError as exc:
            p.error(str(exc))
    elif a.results is not None:
        p.error("--results belongs to evaluate; card only renders the folder's files")
    print(write_feature_card(a.model_dir))


# --------------------------------------------------------------------------- the card


def render_feature_card(report: dict, evaluation: dict | None) -> str:
    """The card's text: what the network is, data, recipe, architecture, accuracy, loss, metrics, retraining,
    validation (``evaluation``) and the standard metrics."""
    from studio_core.measure.standard_metrics import how_to_provide

    r, d = report["recipe"], report["data"]
    dim, size = r["channels"][-1], d["image_size"]
    return f"""---
license: other
library_name: pytorch
pipeline_tag: image-classification
---
# emoji-features: the studio's emoji feature network

A small CNN classifier with one class per emoji ({d['classes']:,} classes), trained from scratch by this project
so that the emoji models' images can be scored as a distribution without a model hub: its {dim}-d penultimate
layer is the feature space of FD-emoji, KID-emoji and precision / recall, its stage outputs give a perceptual
distance, and its class head a classifier-based prompt fidelity. It is a **domain** network, like the Fréchet
LeNet distance on MNIST: its figures compare runs of the emoji models with each other and are **not
comparable with published FID, KID or LPIPS** (Inception v3 and AlexNet on ImageNet).

```python
from studio_core.measure.feature_net import load_feature_net
net = load_feature_net()          # {FEATURES_DIR_TEXT}, fp32 in memory, eval mode
feats = net.features(images)      # uint8 (N, H, W, 3) -> (N, {dim}) float64
top1 = net.logits(images).argmax(1)  # index into net.config.captions
```

## Data
{_data_text(d, size)}

## Recipe `{r['name']}` ({r['notes']})
Cross-entropy with label smoothing on augmented batches: half clean renders, half round-trips through the
embedded model's VAE (`studio_core/embedded/emoji-sd`), so the network sees what a decoder draws; random scale
and shift on white, blur, brightness / contrast / saturation jitter without hue change (skin tones and flags
differ by colour), pixel noise. Builder: `studio_core/embedded/training/features.py`.

| field | value | meaning |
|---|---|---|
{_recipe_rows(r)}

{_run_text(report)}

## Architecture
{_architecture_text(r, d, report)}

## Accuracy
Measured on the saved fp16 weights as they ship, every class once (`features.topk_accuracy`):

| images | top-1 | top-5 |
|---|---|---|
{_accuracy_rows(report['accuracy'])}

## Training loss
{_loss_text(report)}

## The metrics on it
{_metrics_text(size)}

## Retraining
{_retrain_text(r)}

## Validation
{_validation_text(evaluation)}

## How to use standard metrics instead
{how_to_provide()}
"""


def _data_text(d: dict, size: int) -> str:
    dropped = d.get("dropped", {})
    listed = "; ".join(f"{n} {_DROPPED.get(k, k)} (`{k}`)" for k, n in dropped.items() if n)
    total = d["classes"] + sum(dropped.values())
    return (f"{d['source']}: {d['classes']:,} emoji at {size}x{size} px, one class each, training split and "
            f"held-out captions alike (the network is a yardstick with a class for every emoji the models can be "
            f"asked for). Of the {total:,} fully-qualified emoji of the `emoji` package, "
            f"{sum(dropped.values())} were dropped{': ' + listed if listed else ''}. Font: Debian's "
            "`fonts-noto-color-emoji` (Noto Color Emoji, SIL Open Font License 1.1), rendered on white; captions "
            "are the CLDR short names of Unicode's `emoji-test.txt` (else the `emoji` package's name), kept in "
            "`config.json` as the class names.")


def _recipe_rows(r: dict) -> str:
    return "\n".join(f"| `{k}` | {_cell(v)} | {_RECIPE_FIELDS.get(k, '')} |" for k, v in r.items())


def _run_text(report: dict) -> str:
    r, s = report["recipe"], report["seconds"]
    return (f"This run: **{report['steps_done']:,} of {r['steps']:,} steps**, stopped by {report['stopped_by']}; "
            f"{report['images_seen']:,} training images seen; {s['vae_round_trips'] / 60:.1f} min of VAE round-trips, "
            f"{s['training'] / 60:.1f} min of training, {s['total'] / 60:.1f} min in all including data, evaluation "
            f"and saving, on {report['device']} with {report['threads']} threads ({report['platform']}), "
            f"{report['date']}. Weights: {report['weights_bytes'] / 1e6:.1f} MB (fp16 safetensors), "
            f"{report['parameters']:,} parameters.")


def _architecture_text(r: dict, d: dict, report: dict) -> str:
    chans, size = r["channels"], d["image_size"]
    sizes = " -> ".join(f"{size >> i}" for i in range(len(chans)))
    return (f"VGG-style (`studio_core/measure/feature_net.py`, `EmojiFeatureNet`): input RGB area-resized to "
            f"{size}x{size} and scaled to [-1, 1]; {len(chans)} stages of two 3x3 conv + BatchNorm + ReLU with "
            f"{', '.join(map(str, chans))} channels, a 2x2 max-pool between stages ({sizes} px); global average pool "
            f"to the {chans[-1]}-d feature vector (`features`); a linear head to the {d['classes']:,} classes "
            f"(`logits`). {report['parameters']:,} parameters, stored in fp16 and run in fp32.")


def _accuracy_rows(accuracy: dict) -> str:
    return "\n".join(f"| {name} | {v['top1']:.1%} | {v['top5']:.1%} |" for name, v in accuracy.items())


def _loss_text(report: dict) -> str:
    curve = report["loss_curve_per_100_steps"]
    if not curve:
        return "No steps were run."
    lo, hi = min(curve), max(curve)
    spark = "".join(_SPARK[round((v - lo) / (hi - lo) * (len(_SPARK) - 1)) if hi > lo else 0] for v in curve)
    tail = report["steps_done"] % 100
    partial = (" (the last point is the final step alone)" if tail == 1
               else f" (the last point averages the final {tail} steps)" if tail else "")
    return (f"Label-smoothed cross-entropy, mean per 100 steps{partial}:\n\n```\n{spark}  "
            f"{' '.join(f'{v:.2f}' for v in curve)}\n```\n\nMean of the first 50 steps {report['loss_first']:.3f}, "
            f"of the last 50 {report['loss_last']:.3f}.")


def _metrics_text(size: int) -> str:
    from studio_core.measure.emoji_metrics import DIST_KID_SUBSET_SIZE, DIST_KID_SUBSETS, DIST_PR_K

    return (f"Computed by `studio_core/measure/distribution.py` and `emoji_metrics.py` for the emoji models (the "
            "embedded one and the students the studio makes from it); a distribution row's method text names the "
            "weights' digest.\n\n"
            "- **FD-emoji**: the Fréchet distance between Gaussians fitted to the penultimate features of a run's "
            "distribution set and of every training-split render at the run's size (computed as torchmetrics' FID).\n"
            f"- **KID-emoji**: the kernel distance (polynomial kernel of degree 3), mean ± std over "
            f"{DIST_KID_SUBSETS} seeded subsets of min(n, {DIST_KID_SUBSET_SIZE:,}) features.\n"
            f"- **Precision / recall** (improved, k = {DIST_PR_K}; Kynkäänniemi et al. 2019): the share of generated "
            "images inside the real set's k-NN balls, and of training renders inside the generated set's.\n"
            "- **Perceptual distance**: per image to the same-seed reference, LPIPS-style (Zhang et al. 2018, "
            "without learned weights) on the stage outputs: unit channel vectors, squared difference, mean over "
            "channels and positions, summed over the stages; mean ± std over the images.\n"
            "- **Classifier fidelity**: top-1 / top-5 of each image's own caption among the classes.\n\n"
            f"The network sees every image at {size}x{size} px, whatever its size. FD is biased upward at small n, "
            "so compare figures at the same n (the validation below chooses it).")


def _retrain_text(r: dict) -> str:
    from studio_core.embedded.training.features import FEATURE_RECIPES

    rows = "\n".join(f"| `{name}` | {x.steps:,} | {x.batch} | {x.budget_minutes:g} min | {x.notes} |"
                     for name, x in FEATURE_RECIPES.items())
    return (f"```\npython -m studio_core.embedded.training features --recipe cpu|gpu|tiny --out {FEATURES_DIR_TEXT}\n"
            f"python -m studio_core.embedded.training features card   # this README from the folder's files\n```\n\n"
            f"| recipe | steps | batch | budget | for |\n|---|---|---|---|---|\n{rows}\n\n"
            f"These weights: `--recipe {r['name']}`. `--steps N` overrides the step count; `--cache-dir` says where "
            "the rendered data set is kept. Retraining changes the weights' digest, which the distribution figures' "
            "method text records, so figures from different weights are told apart.")


def _validation_text(ev: dict | None) -> str:
    if ev is None:
        return f"Not measured on these weights yet: run {VALIDATE_COMMAND}."
    dirty = " on **uncommitted code**" if ev.get("dirty") else ""
    weights = f" on weights `{ev['weights']}`" if ev.get("weights") else ""
    lines = [f"By `{ev['command']}`{weights} at commit `{ev['commit']}`{dirty}, {ev['utc']}. "
             f"{ev['setup_text']}".rstrip()]
    for table in ev["card_tables"]:
        lines.append(_table_text(table))
    lines.append("### Agreement\nThe benchmark's `agreement` figures as recorded:\n\n"
                 + (_agreement_text(ev["agreement"]) or "(none recorded)"))
    sizes = ev["chosen_sizes"]
    rest = {k: v for k, v in sizes.items() if k not in ("fd_kid_n", "reason")}
    lines.append(f"### Chosen sizes\nFD-emoji and KID-emoji are computed on **n = {sizes['fd_kid_n']:,}** images: "
                 f"{sizes['reason']}" + ("\n" + _mapping_text(rest) if rest else ""))
    lines.append(f"Re-measure: {VALIDATE_COMMAND}.")
    return "\n\n".join(lines)


def _table_text(table: dict) -> str:
    """One ``card_tables`` entry as a Markdown table with its title and notes."""
    header = table["header"]
    out = [f"### {table['title']}", "", "| " + " | ".join(_cell(h) for h in header) + " |",
           "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
    notes = table.get("notes") or []
    notes = [notes] if isinstance(notes, str) else notes
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def _agreement_text(m: dict) -> str:
    """A nested dict whose innermost dicts share their keys as one table (a row per path), else as a list."""
    rows = _leaf_dicts(m)
    if not rows or len({tuple(leaf) for _, leaf in rows}) != 1:
        return _mapping_text(m)
    keys = list(rows[0][1])
    out = ["| | " + " | ".join(_cell(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    out += [f"| {' / '.join(map(str, path))} | " + " | ".join(_cell(leaf[k]) for k in keys) + " |"
            for path, leaf in rows]
    return "\n".join(out)


def _leaf_dicts(m: dict, path: tuple = ()) -> list[tuple[tuple, dict]] | None:
    """(path, dict) for each innermost dict of plain values; None where a plain value sits beside dicts."""
    out = []
    for k, v in m.items():
        if not isinstance(v, dict):
            return None
        if v and not any(isinstance(x, dict) for x in v.values()):
            out.append(((*path, k), v))
        else:
            sub = _leaf_dicts(v, (*path, k))
            if sub is None:
                return None
            out += sub
    return out


def _mapping_text(m: dict, indent: str = "") -> str:
    """A dict as a Markdown bullet list, nested dicts indented."""
    lines = []
    for k, v in m.items():
        if isinstance(v, dict):
            lines.append(f"{indent}- {k}:")
            lines.append(_mapping_text(v, indent + "  "))
        else:
            lines.append(f"{indent}- {k}: {_cell(v)}")
    return "\n".join(line for line in lines if line)


def _cell(v: object) -> str:
    """A value as table-cell text: floats to 4 significant figures, lists comma-joined, pipes escaped."""
    if v is None:
        text = "none"
    elif isinstance(v, bool):
        text = "yes" if v else "no"
    elif isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, (list, tuple)):
        text = ", ".join(_cell(x) for x in v)
    else:
        text = str(v)
    return text.replace("|", "\\|").replace("\n", " ")
