"""The reference a run is scored against: its configuration, its key, and the stored images (made once)."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from studio_core.errors import StoreError
from studio_core.knobs import KNOBS
from studio_core.measure.environment import environment
from studio_core.measure.generation import generate
from studio_core.measure.pipelines import PipelineCache, apply_knobs, call_kwargs, load_options, undo_knobs
from studio_core.spec import REFERENCE_DEFAULT, ModelInfo, RunSpec, resolve, scheduler_steps_reason
from studio_core.store.store import RunStore

__all__ = ["reference_for", "reference_key", "reference_spec"]

def reference_spec(spec: RunSpec, info: ModelInfo, reference: dict | None = None) -> RunSpec:
    """The reference configuration of a resolved spec: same model, prompts, seeds and resolution;
    a high-step solver, fp32, the model's default guidance, no knobs. Its steps are capped where the
    scheduler can take them (``spec.scheduler_steps_reason``: 'leading' spacing ends before the last
    training timestep)."""
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


def reference_key(ref: RunSpec, info: ModelInfo) -> str:
    """SHA-256 of the model files' fingerprint and everything in the reference that changes its images."""
    src = {"fingerprint": info.fingerprint, **{k: v for k, v in ref.to_dict().items()
                                                 if k not in ("model", "device", "warmup", "repeats", "batch_size")}}
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:24]


def reference_for(store: RunStore, pipelines: PipelineCache, spec: RunSpec, info: ModelInfo,
                  reference: dict | None = None, device: str = "cpu",
                  stop=None) -> tuple[dict, np.ndarray]:
    """The stored reference of a resolved spec, generating and keeping it the first time (``stop`` as
    ``generate`` takes it: a cancelled run stops its reference too, and nothing is kept)."""
    ref = reference_spec(spec, info, reference)
    key = reference_key(ref, info)
    row = store.get_reference(key)
    if row is None:
        ref, _ = resolve(ref, info)
        pipe, _ = pipelines.get_or_load(info, device, load_options(ref))
        applied = apply_knobs(pipe, ref, pipelines)
        try:
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
