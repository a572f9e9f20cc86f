"""The ``distill`` command's arguments and entry (torch is imported only when it runs).

    python -m studio_core distill --method lcm --teacher emoji-sd --out FOLDER [--recipe cpu|gpu|tiny]
    python -m studio_core distill --method lcm --teacher SD_FOLDER --data IMAGES_WITH_CAPTIONS --out FOLDER
    python -m studio_core distill --method lcm --teacher ... --lora 16 --out FOLDER   # LCM-LoRA
    python -m studio_core distill card FOLDER                                        # README.md from its reports
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studio_core.errors import SpecError

__all__ = ["METHODS", "add_arguments", "run"]

METHODS = ("lcm",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["train", "card"], default="train",
                   help="train a student (default), or regenerate the card of FOLDER")
    p.add_argument("folder", nargs="?", help="the student folder (for `card`)")
    p.add_argument("--method", choices=METHODS, default="lcm", help="latent consistency distillation")
    p.add_argument("--teacher", default="emoji-sd",
                   help="an embedded model name, an SD 1.5- or SDXL-shaped diffusers folder, or a cached repo id")
    p.add_argument("--out", type=Path, help="the student folder to write (a kill leaves a checkpoint there; the same "
                                            "command resumes from it)")
    p.add_argument("--data", help="a folder of images with captions (metadata.jsonl, or IMAGE.txt beside each image; "
                                  "docs/distillation.md); default: the embedded emoji data for emoji-sd")
    p.add_argument("--recipe", choices=["cpu", "gpu", "tiny"], default=None,
                   help="named settings (default: gpu where CUDA is available, else cpu)")
    p.add_argument("--lora", type=int, default=0, metavar="RANK", help="train LCM-LoRA adapters of this rank instead "
                                                                        "of a full student")
    p.add_argument("--steps", type=int, help="override the recipe's steps")
    p.add_argument("--batch", type=int, help="override the recipe's batch size")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--budget-minutes", type=float, help="override the recipe's time budget")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="where the rendered emoji data is kept")
    p.add_argument("--restart", action="store_true", help="discard a checkpoint in --out instead of resuming it")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation and gallery")


def run(a) -> int:
    from dataclasses import replace

    if a.action == "card":
        if not a.folder:
            raise SpecError("folder", None, "the student folder whose card to regenerate")
        from studio_core.distill.card import write_card

        if not (Path(a.folder) / "training_report.json").is_file():
            raise SpecError("folder", a.folder, "a student folder with training_report.json")
        print(write_card(Path(a.folder)))
        return 0
    if a.out is None:
        raise SpecError("--out", None, "the folder to write the student into")
    for name in ("steps", "batch"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise SpecError(f"--{name}", getattr(a, name), "a whole number of at least 1")
    if a.lora < 0:
        raise SpecError("--lora", a.lora, "a LoRA rank of at least 1 (or leave it out for a full student)")
    import torch

    from studio_core.distill.run import DISTILL_RECIPES, distill

    name = a.recipe or ("gpu" if torch.cuda.is_available() and (a.device or "cuda").startswith("cuda") else "cpu")
    recipe = DISTILL_RECIPES[name]
    overrides = {k: v for k, v in (("steps", a.steps), ("batch", a.batch), ("lr", a.lr),
                                   ("budget_minutes", a.budget_minutes)) if v is not None}
    recipe = replace(recipe, **overrides)
    report = distill(a.teacher, a.out, recipe, data=a.data, lora_rank=a.lora, cache_dir=a.cache_dir, device=a.device,
                     restart=a.restart, evaluate_after=not a.no_eval)
    d = report["distillation"]
    print(f"student of {d['teacher']} ({d['method']}) in {a.out}: {d['steps']} steps in {d['minutes']:.1f} min on "
          f"{d['device_name']}")
    return 0
