"""Validation of the emoji feature network's metrics: do FD-emoji, KID-emoji, precision/recall and the
perceptual distance behave as such metrics must, at what sample size are they stable, and what do they cost?

Five checks at 32 px with the shipped network (``studio_core/embedded/emoji-features/``), the real set being
the training-split renders:

1. real vs real: the renders in two disjoint random halves (5 seeds): FD and KID near 0, precision and
   recall near 1;
2. corruptions: half A against half B corrupted (Gaussian noise, Gaussian blur, JPEG, hue rotation) at
   level 0 (none) and 4 rising levels: FD, KID and the perceptual distance (each image against its own
   corrupted copy) must rise with the level;
3. steps: the embedded model (its DDIM, guidance 5.0) on the 500 distribution captions at 50/20/10/4 steps,
   scored by ``emoji_metrics.distribution_scores``, with the network's classifier and the thumbnail index
   (``fidelity.PromptFidelityIndex``) on the same images, and how often the two agree (Cohen's kappa);
4. sample size: 1,000 images at 20 steps subsampled to n = 50...1000 with 5 seeds: the seed-to-seed spread
   of FD and KID by n, and the distribution-set size the studio should recommend;
5. cost: ``distribution_scores`` over 500 images with a cold real-feature cache, then a warm one.

Run: ``.venv/bin/python benchmarks/distribution_validation.py`` (``--dirty`` on uncommitted code;
``--quick`` for a small development run, marked as such in its file and never to be published).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _harness import add_publish_args, check_tree, print_table, publish, setup_line, setup_of  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from studio_core.embedded.training.data import load_or_build  # noqa: E402
from studio_core.measure.distribution import feature_stats, frechet_distance, kid, perceptual_distance, precision_recall  # noqa: E402
from studio_core.measure.emoji_metrics import (  # noqa: E402
    DIST_KID_SUBSET_SIZE,
    DIST_PR_K,
    distribution_captions,
    distribution_scores,
)
from studio_core.measure.feature_net import FEATURE_NET_DIR, load_feature_net  # noqa: E402
from studio_core.measure.fidelity import PromptFidelityIndex  # noqa: E402
from studio_core.measure.generation import generate  # noqa: E402

SIZE = 32
GUIDANCE = 5.0
BATCH = 100
FD_STABLE_CV = 0.05  # FD's seed-to-seed std under 5% of its mean counts as settled


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the published ones, or ``--quick``'s smaller ones for development."""

    seeds: int = 5
    half: int | None = None  # images per real half; None: half the training split each
    dist_n: int = 300  # sized so the published run fits ~12 minutes on 2 CPU cores (generation dominates)
    steps: tuple[int, ...] = (20, 10, 4)
    sample_total: int = 600
    sample_ns: tuple[int, ...] = (50, 100, 200, 300, 600)
    sample_steps: int = 10
    kid_subsets: int = 50


PLANS = {"full": Plan(), "quick": Plan(seeds=2, half=400, dist_n=100, steps=(10, 4), sample_total=200,
                                       sample_ns=(50, 100, 200), sample_steps=4, kid_subsets=10)}


def _pil_each(images: np.ndarray, fn) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(im)).convert("RGB")) for im in images])


def gaussian_noise(images: np.ndarray, sigma: float) -> np.ndarray:
    """Add N(0, sigma) noise in 0-255 units (a fixed seed), rounded and clipped."""
    noise = np.random.default_rng(0).normal(0.0, sigma, images.shape)
    return (images + noise).round().clip(0, 255).astype(np.uint8)


def gaussian_blur(images: np.ndarray, radius: float) -> np.ndarray:
    """PIL's Gaussian blur of the given radius (pixels at 32 px)."""
    return _pil_each(images, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """A PIL JPEG round trip at ``quality`` (its default 4:2:0 chroma subsampling)."""
    def round_trip(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))
    return _pil_each(images, round_trip)


def hue_rotation(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue by ``degrees`` in PIL's HSV (white and greys, having no saturation, stay)."""
    shift = round(degrees / 360 * 256) % 256

    def rotate(im: Image.Image) -> Image.Image:
        h, s, v = im.convert("HSV").split()
        return Image.merge("HSV", (h.point(lambda x: (x + shift) % 256), s, v))
    return _pil_each(images, rotate)


# name -> (function, its 4 rising levels, how a level reads)
CORRUPTIONS = {
    "Gaussian noise": (gaussian_noise, (4, 8, 16, 32), "σ = {}/255"),
    "Gaussian blur": (gaussian_blur, (0.5, 1.0, 1.5, 2.0), "radius {} px"),
    "JPEG": (jpeg, (90, 60, 30, 10), "quality {}"),
    "hue rotation": (hue_rotation, (15, 30, 60, 90), "{}°"),
}


def set_metrics(real: torch.Tensor, fake: torch.Tensor, kid_subsets: int, seed: int = 0) -> dict:
    """FD, KID (mean and std over subsets) and precision/recall with the studio's settings."""
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, subset_size=DIST_KID_SUBSET_SIZE, seed=seed)
    precision, recall = precision_recall(real, fake, k=DIST_PR_K)
    return {"fd": frechet_distance(*feature_stats(real), *feature_stats(fake)), "kid": kid_mean,
            "kid_std": kid_std, "precision": precision, "recall": recall}


def classifier_hits(net, images: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: is its caption's class the network's top-1, and among its top-5 (as ``distribution_scores``)."""
    index = {c: i for i, c in enumerate(net.config.captions)}
    missing = [c for c in captions if c not in index]
    if missing:
        raise SystemExit(f"captions unknown to the feature network's head: {missing[:3]}")
    top = net.logits(images).topk(5, dim=1).indices
    hit = (top == torch.tensor([index[c] for c in captions])[:, None]).numpy()
    return hit[:, 0], hit.any(axis=1)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Two hit/miss verdicts on the same images: share with the same verdict, share both hit, Cohen's (1960) kappa."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    same = float((a == b).mean())
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    kappa = (same - chance) / (1 - chance) if chance < 1 else float("nan")
    return {"same_verdict": same, "both_hit": float((a & b).mean()), "kappa": kappa, "n": len(a)}


def mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def kid_text(mean: float, std: float) -> str:
    return f"{mean * 1e3:.3f} ± {std * 1e3:.3f}"


def monotone(values: list[float], rising: bool) -> bool:
    return all((b > a) if rising else (b <= a) for a, b in zip(values, values[1:]))


def settled_from(ns: list[int], ok: list[bool]) -> int | None:
    """The smallest n from which every larger n passes too, or None."""
    first = None
    for n, passed in zip(ns, ok):
        first = (first or n) if passed else None
    return first


def size_verdict(by_n: dict[int, dict], plan: Plan) -> tuple[int, str]:
    """The sample size from which FD's seed-to-seed std is under ``FD_STABLE_CV`` of its mean and KID's std under
    its mean (every larger subsample too), and why; the whole set, having no spread, does not count."""
    partial = [n for n in plan.sample_ns if n < plan.sample_total]
    fd_n = settled_from(partial, [np.std(by_n[n]["fd"]) < FD_STABLE_CV * np.mean(by_n[n]["fd"]) for n in partial])
    kid_n = settled_from(partial, [np.std(by_n[n]["kid"]) < np.mean(by_n[n]["kid"]) for n in partial])
    chosen = max(fd_n or plan.sample_total, kid_n or plan.sample_total)
    never = f"none below {plan.sample_total}"
    verdict = "holds" if chosen <= 500 else f"is too small: recommend {chosen}"
    reason = (f"FD's seed-to-seed std is under {FD_STABLE_CV:.0%} of its mean from n={fd_n or never} and KID's std "
              f"under its mean from n={kid_n or never} ({plan.seeds} subsamples of {plan.sample_total} images at "
              f"{plan.sample_steps} steps); the studio's distribution set should have at least {chosen} images, and "
              f"the UI's recommended 500 {verdict}.")
    full_fd = np.mean(by_n[plan.sample_total]["fd"]) if plan.sample_total in by_n else None
    bias = [f"{np.mean(by_n[n]['fd']) / full_fd - 1:+.0%} at n={n}" for n in sorted({chosen, 500}) if n in by_n
            and full_fd and n < plan.sample_total]
    if bias:
        reason += (f" FD falls as n grows (the estimator's bias): against n={plan.sample_total} the mean FD is "
                   f"{' and '.join(bias)}, so FD-emoji compares runs with the same distribution-set size only.")
    return chosen, reason


def card_table(title: str, table: dict, notes: list[str]) -> dict:
    return {"title": title, "header": table["header"], "rows": table["rows"], "notes": notes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for development only (never published)")
    p.add_argument("--device", default="cpu", help="where the images are generated (metrics run on the CPU)")
    p.add_argument("--threads", type=int, default=2)
    args = add_publish_args(p).parse_args()
    check_tree(args.dirty)
    torch.set_num_threads(args.threads)
    plan = PLANS["quick" if args.quick else "full"]
    started, phases = time.perf_counter(), {}

    def phase_done(name: str, t0: float) -> None:
        phases[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {phases[name]:.0f} s", file=sys.stderr, flush=True)

    # 0. the real set, the network, the thumbnail index
    ds = load_or_build(ROOT / ".cache", SIZE)
    net = load_feature_net()
    digest = hashlib.sha256((FEATURE_NET_DIR / "model.safetensors").read_bytes()).hexdigest()[:12]
    train = ds.images[ds.train_indices]
    train_feats = net.features(train)
    fidelity_index = PromptFidelityIndex(ds.images, ds.captions)
    half = plan.half or len(train) // 2
    setup = setup_of(args.device, 1, quick=args.quick, plan=asdict(plan), size=SIZE, guidance=GUIDANCE, batch=BATCH,
                     feature_net_weights=digest, feature_net_classes=net.config.n_classes, real_set=len(train))
    lead = (f"{'QUICK DEVELOPMENT RUN, not for publication: ' if args.quick else ''}emoji feature network "
            f"(weights {digest}, {net.config.n_classes} classes) at {SIZE} px; real set: the {len(train)} "
            f"training renders; generated: emoji-sd, its DDIM, guidance {GUIDANCE:g}, batch {BATCH}, seed = caption "
            "index")
    how = (f"KID: polynomial kernel, {plan.kid_subsets} subsets of min({DIST_KID_SUBSET_SIZE}, n), shown ×1000; "
           f"precision/recall k={DIST_PR_K}")
    setup_text = setup_line(lead, setup, how)
    print(f"# distribution metrics validation\n{setup_text}", flush=True)
    raw, measured = {}, {}

    # 1. real vs real: disjoint random halves of the training renders
    t0 = time.perf_counter()
    splits = [np.random.default_rng(seed).permutation(len(train)) for seed in range(plan.seeds)]
    rvr = [set_metrics(train_feats[s[:half]], train_feats[s[half:2 * half]], plan.kid_subsets, seed)
           for seed, s in enumerate(splits)]
    for key in ("fd", "kid", "precision", "recall"):
        raw[f"real vs real: {key}{' x1000' if key == 'kid' else ''} per seed"] = [
            m[key] * (1e3 if key == "kid" else 1) for m in rvr]
    measured["real_vs_real"] = rvr
    phase_done("real vs real", t0)

    # 2. corruptions: half A against half B corrupted; level 0 is seed 0's real-vs-real split
    t0 = time.perf_counter()
    a_idx, b_idx = splits[0][:half], splits[0][half:2 * half]
    level0 = {**rvr[0], "perceptual": 0.0}
    corrupt = {}
    for name, (fn, levels, label) in CORRUPTIONS.items():
        corrupt[name] = [level0]
        for value in levels:
            images = fn(train[b_idx], value)
            m = set_metrics(train_feats[a_idx], net.features(images), plan.kid_subsets)
            m["perceptual"] = float(perceptual_distance(net, images, train[b_idx]).mean())
            corrupt[name].append({**m, "setting": label.format(value)})
        print(f"{name} done", file=sys.stderr, flush=True)
    measured["corruptions"] = corrupt
    phase_done("corruptions", t0)

    rows = [[f"real A vs real B ({plan.seeds} random splits)", "–", f"{half} vs {half}",
             mean_std([m["fd"] for m in rvr]),
             kid_text(np.mean([m["kid"] for m in rvr]), np.std([m["kid"] for m in rvr])),
             mean_std([m["precision"] for m in rvr]), mean_std([m["recall"] for m in rvr]), "–"]]
    rows.append(["A vs B uncorrupted (split 0)", "0", "none", f"{level0['fd']:.3f}",
                 kid_text(level0["kid"], level0["kid_std"]), f"{level0['precision']:.3f}",
                 f"{level0['recall']:.3f}", "0"])
    for name, ms in corrupt.items():
        rows += [[name, str(i), m["setting"], f"{m['fd']:.3f}", kid_text(m["kid"], m["kid_std"]),
                  f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['perceptual']:.4f}"]
                 for i, m in enumerate(ms) if i > 0]
    print("\n## real vs real, and corruptions")
    table = print_table(["comparison", "level", "setting", "FD-emoji", "KID-emoji ×1000", "precision", "recall",
                         "perceptual distance"], "lllrrrrr", rows)
    main_notes = [f"Real vs real: the {len(train)} training renders split into two disjoint random sets of {half}, "
                  f"{plan.seeds} seeds; each figure is mean ± std over the seeds. Expected: KID ≈ 0, precision and "
                  "recall ≈ 1, and FD small against the corrupted rows (FD of two finite samples of one distribution "
                  "is above 0, by a bias that shrinks as the samples grow).",
                  "Corruptions: half A (clean) against half B corrupted, on split 0, whose uncorrupted row is level 0 "
                  "of every corruption. KID is mean ± std over its subsets. The perceptual distance is each image "
                  "against its own corrupted copy, mean over half B (LPIPS-style on the network's stage outputs)."]

    checks = {"FD rises": ("fd", True), "KID rises": ("kid", True), "perceptual rises": ("perceptual", True),
              "precision falls": ("precision", False), "recall falls": ("recall", False)}
    mono = {name: {check: monotone([m[key] for m in ms], rising) for check, (key, rising) in checks.items()}
            for name, ms in corrupt.items()}
    failed = [f"{check.split()[0]} under {name}" for name, c in mono.items() for check in list(checks)[:3]
              if not c[check]]
    print("\n## monotone over levels 0-4")
    mono_table = print_table(["corruption", *checks], "lrrrrr",
                             [[name, *("yes" if c[k] else "no" for k in checks)] for name, c in mono.items()])
    mono_notes = ["Over levels 0-4, strictly rising (FD, KID, perceptual distance: required) or not rising "
                  "(precision, recall: expected, not required).",
                  "Required rises that did not hold: " + (", ".join(failed) if failed else "none") + "."]
    print("\n".join(mono_notes))

    # 3. steps: the embedded model on the distribution captions
    from diffusers import DiffusionPipeline

    from studio_core.models import EMBEDDED_MODEL_DIR

    pipe = DiffusionPipeline.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True).to(args.device)
    pipe.set_progress_bar_config(disable=True)

    def make(captions: list[str], steps: int) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        images = generate(pipe, [(c, i) for i, c in enumerate(captions)], batch=BATCH, num_inference_steps=steps,
                          guidance_scale=GUIDANCE)
        return images, time.perf_counter() - t

    t0 = time.perf_counter()
    dist_caps = distribution_captions(ds.captions, ds.held_out, plan.dist_n)
    generate(pipe, [(dist_caps[0], 0)], num_inference_steps=2, guidance_scale=GUIDANCE)  # untimed warm-up
    generated = {}
    for steps in plan.steps:
        generated[steps] = make(dist_caps, steps)
        raw[f"{steps} steps: generation seconds"] = [generated[steps][1]]
        print(f"{steps} steps generated in {generated[steps][1]:.0f} s", file=sys.stderr, flush=True)
    phase_done("generation (steps)", t0)

    # 5. cost, measured first so that nothing in this process has the real features of its cache yet
    t0 = time.perf_counter()
    cost_images = generated[plan.steps[0]][0]
    with tempfile.TemporaryDirectory() as tmp:
        for f in (ROOT / ".cache").glob(f"emoji{SIZE}-*.npz"):  # the rendered data set, not its features
            (Path(tmp) / f.name).symlink_to(f)
        calls = []
        for _ in range(2):
            t = time.perf_counter()
            distribution_scores(cost_images, dist_caps, SIZE, Path(tmp))
            calls.append(time.perf_counter() - t)
        kept = sorted(Path(tmp).glob("emoji-features-*.npz"))
        cache_file = f"{kept[0].name} ({kept[0].stat().st_size / 1024:.0f} KiB)" if kept else "(none written)"
    raw["cost: distribution_scores seconds, first and second call"] = calls
    measured["cost_seconds"] = {"first": calls[0], "second": calls[1], "images": len(cost_images),
                                "cache_file": cache_file}
    phase_done("cost", t0)

    # 3 (cont.) scores and the two fidelity measures on the same images
    t0 = time.perf_counter()
    step_scores, agree, hits = {}, {}, {"c1": [], "c5": [], "f1": [], "f5": []}
    for steps, (images, _) in generated.items():
        s = distribution_scores(images, dist_caps, SIZE, ROOT / ".cache")
        c1, c5 = classifier_hits(net, images, dist_caps)
        ranks = np.asarray(fidelity_index.ranks(images, dist_caps))
        f1, f5 = ranks < 1, ranks < 5
        for key, v in zip(("c1", "c5", "f1", "f5"), (c1, c5, f1, f5)):
            hits[key].append(v)
        agree[str(steps)] = {"top1": agreement(c1, f1), "top5": agreement(c5, f5)}
        step_scores[steps] = {**{k: v for k, v in s.items() if k != "dist_method"}, "fidelity_top1": float(f1.mean()),
                              "fidelity_top5": float(f5.mean())}
    pooled = {k: np.concatenate(v) for k, v in hits.items()}
    agree["pooled"] = {"top1": agreement(pooled["c1"], pooled["f1"]), "top5": agreement(pooled["c5"], pooled["f5"])}
    measured["steps"] = step_scores
    phase_done("scores (steps)", t0)

    print(f"\n## steps ({plan.dist_n} distribution captions)")
    steps_table = print_table(
        ["steps", "FD-emoji", "KID-emoji ×1000", "precision", "recall", "classifier top-1", "classifier top-5",
         "thumbnail top-1", "thumbnail top-5", "generation s"], "rrrrrrrrrr",
        [[str(st), f"{s['fd_emoji']:.3f}", kid_text(s["kid_emoji"], s["kid_emoji_std"]), f"{s['precision_emoji']:.3f}",
          f"{s['recall_emoji']:.3f}", f"{s['dist_classifier_top1']:.1%}", f"{s['dist_classifier_top5']:.1%}",
          f"{s['fidelity_top1']:.1%}", f"{s['fidelity_top5']:.1%}", f"{generated[st][1]:.0f}"]
         for st, s in step_scores.items()])
    steps_notes = [f"{plan.dist_n} images, one per distribution caption (`emoji_metrics.distribution_captions`: "
                   "training captions spread evenly over the sorted split), seed = caption index, scored by "
                   "`emoji_metrics.distribution_scores` against the training renders (the studio's own figures).",
                   "Classifier: the feature network's head ranks the caption's class top-1 / in the top-5. "
                   "Thumbnail: the caption's own render is the nearest / among the 5 nearest of all renders in "
                   "16x16 thumbnail space (`PromptFidelityIndex`, the model card's prompt fidelity)."]
    print("\n## agreement of classifier and thumbnail fidelity (same images)")
    agree_table = print_table(
        ["steps", "top-1: same verdict", "top-1: both hit", "top-1 kappa", "top-5: same verdict", "top-5: both hit",
         "top-5 kappa"], "rrrrrrr",
        [[k, f"{a['top1']['same_verdict']:.1%}", f"{a['top1']['both_hit']:.1%}", f"{a['top1']['kappa']:.2f}",
          f"{a['top5']['same_verdict']:.1%}", f"{a['top5']['both_hit']:.1%}", f"{a['top5']['kappa']:.2f}"]
         for k, a in agree.items()])
    agree_notes = ["Per image, each measure says hit or miss; 'same verdict' is the share where both say the same "
                   "(both hit or both miss), 'both hit' the share where both hit, kappa is Cohen's kappa (agreement "
                   "beyond chance: 0 = chance, 1 = always the same). 'pooled' takes the images of every step count."]

    # 4. sample size: one larger set at one step count, subsampled
    t0 = time.perf_counter()
    sample_images, sample_secs = make(distribution_captions(ds.captions, ds.held_out, plan.sample_total),
                                      plan.sample_steps)
    raw[f"sample set ({plan.sample_total} images, {plan.sample_steps} steps): generation seconds"] = [sample_secs]
    fake = net.features(sample_images)
    mu_r, s_r = feature_stats(train_feats)
    by_n = {}
    for n in plan.sample_ns:
        fds, kids = [], []
        for seed in range(plan.seeds):
            sub = fake[np.random.default_rng(seed).permutation(len(fake))[:n]]
            fds.append(frechet_distance(mu_r, s_r, *feature_stats(sub)))
            kids.append(kid(train_feats, sub, subsets=plan.kid_subsets, subset_size=DIST_KID_SUBSET_SIZE,
                            seed=seed)[0])
        by_n[n] = {"fd": fds, "kid": kids}
        raw[f"sample n={n}: FD per seed"], raw[f"sample n={n}: KID x1000 per seed"] = fds, [k * 1e3 for k in kids]
    measured["sample_size"] = by_n
    phase_done("sample size", t0)

    chosen, reason = size_verdict(by_n, plan)
    print(f"\n## sample size ({plan.sample_total} images at {plan.sample_steps} steps, subsampled)")
    size_table = print_table(
        ["n", "FD-emoji mean ± std", "FD std / mean", f"FD / FD at n={plan.sample_total}",
         "KID-emoji ×1000 mean ± std", "KID std / mean"], "rrrrrr",
        [[str(n), mean_std(v["fd"]), f"{np.std(v['fd']) / np.mean(v['fd']):.1%}",
          f"{np.mean(v['fd']) / np.mean(by_n[plan.sample_total]['fd']):.2f}",
          kid_text(np.mean(v["kid"]), np.std(v["kid"])), f"{np.std(v['kid']) / abs(np.mean(v['kid'])):.0%}"]
         for n, v in by_n.items()])
    size_notes = [f"One set of {plan.sample_total} generated images ({plan.sample_total} distribution captions, "
                  f"{plan.sample_steps} steps), subsampled without replacement to n with {plan.seeds} seeds; mean ± "
                  "std over the seeds, against the full training renders. Subsamples of one set overlap, more so as n "
                  "nears the set's size, so the spread there understates that of independent sets (about "
                  "sqrt(1 - n/set size) for a mean); the last row is the whole set.", reason]
    print(reason)

    print("\n## cost of distribution_scores")
    cost_table = print_table(
        ["call", "images", "seconds"], "lrr",
        [["first: real-set features computed and written", str(len(cost_images)), f"{calls[0]:.2f}"],
         ["second: real-set features from the process cache", str(len(cost_images)), f"{calls[1]:.2f}"]])
    cost_notes = ["Wall time of `emoji_metrics.distribution_scores` (features of the set, FD, KID, precision/recall, "
                  "classifier), generation excluded, the network already loaded. The real set's features are kept "
                  f"in the study's `cache/` as `emoji-features-<weights digest 12>-<size>.npz` (here {cache_file}) "
                  "and in the process: a new process reads the file instead of recomputing."]

    tables = [("Real vs real, and corruptions", table, main_notes),
              ("Monotone over the corruption levels", mono_table, mono_notes),
              ("Distribution metrics by sampling steps", steps_table, steps_notes),
              ("Agreement of classifier and thumbnail fidelity", agree_table, agree_notes),
              ("FD and KID by sample size", size_table, size_notes),
              ("Cost of the distribution metrics", cost_table, cost_notes)]
    phases["total"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal: {phases['total']:.0f} s", file=sys.stderr)
    publish("distribution_validation", setup, raw, table, setup_text=setup_text,
            notes=[f"Tables, in order: {'; '.join(f'({i + 1}) {t[0]}' for i, t in enumerate(tables))}.", *main_notes,
                   *mono_notes[1:], reason],
            tables=[{**t, "title": title} for title, t, _ in tables],
            card_tables=[card_table(title, t, notes) for title, t, notes in tables],
            agreement=agree, chosen_sizes={"fd_kid_n": int(chosen), "reason": reason},
            measurements=measured, phase_seconds=phases, quick=args.quick)


if __name__ == "__main__":
    main()
