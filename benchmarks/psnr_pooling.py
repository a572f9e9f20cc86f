"""Mean-of-dB PSNR against pooled PSNR on one sampler shootout of the embedded model (issue 18, item 3).

On a temporary study the engine runs each sampler (8 steps, 2 prompts x 2 seeds, 1 timed repeat) and
scores it against the studio's reference (DPM++ 2M at 200 steps unless ``--reference-steps``). For each
run it prints the figure older runs stored (mean of per-image dB, identical images as 100 dB), the pooled
figure now stored as ``psnr``, the per-image range and the identical count; with scikit-image installed,
also the stored SSIM (torchmetrics, full map) beside scikit-image's valid-region SSIM of the same images.
Nothing is saved. Run: ``python benchmarks/psnr_pooling.py [--samplers ...] [--steps 8]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio_core.measure.engine import Engine  # noqa: E402
from studio_core.prompts import PROMPT_SETS  # noqa: E402
from studio_core.store.store import RunStore  # noqa: E402

SAMPLERS = ["DDIM", "Euler", "Euler a", "DPM++ 2M", "UniPC", "DPM++ SDE"]


def _skimage_ssim(images, reference) -> float | None:
    """Mean over images of scikit-image's SSIM (valid region, Gaussian 11x11, sigma 1.5); None without it."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    return sum(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=-1) for a, b in zip(images, reference)) / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samplers", nargs="+", default=SAMPLERS)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--reference-steps", type=int, default=None, help="the reference's steps (default: the studio's)")
    args = p.parse_args()

    # 1. the study: a temporary folder, the engine, two prompts of emoji-4
    prompts = PROMPT_SETS["emoji-4"][:2]
    reference = {"steps": args.reference_steps} if args.reference_steps else None
    with tempfile.TemporaryDirectory(prefix="psnr-pooling-") as study:
        engine = Engine(RunStore(study))
        rows = []
        # 2. one run per sampler, scored by the engine
        for sampler in args.samplers:
            r = engine.run({"prompts": prompts, "seeds": args.seeds, "steps": args.steps, "sampler": sampler,
                            "repeats": 1}, reference=reference)
            if r.status != "ok":
                print(f"{sampler}: {r.status}: {r.error}", file=sys.stderr)
                continue
            row = engine.store.get_run(r.run_id)
            images = engine.store.load_images(row["images"])
            ref_images = engine.store.reference_images(row["reference_id"])
            rows.append((sampler, row, _skimage_ssim(images, ref_images)))
            print(f"{sampler} done", file=sys.stderr, flush=True)
        ref = engine.store.reference_config(rows[0][1]["reference_id"]) if rows else {}

    # 3. the table
    n = len(prompts) * len(args.seeds)
    print(f"# PSNR: mean of per-image dB (older runs) against pooled MSE (now)\nsetup: emoji-sd, {args.steps} "
          f"steps, {len(prompts)} prompts x {len(args.seeds)} seeds = {n} images per run, 1 timed repeat; reference "
          f"{(ref or {}).get('sampler')} at {(ref or {}).get('steps')} steps, same prompts and seeds")
    print("| sampler | PSNR, mean of per-image dB | PSNR, pooled MSE | pooled − mean | per image (dB) | identical "
          "| SSIM (torchmetrics) | SSIM (scikit-image) |")
    print("|---|---|---|---|---|---|---|---|")
    for sampler, row, sk in rows:
        differ = row.get("psnr_min") is not None
        spread = f"{row['psnr_min']:.2f}–{row['psnr_max']:.2f}" if differ else "none differ"
        print(f"| {sampler} | {row['psnr_image_mean']:.2f} | {row['psnr']:.2f} | "
              f"{row['psnr'] - row['psnr_image_mean']:+.2f} | {spread} | {row['identical_images']} of {n} | "
              f"{row['ssim']:.4f} | {'n/a' if sk is None else f'{sk:.4f}'} |")


if __name__ == "__main__":
    main()
