"""Evaluation of a student after distillation: ``evaluation.json`` and ``gallery.png`` in its folder.

- Emoji-domain students (of the embedded emoji-sd): prompt fidelity (``studio_core/measure/fidelity.py``) on the
  teacher's fixed 200 training captions and its held-out captions, at each of the recipe's step counts, with the
  guidance chosen on half the sample at 4 steps; and the teacher on the same captions, measured here: at its
  default steps with its own sampler, and at 4 steps with its own sampler and with DPM++ 2M.
- Every student: a gallery, one row per setting: teacher at its default steps, teacher at 4 steps, student at
  4 steps, on the same prompts and seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from studio_core.embedded.training.recipe import log
from studio_core.prompts import GALLERY_PROMPTS

__all__ = ["EVALUATION_FILE", "evaluate_student", "load_student", "write_comparison_gallery"]

EVALUATION_FILE = "evaluation.json"
GALLERY_FILE = "gallery.png"
GALLERY_COLUMNS = 8


def load_student(out: Path, teacher_path: str | Path, lora_rank: int, ddim_steps: int):
    """The student as a pipeline: the folder itself, or (LoRA) the teacher with the adapters fused in."""
    from studio_core.distill.save import lcm_scheduler
    from studio_core.models import load_pipeline

    if not lora_rank:
        return load_pipeline(str(out))
    pipe = load_pipeline(str(teacher_path))
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    pipe.scheduler = lcm_scheduler(pipe.scheduler, ddim_steps)
    return pipe


def _teacher_fidelity(teacher, index, train_caps, held_caps, default_steps: int, guidance: float, size: int) -> list:
    """The teacher on the same captions: at its default steps with its own sampler, and at 4 steps with its own
    sampler and with DPM++ 2M (the multistep solver that does best at few steps on emoji-sd's shootout)."""
    from diffusers import DPMSolverMultistepScheduler

    from studio_core.embedded.training.evaluate import score_captions

    own = teacher.scheduler
    rows = []
    for sched, steps, held in ((own, default_steps, True), (own, 4, False),
                               (DPMSolverMultistepScheduler.from_config(own.config), 4, False)):
        teacher.scheduler = sched
        tr = score_captions(teacher, index, train_caps, steps, guidance, size)
        row = {"sampler": type(sched).__name__, "steps": steps, "guidance": guidance,
               "train": {"top1": tr.top1, "top5": tr.top5, "n": tr.n}}
        if held:
            h = score_captions(teacher, index, held_caps, steps, guidance, size)
            row["held_out"] = {"top1": h.top1, "top5": h.top5, "n": h.n}
        log(f"teacher {row['sampler']} {steps} steps: train top1 {tr.top1:.3f} top5 {tr.top5:.3f}")
        rows.append(row)
    teacher.scheduler = own
    return rows


def _rows(pipe, prompts: list[str], steps: int, guidance: float, size: int) -> np.ndarray:
    from studio_core.measure.generation import generate

    return generate(pipe, [(p, 0) for p in prompts], batch=64, num_inference_steps=steps, guidance_scale=guidance,
                    height=size, width=size)


def write_comparison_gallery(path: Path, rows: list[tuple[str, np.ndarray]], scale: int = 4) -> None:
    """Rows of images (each (N, s, s, 3) uint8) with a label strip above each row."""
    from PIL import Image, ImageDraw

    s = rows[0][1].shape[1] * scale
    n = rows[0][1].shape[0]
    label_h = 16
    canvas = Image.new("RGB", (n * s, len(rows) * (s + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        y = r * (s + label_h)
        draw.text((4, y + 2), label, fill=(0, 0, 0))
        for c, img in enumerate(imgs):
            canvas.paste(Image.fromarray(img).resize((s, s), Image.Resampling.NEAREST), (c * s, y + label_h))
    canvas.save(path)


def evaluate_student(out: Path, teacher_path: str | Path, tdef: dict, ds, recipe, lora_rank: int,
                     cache_dir: Path) -> dict:
    """Measure the student in ``out`` and write ``evaluation.json``, ``gallery.png`` and its guidance default.
    ``tdef``: the teacher's defaults as the distillation used them (steps, guidance, its size as height)."""
    from studio_core.distill.save import set_student_defaults
    from studio_core.models import load_pipeline

    size, t_steps, t_guid = int(tdef["height"]), int(tdef["num_inference_steps"]), float(tdef["guidance_scale"])
    student = load_student(out, teacher_path, lora_rank, recipe.ddim_steps)
    teacher = load_pipeline(str(teacher_path))
    sdef = json.loads((out / "studio_defaults.json").read_text(encoding="utf-8"))
    result: dict = {"size": size, "teacher_defaults": {"steps": t_steps, "guidance": t_guid,
                                                        "sampler": type(teacher.scheduler).__name__}}
    guidance = float(sdef["guidance_scale"])
    # a LoRA student has no guidance input: it learned the guided teacher, and a guidance above 1 would run
    # classifier-free guidance on it (two passes per step), so it is sampled at 1
    grid = (1.0,) if lora_rank else recipe.guidance_grid
    if sdef.get("domain") == "emoji":
        from studio_core.embedded.training.data import load_or_build
        from studio_core.embedded.training.evaluate import fidelity_captions, score_captions
        from studio_core.measure.fidelity import PromptFidelityIndex

        full = load_or_build(cache_dir, size)
        index = PromptFidelityIndex(full.images, full.captions)
        train_caps, held_caps = fidelity_captions(full, recipe.eval_captions)
        probe = train_caps[: max(1, len(train_caps) // 2)]
        sweep = {}
        for g in grid:
            r = score_captions(student, index, probe, 4, g, size)
            sweep[str(g)] = {"top1": r.top1, "top5": r.top5, "n": r.n, "steps": 4}
            log(f"student guidance {g}: top1 {r.top1:.3f} top5 {r.top5:.3f} ({r.n} captions, 4 steps)")
        guidance = max(grid, key=lambda g: (sweep[str(g)]["top5"], sweep[str(g)]["top1"]))
        by_steps = {}
        for steps in recipe.eval_steps:
            tr = score_captions(student, index, train_caps, steps, guidance, size)
            held = score_captions(student, index, held_caps, steps, guidance, size)
            by_steps[str(steps)] = {"train": {"top1": tr.top1, "top5": tr.top5, "n": tr.n},
                                    "held_out": {"top1": held.top1, "top5": held.top5, "n": held.n}}
            log(f"student {steps} steps: train top1 {tr.top1:.3f} top5 {tr.top5:.3f}; held-out top1 {held.top1:.3f} "
                f"top5 {held.top5:.3f}")
        result["fidelity"] = {
            "captions": "the teacher's fixed sample: 200 training captions (seeded draw) and its held-out captions",
            "guidance": guidance, "guidance_sweep": sweep, "student": by_steps,
            "teacher": _teacher_fidelity(teacher, index, train_caps, held_caps, t_steps, t_guid, size),
        }
    prompts = (GALLERY_PROMPTS if sdef.get("domain") == "emoji" else ds.captions)[:GALLERY_COLUMNS]
    rows = [(f"teacher, {t_steps} steps, guidance {t_guid:g}", _rows(teacher, prompts, t_steps, t_guid, size)),
            (f"teacher, 4 steps, guidance {t_guid:g}", _rows(teacher, prompts, 4, t_guid, size)),
            ("student, 4 steps, " + ("guidance 1 (LoRA)" if lora_rank else f"w {guidance - 1:g}"),
             _rows(student, prompts, 4, 1.0 if lora_rank else guidance, size))]
    write_comparison_gallery(out / GALLERY_FILE, rows, scale=max(1, 128 // size))
    result["gallery"] = {"prompts": prompts, "seed": 0, "rows": [label for label, _ in rows]}
    (out / EVALUATION_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    set_student_defaults(out, tdef, guidance, steps=4)
    return result
