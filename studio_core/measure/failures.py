"""Why a run failed, in words a user can act on: out of memory, a full disk, a model that will not load, a lost
model."""

from __future__ import annotations

import re

from studio_core.errors import BadOutput, KnobUnsupported, ModelLoadError, SpecError
from studio_core.spec import RunSpec
from studio_core.store.space import is_write_error, write_error_reason

__all__ = ["failure_reason", "is_out_of_memory", "load_failure_reason", "lost_model_reason", "model_problem",
           "out_of_memory_reason"]


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation the device refused: CUDA's ``OutOfMemoryError``, Python's ``MemoryError``, or the
    ``RuntimeError`` of PyTorch's CPU allocator ("DefaultCPUAllocator: can't allocate memory")."""
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or ("defaultcpuallocator" in text and "allocate" in text)


def _gib(n_bytes: int) -> str:
    """Bytes as GiB with one decimal."""
    return f"{n_bytes / 2**30:.1f} GiB"


def out_of_memory_reason(exc: BaseException, spec: RunSpec, device: str) -> str:
    """Starts "out of memory"; says how much was asked for, at what size, and what to make smaller."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[enforce fail at [^\]]*\] err == 0\. ", "", text)  # the CPU allocator's C++ prefix
    asked = re.search(r"tried to allocate (\d+) bytes", text, re.IGNORECASE)
    asked_cuda = re.search(r"tried to allocate ([\d.]+ [KMGT]iB)", text, re.IGNORECASE)
    size = _gib(int(asked[1])) if asked else asked_cuda[1] if asked_cuda else None
    batch = spec.batch_size or spec.n_images
    what = (f"{spec.n_images} image{'s' if spec.n_images != 1 else ''} of {spec.height}x{spec.width} px, "
            f"{batch} per pipeline call")
    hint = ("Try a smaller height/width, a smaller batch_size (images per pipeline call) or fewer prompts x "
            "seeds, or fp16/bf16 precision")
    if (spec.knobs.get("attention_backend") or {}).get("backend") == "math":
        hint += "; the 'math' attention kernel holds the whole attention matrix, the default kernel does not"
    where = "GPU memory" if device.startswith("cuda") else "RAM"
    asked_text = f"a single allocation of {size} was refused" if size else "an allocation was refused"
    return f"out of memory ({where}): {asked_text} for {what}. {hint}. [{text}]"


def load_failure_reason(exc: ModelLoadError, model_path: str) -> str:
    """What failed to load, which file, why, and what to do. Loaders wrap the real cause (a truncated
    safetensors header, say) in generic errors; the reason named is the innermost one."""
    chain, seen = [], set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    root = next((c for c in reversed(chain) if not isinstance(c, UnicodeDecodeError)), exc)
    files = re.findall(re.escape(model_path.rstrip("/")) + r"/[^'\"\s]+", " ".join(map(str, chain)))
    if root is exc:
        return f"{exc}. Check the model's files, or choose another model"
    broken = f"{files[0]} cannot be read" if files else "a file cannot be read"
    return (f"could not load the pipeline in {model_path}: {broken} ({type(root).__name__}: {root}). "
            f"Restore or re-copy {'that file' if files else 'the folder'}, or choose another model")


def failure_reason(exc: Exception, spec: RunSpec, device: str, model_path: str, data_dir: str | None = None) -> str:
    """The recorded reason of a failed run: out of memory, a write the disk refused (full, read-only, failing:
    which folder and what to do; ``data_dir`` is the study folder), load failure, a refused input, or the
    exception."""
    if is_out_of_memory(exc):
        return out_of_memory_reason(exc, spec, device)
    if data_dir is not None and is_write_error(exc):
        return write_error_reason(exc, data_dir)
    if isinstance(exc, ModelLoadError):
        return load_failure_reason(exc, model_path)
    if isinstance(exc, (SpecError, KnobUnsupported, BadOutput)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def model_problem(model: str) -> str | None:
    """Why ``model`` does not resolve to a pipeline folder now, or None when it does."""
    from studio_core.models import check_pipeline_folder, resolve_model

    try:
        check_pipeline_folder(resolve_model(model))
    except ModelLoadError as exc:
        return str(exc)
    return None


def lost_model_reason(model: str, path: str) -> str:
    """A model that ran earlier in the session and no longer resolves: what is wrong and what to do."""
    problem = model_problem(model) or f"{path} is no longer a pipeline folder"
    return (f"model {model} failed to load: {problem}. It ran earlier in this session, so its folder was moved, "
            "deleted or changed since: restore it, or choose another model")
