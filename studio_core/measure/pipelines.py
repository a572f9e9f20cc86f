"""Loaded pipelines and the knobs on them: the cache kept between runs, load options, apply / undo, and
the pipeline-call arguments of several knobs chained into one call."""

from __future__ import annotations

import time
from collections import OrderedDict

from studio_core.errors import KnobUnsupported
from studio_core.knobs import Applied, knobs_in
from studio_core.knobs.component_precision import torch_dtype
from studio_core.spec import ModelInfo, RunSpec

__all__ = ["AppliedKnobs", "PipelineCache", "apply_knobs", "call_kwargs", "load_options", "undo_knobs"]

AppliedKnobs = list[tuple[object, object, Applied]]  # (knob, settings, what applying it returned), in order


class PipelineCache(OrderedDict):
    """Up to ``max_pipelines`` loaded pipelines, least recently used first, keyed by (model folder, files'
    fingerprint, device, load options)."""

    def __init__(self, max_pipelines: int = 2):
        super().__init__()
        self.max_pipelines = max_pipelines

    def get_or_load(self, info: ModelInfo, device: str, options: dict) -> tuple[object, float]:
        """A loaded pipeline and its load time in ms (0 from the cache). Pipelines of the model's earlier
        files (another fingerprint) are dropped, never reused."""
        from studio_core.models import load_pipeline

        key = (info.path, info.fingerprint, device, tuple(sorted(options.items())))
        if key in self:
            self.move_to_end(key)
            return self[key], 0.0
        for old in [k for k in self if k[0] == info.path and k[1] != info.fingerprint]:
            del self[old]
        t0 = time.perf_counter()
        parts = {role: torch_dtype(p) for role, p in options.get("component_dtypes", ())}  # component_precision knob
        pipe = load_pipeline(info.path, device=device, dtype=torch_dtype(options.get("dtype", "fp32")),
                             component_dtypes=parts or None)
        load_ms = (time.perf_counter() - t0) * 1000
        self[key] = pipe
        while len(self) > self.max_pipelines:
            self.popitem(last=False)
        return pipe, load_ms

    def evict(self, pipe) -> None:
        """Drop every entry holding ``pipe`` (a knob changed it in a way that cannot be undone)."""
        for key, value in list(self.items()):
            if value is pipe:
                del self[key]


def load_options(spec: RunSpec) -> dict:
    """What the knobs of ``spec`` ask of loading (dtype, per-component dtypes), merged in knob order."""
    options: dict = {}
    for knob, settings in knobs_in(spec):
        options.update(knob.load_options(settings))
    return options


def apply_knobs(pipe, spec: RunSpec, cache: PipelineCache) -> AppliedKnobs:
    """Apply every knob of ``spec`` in order after its support check; on any failure undo those applied."""
    applied: AppliedKnobs = []
    try:
        for knob, settings in knobs_in(spec):
            reason = knob.supports(pipe, settings)
            if reason:
                raise KnobUnsupported(f"{knob.field_name}={knob.describe(settings)!r} cannot run on this "
                                      f"pipeline: {reason}")
            applied.append((knob, settings, knob.apply(pipe, settings)))
    except BaseException:
        undo_knobs(pipe, applied, cache)
        raise
    return applied


def undo_knobs(pipe, applied: AppliedKnobs, cache: PipelineCache) -> None:
    """Undo knobs last first; a knob that cannot be undone in place drops the pipeline from the cache."""
    for _knob, _settings, a in reversed(applied):
        if a.undo is None:
            cache.evict(pipe)
        else:
            a.undo()


def call_kwargs(applied: AppliedKnobs) -> dict:
    """Every knob's call arguments; several ``callback_on_step_end`` are chained into one (each sees
    the tensors the previous ones returned) and their tensor inputs merged."""
    kwargs: dict = {}
    callbacks, tensor_inputs = [], ["latents"]
    for _knob, _settings, a in applied:
        extra = dict(a.call_kwargs)
        if "callback_on_step_end" in extra:
            callbacks.append(extra.pop("callback_on_step_end"))
        for name in extra.pop("callback_on_step_end_tensor_inputs", ()):
            if name not in tensor_inputs:
                tensor_inputs.append(name)
        kwargs.update(extra)
    if callbacks:
        def chained(pipe, i, t, callback_kwargs):
            out: dict = {}
            for cb in callbacks:
                out.update(cb(pipe, i, t, {**callback_kwargs, **out}) or {})
            return out

        kwargs["callback_on_step_end"] = chained
        kwargs["callback_on_step_end_tensor_inputs"] = tensor_inputs
    return kwargs
