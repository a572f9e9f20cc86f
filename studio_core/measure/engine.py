"""The engine: run one configuration, time it honestly, score it against a reference, log it.

``Engine.run(spec)`` reads as numbered steps:

1. Resolve and check the spec (raises ``SpecError`` before any work; nothing is recorded). One
   exception: a model this engine already ran in this session that no longer resolves (its folder
   was moved, deleted or broken since) is a failed run with that reason, not an input error. A study
   folder whose disk lacks room for the run's images (and its reference's, when none is stored yet)
   plus a margin refuses it with ``NoSpace``, also before anything is recorded (``store.space``).
2. Insert a ``running`` row in the store.
3. Load the pipeline (cached per model files, device and load options; a pipeline of files that have
   changed since is dropped, never reused) and apply every knob, in order (``pipelines``).
4. Warm up (the first call is kept as the cold time) until two calls agree, then time passes over all
   images until the median's 95% CI is within ±5% (``adaptive``: the default; a fixed count when the
   spec gives one), with a breakdown into text encoding, the denoising loop and VAE decode (``timing``:
   CUDA events after a synchronise on GPU, ``perf_counter`` on CPU). The row records the calls made and
   whether they converged. Peak memory (``memory``) is the peak above the baseline taken before the first
   warm-up: ``torch.cuda.max_memory_allocated`` on GPU, the process's peak resident set (VmHWM, its reset
   checked, else no figure and why) on CPU. Energy per image (``energy``: NVML on GPU, RAPL on CPU, less
   the idle draw) where a counter is readable, else the reason.
5. Undo the knobs; collect what each knob reports it did.
6. Check the output is a picture (``sanity``: NaN or infinite values, flat or all-black images fail the run
   with the reason and what to try), then score the images against the reference of (model, prompts,
   seeds, resolution), generated once and kept (``reference``): PSNR and SSIM (torchmetrics), LPIPS
   only when its backbone weights are on disk, and prompt fidelity for the embedded model (``quality``).
7. Finish the row (``ok``), or record ``failed`` with the reason (``failures``); Ctrl-C marks it
   ``interrupted``. A run whose ``stop`` gives a reason (its client went away, Cancel was pressed) stops
   between denoiser steps and is recorded ``cancelled`` with that reason. An allocation the device refuses is ``failed`` with a reason that starts "out of
   memory" and says what to make smaller; the loaded pipelines are dropped so the memory comes back.
   A write the disk refuses mid-run (full, read-only, failing) fails the run with that reason; when the
   failed row cannot be written either, the outcome waits in the store and is written when space returns
   (``store.pending``), and the result says so.

A process killed mid-run (``kill -9``, a crash, a power cut) leaves its row ``running``; the next
``Engine`` on the study marks it ``interrupted`` (``RunStore.mark_interrupted``), also when a newer process has
taken over the dead one's pid, as a restarted server in a container often does.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from studio_core.errors import RunCancelled, SpecError
from studio_core.knobs import KnobReport
from studio_core.measure import emoji_metrics, quality, standard_metrics
from studio_core.measure.adaptive import ci_half_width, convergence_summary, plan_for, warmed_up
from studio_core.measure.energy import energy_meter
from studio_core.measure.environment import environment, resolve_device
from studio_core.measure.failures import failure_reason, is_out_of_memory, lost_model_reason
from studio_core.measure.generation import generate
from studio_core.measure.memory import peak_memory_meter
from studio_core.measure.pipelines import PipelineCache, apply_knobs, call_kwargs, load_options, undo_knobs
from studio_core.measure.quality import image_metrics
from studio_core.measure.reference import reference_for, reference_key, reference_spec
from studio_core.measure.sanity import check_pictures
from studio_core.measure.timing import Clock, Probe, timed_pass, timing_summary
from studio_core.spec import MAX_IMAGE_STEPS, ModelInfo, RunSpec, resolve, start_fields
from studio_core.store.space import check_free_space, needed_bytes
from studio_core.store.store import RunStore

DIST_BATCH = 100  # images per pipeline call of a distribution set whose run leaves its batching unset

# image_metrics and reference_spec are re-exported: tests and older callers import them from here
__all__ = ["Engine", "RunResult", "image_metrics", "reference_spec"]


@dataclass
class RunResult:
    """What a run produced: its store row (decoded), the images, and the error when it failed."""

    run_id: int
    status: str
    row: dict
    images: np.ndarray | None = None
    reports: list[KnobReport] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        """The recorded reason of a failed run; None when it did not fail."""
        return self.row.get("error")


class Engine:
    """Runs specs against one store. Keeps up to ``max_pipelines`` loaded pipelines between runs."""

    def __init__(self, store: RunStore | None = None, max_pipelines: int = 2, metric_weights=None):
        """``metric_weights``: a ``standard_metrics.MetricWeights`` for LPIPS, FID/KID and CLIP-score (default: the
        folder ``$STUDIO_METRIC_WEIGHTS`` names, or none)."""
        self.store = store or RunStore()
        self.metric_weights = metric_weights if metric_weights is not None else standard_metrics.configured_weights()
        self._pipes = PipelineCache(max_pipelines)
        self._fidelity: dict[int, object] = {}  # image size -> the prompt-fidelity gallery at that size
        self._models_run: dict[str, str] = {}  # model as given -> its folder, for every model run so far
        self._lineages: dict[str, dict] = {}  # model as given -> its row's family and lineage, as last read
        self.store.mark_interrupted()

    def pipeline(self, info: ModelInfo, device: str, options: dict) -> tuple[object, float]:
        """A loaded pipeline for (model, device, load options) and its load ms (``PipelineCache.get_or_load``)."""
        return self._pipes.get_or_load(info, device, options)

    def reference_for(self, spec: RunSpec, info: ModelInfo, reference: dict | None = None,
                      device: str = "cpu", stop: Callable[[], str | None] | None = None) -> tuple[dict, np.ndarray]:
        """The stored reference of a resolved spec, generating and keeping it the first time (``reference``)."""
        return reference_for(self.store, self._pipes, spec, info, reference, device, stop)

    # ---- the run
    def run(self, spec: RunSpec | dict, *, sweep_id: int | None = None, sweep_index: int | None = None,
            reference: dict | None = None, on_stage: Callable[[str], None] | None = None,
            stop: Callable[[], str | None] | None = None) -> RunResult:
        """Run, time, score and log one configuration (see the module docstring for the steps). ``stop``
        returns a reason to stop (checked between denoiser steps) or None."""
        stage = on_stage or (lambda s: None)
        # 1. check inputs: raise before any work
        if isinstance(spec, dict):
            spec = RunSpec.from_dict(spec)
        try:
            spec, info = resolve(spec)
        except SpecError as exc:
            if exc.field != "model" or spec.model not in self._models_run:
                raise  # input validation: nothing is recorded
            return self._record_lost_model(spec, sweep_id, sweep_index)
        device = resolve_device(spec.device)
        if not self.store.read_only:  # a read-only study refuses the run at start_run, by that name
            self._check_space(spec, info, reference)
        # 2. record the run before doing anything that can fail
        fields = start_fields(spec, info)
        self._lineages[spec.model] = {k: fields[k] for k in ("model_family", "lineage")}
        run_id = self.store.start_run(spec.to_dict(), sweep_id=sweep_id, sweep_index=sweep_index, **fields)
        self._models_run[spec.model] = info.path
        results: dict = {}
        try:
            images, reports, dist_images = self._measure(spec, info, device, results, stage, stop)
            check_pictures(images)  # a flat or black frame is a failure, not a low PSNR
            stage("scoring")
            results.update(self._score(spec, info, device, images, reference, stop, dist_images))
            if not results["repeats_identical"]:
                results["metrics_note"] = "; ".join(filter(None, [
                    "outputs differed between repeats with the same seeds (this sampler or device is not "
                    "seed-deterministic); metrics are of the last repeat", results["metrics_note"]]))
            self.store.finish_run(run_id, results)
            return RunResult(run_id, "ok", self.store.get_run(run_id), images, reports)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in the CLI (its message says so)
            self.store.mark_interrupted([run_id], str(exc) or "stopped by the user (Ctrl-C or cancel)")
            raise
        except RunCancelled as exc:  # nothing timed is kept: a cut pass is not a measurement
            self.store.cancel_run(run_id, str(exc))
            return RunResult(run_id, "cancelled", self.store.get_run_with_pending(run_id), None, [])
        except Exception as exc:  # recorded with its reason; the caller decides whether to go on
            oom = is_out_of_memory(exc)
            msg = failure_reason(exc, spec, device, info.path, self.store.data_dir)
        # 7. out of the except block, the failed call's frames (and the tensors they held) are released
        if oom:  # give the memory back: no pipeline is kept, whatever state the failure left it in
            self._pipes.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.store.fail_run(run_id, msg, results)  # a full disk keeps it waiting: the row read says so
        return RunResult(run_id, "failed", self.store.get_run_with_pending(run_id), None, [])

    def _check_space(self, spec: RunSpec, info: ModelInfo, reference: dict | None) -> None:
        """Step 1's last check: ``NoSpace`` unless the study folder's disk has room for the run's images, its
        reference's images when none is stored yet, its rows and a margin (``store.space``)."""
        try:
            ref_key = reference_key(reference_spec(spec, info, reference), info)
            missing = self.store.get_reference(ref_key) is None
        except (KeyError, TypeError, ValueError):  # a reference that cannot be made fails the run later: count it
            missing = True
        n = spec.n_images
        what = f"a run of {n} image{'s' if n != 1 else ''} at {spec.height}x{spec.width} px"
        check_free_space(self.store.data_dir, needed_bytes(n, spec.height, spec.width, missing), what, missing)

    def _record_lost_model(self, spec: RunSpec, sweep_id: int | None, sweep_index: int | None) -> RunResult:
        """A model this engine ran earlier in the session no longer resolves: its folder was moved,
        deleted or broken since. That is a failed run (the row is written from the unresolved spec, with the
        family and lineage read when the model last resolved), where a model that never resolved is an input error."""
        path = self._models_run[spec.model]
        fields = start_fields(spec, None)
        run_id = self.store.start_run(spec.to_dict(), config_hash=fields["config_hash"], model_path=path,
                                      knobs_label=fields["knobs_label"], sweep_id=sweep_id, sweep_index=sweep_index,
                                      **self._lineages[spec.model])
        self.store.fail_run(run_id, lost_model_reason(spec.model, path))
        return RunResult(run_id, "failed", self.store.get_run_with_pending(run_id), None, [])

    def _measure(self, spec: RunSpec, info: ModelInfo, device: str, results: dict, stage: Callable[[str], None],
                 stop: Callable[[], str | None] | None = None
                 ) -> tuple[np.ndarray, list[KnobReport], tuple[np.ndarray, list[str], np.ndarray | None] | None]:
        """Steps 3-5: load and apply knobs, warm up and time the repeats with peak memory, make the distribution
        set (timed apart), undo the knobs."""
        # 3. load and apply knobs
        stage("loading")
        pipe, load_ms = self.pipeline(info, device, load_options(spec))
        results.update(environment(device), load_ms=round(load_ms, 3), scheduler_class=type(pipe.scheduler).__name__)
        applied = apply_knobs(pipe, spec, self._pipes)
        clock, meter, energy = Clock(device), peak_memory_meter(device), energy_meter(device)
        plan = plan_for(spec, MAX_IMAGE_STEPS)
        try:
            kwargs = call_kwargs(applied)
            def one_pass(probe: Probe) -> np.ndarray:  # all images in prompt-major order, one generator each
                return generate(pipe, spec.images(), batch=spec.batch_size, on_call=probe.new_call, stop=stop,
                                **kwargs)

            # 4. warm up (first call = cold) until two calls agree, then time repeats until the median is stable
            stage("warm-up")
            energy.idle()  # idle power, before anything runs
            base_mem = meter.reset()
            warm: list[float] = []
            while len(warm) < plan.warmup_max:
                with contextlib.ExitStack() as stack:
                    if not warm:  # knobs' counting instruments: the first warm-up call only, never timed repeats
                        for _knob, _settings, a in applied:
                            if a.instrument is not None:
                                stack.enter_context(a.instrument())
                    warm.append(timed_pass(pipe, one_pass, clock).total_ms)
                if len(warm) >= plan.warmup_min and (not plan.adaptive_warmup or warmed_up(warm)):
                    break
            passes: list = []
            until = f" (until the median's 95% CI is within ±{plan.ci_target:.0%})" if plan.ci_target else ""
            energy.start()
            while len(passes) < plan.repeats_max:
                stage(f"repeat {len(passes) + 1}/{plan.repeats_max}{until}")
                passes.append(timed_pass(pipe, one_pass, clock))
                if plan.ci_target is not None and len(passes) >= plan.repeats_min:
                    half = ci_half_width([p.total_ms for p in passes])
                    if half is not None and half <= plan.ci_target:
                        break
            energy_columns = energy.stop(spec.n_images * len(passes))
            peak = meter.peak()
            # 5. what each knob did, measured while it is still in effect
            reports, inactive = self._knob_reports(applied)
            # the distribution set, with the knobs still applied, after every timed pass and report
            dist = self._distribution_set(spec, info, pipe, kwargs, results, stage, stop)
        finally:
            undo_knobs(pipe, applied, self._pipes)
        latencies = [p.total_ms for p in passes]
        results.update(timing_summary(warm[0], passes, spec.n_images, spec.steps))
        images = passes[-1].images
        others = sum(1 for p in self._pipes.values() if p is not pipe)
        measured = {  # the columns added for issue 18; a None is left out so a new column never starts as text
            **convergence_summary(plan, warm, latencies, spec.warmup), **energy_columns,
            "peak_mem_method": None if meter.unavailable else (
                f"{meter.method}; {others} other cached pipeline{'s' if others != 1 else ''} in the baseline"),
        }
        results.update({k: v for k, v in measured.items() if v is not None})
        results.update(
            peak_mem_bytes=None if meter.unavailable else max(int(peak) - int(base_mem), 0),
            mem_baseline_bytes=int(base_mem),
            peak_mem_kind=f"unavailable: {meter.unavailable}" if meter.unavailable else meter.kind,
            repeats_identical=int(all(np.array_equal(p.images, images) for p in passes)),
            knob_report=[{"knob": r.knob, "active": r.active, "summary": r.summary, "details": r.details}
                         for r in reports],
            knobs_inactive=", ".join(inactive) or None,
            images=self.store.put_images(images),
        )
        return images, reports, dist

    def _distribution_set(self, spec: RunSpec, info: ModelInfo, pipe, kwargs: dict, results: dict,
                          stage: Callable[[str], None], stop: Callable[[], str | None] | None
                          ) -> tuple[np.ndarray, list[str], np.ndarray | None] | None:
        """The spec's ``distribution`` images (an emoji model's: ``emoji_metrics.distribution_captions``; another
        model's with a real set for FID: its prompts in turn; seed = the first seed + i), timed as ``dist_gen_ms``,
        their captions and the real set FID/KID compare them with (``_real_set``, read once here). None when the
        spec asks for none or nothing could score them (the score step says so)."""
        if not spec.distribution:
            return None
        real = self._real_set(spec, info)
        if emoji_metrics.is_emoji_domain(info):
            captions, held_out = emoji_metrics.dataset_split(self.store.data_dir / "cache", spec.height)
            chosen = emoji_metrics.distribution_captions(captions, held_out, spec.distribution)
        elif real is not None:  # FID/KID from local weights against the user's real set
            chosen = [spec.prompts[i % len(spec.prompts)] for i in range(spec.distribution)]
        else:
            return None
        stage(f"distribution set ({spec.distribution} images, timed apart from the latency)")
        pairs = [(c, int(spec.seeds[0]) + i) for i, c in enumerate(chosen)]
        t0 = time.perf_counter()
        # the run's batching where it sets one, else up to DIST_BATCH images per call (one call of 500 would
        # hold every image's activations at once)
        images = generate(pipe, pairs, batch=spec.batch_size or min(DIST_BATCH, len(pairs)), stop=stop, **kwargs)
        results["dist_gen_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return images, chosen, real

    def _real_set(self, spec: RunSpec, info: ModelInfo) -> np.ndarray | None:
        """The real set FID/KID compare a distribution set with: the training renders for an emoji model, the
        weights folder's ``reference-images/`` for another; None without Inception weights or a real set."""
        weights = self.metric_weights
        if weights.unavailable_reason("fid"):
            return None
        if emoji_metrics.is_emoji_domain(info):
            return emoji_metrics.training_renders(self.store.data_dir / "cache", spec.height)
        return standard_metrics.reference_images(weights, (spec.height, spec.width))

    @staticmethod
    def _knob_reports(applied: list) -> tuple[list[KnobReport], list[str]]:
        """Each knob's report, and the names of non-baseline knobs that report they did nothing."""
        reports, inactive = [], []
        for knob, settings, a in applied:
            if a.report is not None:
                reports.append(a.report())
                # a knob left at the model's own (fp32, the model's sampler) is a baseline, not a failure
                if not (reports[-1].active or knob.is_baseline(settings) or reports[-1].details.get("model_default")):
                    inactive.append(knob.name)
        return reports, inactive

    def _score(self, spec: RunSpec, info: ModelInfo, device: str, images: np.ndarray,
               reference: dict | None, stop: Callable[[], str | None] | None = None,
               dist: tuple[np.ndarray, list[str], np.ndarray | None] | None = None) -> dict:
        """Step 6: quality against the reference, LPIPS when possible, prompt fidelity, and the emoji feature
        network's scores (perceptual distance, classifier fidelity, and the distribution set's FD/KID/P&R)."""
        notes = []
        ref_row, ref_images = self.reference_for(spec, info, reference, device, stop)
        out = {"reference_id": ref_row["id"], **image_metrics(images, ref_images)}
        caps = [p for p, _ in spec.images()]
        dist_images, _, real = dist if dist is not None else (None, None, None)
        scores, std_notes = standard_metrics.run_scores(self.metric_weights, images, ref_images, caps, device,
                                                        dist_images, real)
        out.update(scores)
        notes += std_notes
        why_not = emoji_metrics.unavailable_reason(info)
        if why_not:
            notes.append(why_not)
        else:
            out.update(emoji_metrics.emoji_image_scores(images, ref_images, caps))
            if dist is not None:
                out.update(emoji_metrics.distribution_scores(dist[0], dist[1], spec.height,
                                                             self.store.data_dir / "cache"))
        if emoji_metrics.is_emoji_domain(info):
            if spec.height not in self._fidelity:
                self._fidelity[spec.height] = quality.load_fidelity_index(spec.height, self.store.data_dir / "cache")
            scores, fidelity_notes = quality.prompt_fidelity(self._fidelity[spec.height], spec, images)
            out.update(scores)
            notes += fidelity_notes
        else:
            notes.append("prompt fidelity applies to the emoji models only")
        out["metrics_note"] = "; ".join(notes) or None
        return out
