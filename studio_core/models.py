"""Find and load diffusion pipelines: an embedded model by name, a diffusers folder, or the local HF cache.

Nothing is ever downloaded: every load goes through ``DiffusionPipeline.from_pretrained(...,
local_files_only=True)``, the same call for the embedded model and for users' own folders. A folder
is checked before loading, so a missing or broken one fails with an error that names the path and
what is missing rather than a traceback from deep inside diffusers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from studio_core.errors import ModelLoadError

__all__ = [
    "EMBEDDED_MODELS",
    "EMBEDDED_MODEL_DIR",
    "EMBEDDED_MODEL_NAME",
    "MAX_MODEL_CHARS",
    "SUPPORTED_PIPELINES",
    "WEIGHT_SUFFIXES",
    "ModelLoadError",
    "PipelineFacts",
    "check_pipeline_folder",
    "family_name",
    "lineage_text",
    "list_cached_pipelines",
    "load_pipeline",
    "model_defaults",
    "model_defaults_with_sources",
    "resolve_model",
    "shipped_embedded_models",
    "student_info",
    "unsupported_reason",
]

# The models this project trains and ships, by name (the default first): a name resolves to its folder.
# emoji-sd-lcm is emoji-sd's consistency-distilled student (``studio_core.distill``).
EMBEDDED_MODELS: dict[str, Path] = {name: Path(__file__).resolve().parent / "embedded" / name
                                    for name in ("emoji-sd", "emoji-flux", "emoji-sd-lcm")}
EMBEDDED_MODEL_NAME = "emoji-sd"  # the default model of the app, the CLI and a spec
EMBEDDED_MODEL_DIR = EMBEDDED_MODELS[EMBEDDED_MODEL_NAME]
# how each is made, for the error when its folder is not in this checkout
_TRAINING_COMMANDS = {"emoji-sd": "python -m studio_core.embedded.training --recipe cpu --out {folder}",
                      "emoji-flux": "python -m studio_core.embedded.training flux --recipe cpu --out {folder}",
                      "emoji-sd-lcm": "python -m studio_core distill --method lcm --teacher emoji-sd --recipe cpu "
                                      "--out {folder}"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")  # every weights file diffusers' loader reads
MAX_MODEL_CHARS = 4096  # Linux's PATH_MAX: no longer path can be opened, so no longer name is looked up


@dataclass(frozen=True)
class PipelineFacts:
    """What the studio relies on about one pipeline class, read from diffusers 0.42.1 so that checking a spec
    needs no torch: its ``__call__`` defaults, a latent size it hard-codes, and a step minimum with its reason.
    ``tests/test_models.py`` checks the table against the installed diffusers."""

    num_inference_steps: int
    guidance_scale: float
    default_sample_size: int | None = None  # latent px when the pipeline fixes it (the denoiser config has none)
    min_steps: int = 1
    min_steps_reason: str = ""


# The text-to-image pipelines the studio drives, each tested on a tiny pipeline built from config
# (tests/test_families.py): every ``__call__`` takes prompt, num_inference_steps, guidance_scale, height,
# width, generator and output_type. Others are refused before loading (``unsupported_reason``).
SUPPORTED_PIPELINES: dict[str, PipelineFacts] = {
    "StableDiffusionPipeline": PipelineFacts(50, 7.5),
    "StableDiffusionXLPipeline": PipelineFacts(50, 5.0),
    "PixArtAlphaPipeline": PipelineFacts(
        20, 4.5, min_steps=2,
        min_steps_reason="at 1 step PixArtAlphaPipeline takes the scheduler's second output (its one-step "
                         "branch for distilled models), which its own DPM-Solver does not return"),
    "StableDiffusion3Pipeline": PipelineFacts(28, 7.0),
    "FluxPipeline": PipelineFacts(28, 3.5, default_sample_size=128),
    "SanaPipeline": PipelineFacts(20, 4.5),
}
_TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def check_pipeline_folder(folder: str | Path) -> dict:
    """Validate a diffusers pipeline folder without loading weights; returns its model_index.json."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelLoadError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise ModelLoadError(f"model path is not a folder: {folder}")
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{index_file} is not valid JSON: {exc}") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ModelLoadError(f"{index_file} has no _class_name: not a pipeline index")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ModelLoadError(f"{folder}: component '{name}' is listed in model_index.json but {sub} is missing")
        files = [p.name for p in sub.iterdir()]
        if name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            if not ({"vocab.json", "merges.txt"} <= set(files) or "tokenizer.json" in files or
                    any(f.endswith(".model") for f in files)):
                raise ModelLoadError(f"{sub} has no tokenizer files (vocab.json + merges.txt or tokenizer.json)")
            continue
        if name == "scheduler" or name.startswith("scheduler"):
            if "scheduler_config.json" not in files:
                raise ModelLoadError(f"{sub} is missing scheduler_config.json")
            continue
        if "config.json" not in files and not any(f.endswith(".json") for f in files):
            raise ModelLoadError(f"{sub} is missing config.json")
        if spec[0] in ("diffusers", "transformers") and not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            raise ModelLoadError(f"{sub} has no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    return index


def unsupported_reason(index: dict) -> str | None:
    """Why the studio cannot drive the pipeline of this ``model_index.json``, or None when it can."""
    cls = index.get("_class_name", "")
    if cls in SUPPORTED_PIPELINES:
        return None
    kind = ("an unconditional pipeline (no text encoder, so no prompt to time)"
            if not any(isinstance(index.get(k), list) and index[k][0] for k in _TEXT_ENCODERS)
            else "not one of the text-to-image pipelines the studio is tested on")
    return f"{cls or 'this pipeline'} is {kind}; supported: {', '.join(SUPPORTED_PIPELINES)}"


def model_defaults_with_sources(folder: str | Path) -> tuple[dict, dict]:
    """The model's defaults (steps, guidance, height, width) and where each came from: the folder's
    ``studio_defaults.json`` where it says, else the pipeline class's own ``__call__`` defaults. Height and
    width are None unless the file sets them: the spec then takes the model's native size."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    cls = index.get("_class_name", "")
    facts = SUPPORTED_PIPELINES.get(cls)
    values = {"num_inference_steps": facts.num_inference_steps if facts else None,
              "guidance_scale": facts.guidance_scale if facts else None, "height": None, "width": None}
    sources = {k: f"{cls}.__call__" for k in ("num_inference_steps", "guidance_scale")} if facts else {}
    own = folder / "studio_defaults.json"
    if own.is_file():
        documented = {k: v for k, v in json.loads(own.read_text(encoding="utf-8")).items() if k in values}
        values.update(documented)
        sources.update({k: "studio_defaults.json" for k in documented})
    return values, sources


def model_defaults(folder: str | Path) -> dict:
    """The model's defaults: ``studio_defaults.json`` where it has one, else its pipeline's own."""
    return model_defaults_with_sources(folder)[0]


# how a distillation method is named for people, in a lineage line
_METHOD_NAMES = {"lcm": "LCM", "lcm-lora": "LCM-LoRA"}


def student_info(folder: str | Path) -> dict | None:
    """The ``distillation`` record of a student's ``training_report.json`` (method, teacher, minutes, device,
    device_name, steps, as ``studio_core.distill`` writes it), or None for a model that is not a student or
    whose report cannot be read. Reads one JSON file: no torch."""
    try:
        report = json.loads((Path(folder) / "training_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no report (not a student), unreadable, not UTF-8, not JSON
        return None
    record = report.get("distillation") if isinstance(report, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("teacher"), str) or not record["teacher"].strip():
        return None
    return dict(record)


def family_name(model: str) -> str:
    """A model as its family is named: the last folder of a path or repo id (``/models/sd15/`` -> ``sd15``,
    ``org/name`` -> ``name``), an embedded name as it is. A student's family is its teacher's, so the teacher's
    runs and the students' share one name however each was given."""
    parts = [p for p in re.split(r"[\\/]", str(model).strip()) if p not in ("", ".", "..", "~")]
    return parts[-1] if parts else str(model).strip()


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    return f"{minutes:.0f} min" if minutes < 100 else f"{minutes / 60:.1f} h"


def lineage_text(info: dict) -> str:
    """A student in one line, for hovers and cards: "student of emoji-sd (LCM), distilled in 38 min on CPU
    Intel(R) Xeon(R) Processor (2 threads)"; the time and device are left out where the record lacks them."""
    method = str(info.get("method") or "")
    text = f"student of {family_name(info['teacher'])}" + (
        f" ({_METHOD_NAMES.get(method, method.upper())})" if method else "")
    minutes = info.get("minutes")
    if isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and 0 <= minutes < float("inf"):
        text += f", distilled in {_duration(float(minutes))}"
    device = info.get("device_name") or {"cpu": "CPU", "cuda": "GPU"}.get(str(info.get("device")), info.get("device"))
    if device:
        text += f"{'' if 'distilled' in text else ', distilled'} on {device}"
    return text


def shipped_embedded_models() -> list[str]:
    """The names of the embedded models whose folder this checkout holds, the default first."""
    return [name for name, folder in EMBEDDED_MODELS.items() if (folder / "model_index.json").is_file()]


def _embedded_names() -> str:
    return ", ".join(f"'{name}'" for name in EMBEDDED_MODELS)


def resolve_model(model: str | Path) -> str:
    """An embedded model's name, a folder path, or a repo id in the local HF cache -> a loadable path."""
    text = str(model).strip()
    if not text:
        raise ModelLoadError(f"no model given: use an embedded model ({_embedded_names()}), a diffusers folder, "
                             "or a cached repo id")
    shown = text if len(text) <= 40 else f"{text[:40]}..."  # quoted with repr: a NUL or escape shows as such
    if len(text) > MAX_MODEL_CHARS:
        raise ModelLoadError(f"model name {shown!r} has {len(text):,} characters: at most {MAX_MODEL_CHARS} "
                             "(the longest path the system opens)")
    if text in EMBEDDED_MODELS:
        folder = EMBEDDED_MODELS[text]
        if not (folder / "model_index.json").is_file():  # e.g. a checkout from before the model was trained
            train = _TRAINING_COMMANDS[text].format(folder=folder)
            raise ModelLoadError(f"the embedded model '{text}' is not in this checkout: {folder} has no "
                                 f"model_index.json (train it with `{train}`)")
        return str(folder)
    path = Path(text).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name part over 255 bytes, text the file system cannot encode
        reason = getattr(exc, "strerror", None) or exc
        raise ModelLoadError(f"model {shown!r} is not a usable path ({reason})") from None
    if exists or text.startswith((".", "/", "~")) or "\\" in text:
        return str(path)
    cached = {repo: p for repo, p in list_cached_pipelines()}
    if text in cached:
        return cached[text]
    raise ModelLoadError(
        f"model {shown!r} is neither an embedded model ({_embedded_names()}), an existing folder, nor a "
        f"pipeline in the local Hugging Face cache (found: {sorted(cached) or 'none'}); nothing is downloaded"
    )


def list_cached_pipelines() -> list[tuple[str, str]]:
    """(repo id, snapshot folder) of every diffusers pipeline in the local Hugging Face cache."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or an unreadable one: nothing cached
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            if (Path(rev.snapshot_path) / "model_index.json").is_file():
                found.append((repo.repo_id, str(rev.snapshot_path)))
                break
    return sorted(found)


def _quiet_loading_bars() -> None:
    """Loading local files takes a second; per-component progress bars only clutter logs and sweeps."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()  # e.g. "CLIPImageProcessor requires torchvision": not used by these pipelines


# pipeline components by role, for per-component dtypes
_COMPONENT_ROLES = {"denoiser": ("unet", "transformer", "prior"),
                    "text_encoder": ("text_encoder", "text_encoder_2", "text_encoder_3"), "vae": ("vae",)}


def load_pipeline(model: str | Path = EMBEDDED_MODEL_NAME, device: str = "cpu", dtype=None,
                  component_dtypes: dict | None = None):
    """Load a pipeline from local files only, with a clear ``ModelLoadError`` when it cannot be.

    ``component_dtypes`` ({"denoiser" | "text_encoder" | "vae": torch dtype}) loads those components in
    their own dtype through diffusers' per-component ``dtype`` mapping; the others take ``dtype``."""
    from diffusers import DiffusionPipeline

    path = resolve_model(model)
    index = check_pipeline_folder(path)
    if component_dtypes:
        per = {name: dt for role, dt in component_dtypes.items() for name in _COMPONENT_ROLES[role] if name in index}
        dtype = {**({"default": dtype} if dtype is not None else {}), **per}
    _quiet_loading_bars()
    try:
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # corrupt weights, mismatched configs: name the folder and the cause
        raise ModelLoadError(f"could not load the pipeline in {path}: {type(exc).__name__}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
