"""The reference a run is scored against: its configuration, its key, and the stored images (made once).

Its identity (``reference_key``) is everything that changes its pixels: the model files' content
(``ModelInfo.fingerprint``), its configuration, the device type, the precision policy, and the torch and
diffusers versions. A reference made on the CPU is not reused for a CUDA run (the kernels differ), nor
one made under other library versions. On CUDA a reference runs in true fp32 (``tf32_off``): PyTorch's
cuDNN convolutions default to TF32, whose 10-bit mantissa would make the "exact" target itself approximate.

Guidance: the reference is made at one guidance, the model's default (or the study's ``reference.guidance``),
not at each run's. Guidance is a knob here: at 1 or below it skips the unconditional pass, half the work.
A same-guidance reference would answer "how far is this run from the exact image at its own guidance",
isolating the other knobs' error but scoring a CFG-off run as perfect at enough steps, so the cheapest
guidance would look free. A fixed reference answers the question the studio asks of every knob: "how far
is this run from the baseline image", so a guidance sweep measures its distance from the model's default
look. The card names the reference's guidance ("reference at guidance g") whenever it is not the run's.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager

import numpy as np

from studio_core.errors import StoreError
from studio_core.knobs import KNOBS
from studio_core.measure.environment import environment, resolve_device
from studio_core.measure.generation import generate
from studio_core.measure.pipelines import PipelineCache, apply_knobs, call_kwargs, load_options, undo_knobs
from studio_core.spec import REFERENCE_DEFAULT, ModelInfo, RunSpec, resolve, scheduler_steps_reason
from studio_core.store.store import RunStore

__all__ = ["REFERENCE_PRECISION", "reference_for", "reference_key", "reference_spec", "tf32_off"]

REFERENCE_PRECISION = "fp32, TF32 off"  # the precision policy of every reference, part of its key


def reference_spec(spec: RunSpec, info: ModelInfo, reference: dict | None = None) -> RunSpec:
    """The reference configuration of a resolved spec: same model, prompts, seeds and resolution;
    a high-step solver, fp32, the model's default guidance (or ``reference["guidance"]``; not the run's,
    see the module docstring), no knobs. Its steps are capped where the scheduler can take them
    (``spec.scheduler_steps_reason``: 'leading' spacing ends before the last training timestep)."""
    ref = {**REFERENCE_DEFAULT, **(reference or {})}
    sampler = ref["sampler"]
    knob = KNOBS["sampler"]
    if sampler != "default" and knob.check_model(info, knob.Settings(sampler)):
        sampler = "default"  # a sampler this model cannot take (e.g. a flow-matching model): its own at many steps
    steps = min(int(ref["steps"]), info.num_train_timesteps)
    while steps > 1 and scheduler_steps_reason(info, sampler, None, steps):  # e.g. DDIM 'leading': 999 of 1000
        steps -= 1
    return RunSpec(model=spec.model, prompts=spec.prompts, seeds=spec.seeds, steps=steps, sampler=sampler,
                   guidance=float(ref.get("guidance", info.defaults["guidance_scale"])), height=spec.height,
                   width=spec.width, precision="fp32", device=spec.device, warmup=1, repeats=1)


def reference_key(ref: RunSpec, info: ModelInfo, device: str | None = None) -> str:
    """SHA-256 of the model files' fingerprint and everything in the reference that changes its images:
    its configuration (guidance included), the device type of ``device`` (else of ``ref.device``; "auto"
    resolved), the precision policy and the torch and diffusers versions."""
    import diffusers
    import torch

    device = device or ref.device
    device_type = (resolve_device(device) if device == "auto" else device).split(":")[0]  # cuda:1 -> cuda
    # left out: the model and device (the fingerprint and device type name them), timing counts, batching, the
    # distribution set, and flow_shift (always None here: the model's own), so older references keep their keys
    unkeyed = ("model", "device", "warmup", "repeats", "batch_size", "distribution", "flow_shift")
    src = {"fingerprint": info.fingerprint, **{k: v for k, v in ref.to_dict().items() if k not in unkeyed},
           "device_type": device_type, "precision_policy": REFERENCE_PRECISION,
           "torch": str(torch.__version__), "diffusers": str(diffusers.__version__)}
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:24]


@contextmanager
def tf32_off():
    """Matmuls and cuDNN convolutions in full fp32 inside, the previous settings restored after (harmless on
    a CPU). Uses torch's legacy ``allow_tf32`` switches, which every torch reads; where someone set the flags
    per operator through the newer ``fp32_precision`` API (torch refuses the legacy read then), that one."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:
        legacy = (matmul.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:  # "a mix of the legacy and new APIs": stay within the new one
        legacy = None
    ops = (matmul, cudnn.conv, cudnn.rnn)
    per_op = None if legacy is not None else [op.fp32_precision for op in ops]
    try:
        if legacy is not None:
            matmul.allow_tf32 = cudnn.allow_tf32 = False
        else:
            for op in ops:
                op.fp32_precision = "ieee"
        yield
    finally:
        if legacy is not None:
            matmul.allow_tf32, cudnn.allow_tf32 = legacy
        else:
            for op, value in zip(ops, per_op):
                op.fp32_precision = value


def reference_for(store: RunStore, pipelines: PipelineCache, spec: RunSpec, info: ModelInfo,
                  reference: dict | None = None, device: str = "cpu",
                  stop=None) -> tuple[dict, np.ndarray]:
    """The stored reference of a resolved spec, generating and keeping it the first time (``stop`` as
    ``generate`` takes it: a cancelled run stops its reference too, and nothing is kept)."""
    ref = reference_spec(spec, info, reference)
    key = reference_key(ref, info, device)
    row = store.get_reference(key)
    if row is None:
        ref, _ = resolve(ref, info)
        pipe, _ = pipelines.get_or_load(info, device, load_options(ref))
        applied = apply_knobs(pipe, ref, pipelines)
        try:
            with tf32_off():
                t0 = time.perf_counter()
                images = generate(pipe, ref.images(), batch=ref.batch_size, stop=stop, **call_kwargs(applied))
                gen_ms = (time.perf_counter() - t0) * 1000
        finally:
            undo_knobs(pipe, applied, pipelines)
        try:
            store.put_reference(key, config=ref.to_dict(), images=store.put_images(images),
                                model_fingerprint=info.fingerprint, generate_ms=gen_ms, env=environment(device))
        except StoreError:  # another process kept the same reference first: use theirs
            pass
        row = store.get_reference(key)
    return row, store.load_images(row["images"])
