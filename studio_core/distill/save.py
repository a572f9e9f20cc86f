"""Saving a student: a complete pipeline folder (full student), or diffusers-format LoRA weights (``--lora``).

Both get ``studio_defaults.json``: the teacher's size and domain, 4 steps, and the guidance the student was
trained around (evaluation replaces it with the one it measures best).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from studio_core.embedded.training.recipe import strip_local_paths

__all__ = ["LORA_FILE", "copy_tokenizer_files", "lcm_scheduler", "save_student", "set_student_defaults"]

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: load_lora_weights(folder) finds it


def lcm_scheduler(teacher_scheduler, ddim_steps: int):
    """LCMScheduler on the teacher's noise schedule, sampling on the grid the student was trained on."""
    from diffusers import LCMScheduler

    cfg = {k: v for k, v in dict(teacher_scheduler.config).items() if not k.startswith("_")}
    return LCMScheduler.from_config({**cfg, "original_inference_steps": ddim_steps, "timestep_scaling": 10.0})


def set_student_defaults(out: Path, defaults: dict, guidance: float, steps: int = 4) -> None:
    """The student's ``studio_defaults.json``: ``steps`` and ``guidance``, the teacher's size and ``domain``
    (``defaults`` as the distillation read the teacher)."""
    d = {"guidance_scale": guidance, "num_inference_steps": steps,
         **{k: defaults[k] for k in ("height", "width") if defaults.get(k)}}
    if defaults.get("domain"):
        d["domain"] = defaults["domain"]
    (out / "studio_defaults.json").write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")


def save_student(out: Path, pipe, trainer, recipe, defaults: dict, lora_rank: int, teacher_path: str | Path) -> None:
    """Write the student into ``out`` (``pipe`` is the loaded teacher; it is left holding the student)."""
    if lora_rank:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(trainer.student))
        type(pipe).save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    else:
        unet = (trainer.target or trainer.student).eval().requires_grad_(False).to("cpu")
        pipe.register_modules(unet=unet, scheduler=lcm_scheduler(pipe.scheduler, recipe.ddim_steps))
        pipe.save_pretrained(out, safe_serialization=True)
        strip_local_paths(out)
        copy_tokenizer_files(teacher_path, out)
    guidance = 1.0 if lora_rank else recipe.w_min + 1 + (recipe.w_max - recipe.w_min) / 2  # LoRA: no w input
    set_student_defaults(out, defaults, guidance)


def copy_tokenizer_files(teacher_path: str | Path, out: Path) -> None:
    """The tokenizer folders as the teacher ships them (``save_pretrained`` may rewrite or drop files)."""
    for sub in ("tokenizer", "tokenizer_2"):
        src = Path(teacher_path) / sub
        if src.is_dir():
            shutil.rmtree(out / sub, ignore_errors=True)
            shutil.copytree(src, out / sub)
