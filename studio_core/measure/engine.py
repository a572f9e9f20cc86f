"""The engine: run one configuration, time it honestly, score it against a reference, log it.

``Engine.run(spec)`` reads as numbered steps:

1. Resolve and check the spec (raises ``SpecError`` before any work; nothing is recorded). One
   exception: a model this engine already ran in this session that no longer resolves (its folder
   was moved, deleted or broken since) is a failed run with that reason, not an input error.
2. Insert a ``running`` row in the store.
3. Load the pipeline (cached per model files, device and load options; a pipeline of files that have
   changed since is dropped, never reused) and apply every knob, in order.
4. Warm up (the first call is kept as the cold time), then time ``repeats`` passes over all images,
   with a breakdown into text encoding, the denoising loop and VAE decode. CUDA work is timed with
   CUDA events after a synchronise; CPU work with ``perf_counter``. Peak memory is
   ``torch.cuda.max_memory_allocated`` on GPU and the process's peak resident set (VmHWM, reset before
   the timed part) on CPU.
5. Undo the knobs; collect what each knob reports it did.
6. Score the images against the reference of (model, prompts, seeds, resolution), generated once and
   kept: PSNR and SSIM (torchmetrics), LPIPS only when its backbone weights are on disk, and prompt
   fidelity for the embedded model.
7. Finish the row (``ok``), or record ``failed`` with the reason; Ctrl-C marks it ``interrupted``.
   An allocation the device refuses is ``failed`` with a reason that starts "out of memory" and says
   what to make smaller; the loaded pipelines are dropped so the memory comes back.

A process killed mid-run (``kill -9``, a crash, a power cut) leaves its row ``running``; the next
``Engine`` on the study marks it ``interrupted`` (``RunStore.mark_interrupted``), also when a newer process has
taken over the dead one's pid, as a restarted server in a container often does.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import re
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from studio_core.errors import KnobUnsupported, ModelLoadError, SpecError, StoreError
from studio_core.knobs import Applied, KnobReport, knobs_in
from studio_core.measure.environment import environment, resolve_device
from studio_core.measure.generation import generate
from studio_core.spec import ModelInfo, RunSpec, config_hash, resolve
from studio_core.store.store import RunStore

__all__ = ["REFERENCE_DEFAULT", "Engine", "RunResult", "image_metrics", "reference_spec"]

ROOT = Path(__file__).resolve().parents[2]
# the reference every run is scored against: a high-step multistep solver, fp32, no knobs
REFERENCE_DEFAULT = {"sampler": "DPM++ 2M", "steps": 200}
PSNR_CAP_DB = 100.0  # identical images: MSE floored at 1e-10




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
        return self.row.get("error")


# ------------------------------------------------------------------------------------------ clocks
class _Clock:
    """Timestamps on one device: CUDA events on GPU (read after one synchronise), perf_counter on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000.0


class _Probe:
    """Marks where a pipeline call encodes text, starts denoising and decodes, and counts denoiser calls."""

    def __init__(self, pipe, clock: _Clock):
        self.pipe, self.clock = pipe, clock
        self.calls: list[dict] = []
        self._handles = []

    def new_call(self) -> dict:
        self.calls.append({"nfe": 0})
        return self.calls[-1]

    def _wrap(self, owner, attr: str, start: str, end: str) -> None:
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            self.calls[-1][start] = self.clock.mark()
            out = original(*args, **kwargs)
            self.calls[-1][end] = self.clock.mark()
            return out

        setattr(owner, attr, wrapped)
        self._handles.append(lambda: owner.__dict__.pop(attr, None))

    def __enter__(self):
        pipe = self.pipe
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)

        def pre_hook(module, args):
            call = self.calls[-1]
            if call["nfe"] == 0:
                call["denoise_start"] = self.clock.mark()
            call["nfe"] += 1

        self._handles.append(denoiser.register_forward_pre_hook(pre_hook).remove)
        if hasattr(pipe, "encode_prompt"):
            self._wrap(pipe, "encode_prompt", "encode_start", "encode_end")
        self._wrap(pipe.vae, "decode", "decode_start", "decode_end")
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._handles):
            undo()
        self._handles.clear()


# ------------------------------------------------------------------------------------------ memory
def _rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_status() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


# ------------------------------------------------------------------------------------------ metrics
def image_metrics(images: np.ndarray, reference: np.ndarray) -> dict:
    """Per-image PSNR (capped at 100 dB) and SSIM against the reference (torchmetrics); mean and std."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if images.shape != reference.shape:
        raise ValueError(f"images {images.shape} and reference {reference.shape} differ in shape")
    a = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    b = torch.from_numpy(reference).permute(0, 3, 1, 2).double() / 255.0
    mse = ((a - b) ** 2).flatten(1).mean(1)
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    psnr = torch.where(mse < 1e-10, torch.full_like(psnr, PSNR_CAP_DB), psnr.clamp(max=PSNR_CAP_DB))
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    std = (lambda t: float(t.std(unbiased=False)))
    return {"psnr": float(psnr.mean()), "psnr_std": std(psnr), "ssim": float(ssim.mean()), "ssim_std": std(ssim)}


def _lpips_unavailable_reason() -> str | None:
    """LPIPS needs torchvision and its AlexNet/LPIPS weights on disk; nothing is ever downloaded."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return "LPIPS unavailable: torchvision is not installed"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return f"LPIPS unavailable: AlexNet backbone weights not found in {hub} (nothing is downloaded)"
    return None


def _lpips(images: np.ndarray, reference: np.ndarray) -> float:
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    a = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    b = torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 127.5 - 1
    return float(learned_perceptual_image_patch_similarity(a, b, net_type="alex"))


# ------------------------------------------------------------------------------------------ env


# ------------------------------------------------------------------------------------------ failures
def _is_out_of_memory(exc: BaseException) -> bool:
    """An allocation the device refused: CUDA's ``OutOfMemoryError``, Python's ``MemoryError``, or the
    ``RuntimeError`` of PyTorch's CPU allocator ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or ("defaultcpuallocator" in text and "allocate" in text)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def _out_of_memory_reason(exc: BaseException, spec: RunSpec, device: str) -> str:
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


def _load_failure_reason(exc: ModelLoadError, model_path: str) -> str:
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


def _model_problem(model: str) -> str | None:
    """Why ``model`` does not resolve to a pipeline folder now, or None when it does."""
    from studio_core.models import check_pipeline_folder, resolve_model

    try:
        check_pipeline_folder(resolve_model(model))
    except ModelLoadError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------ reference
def reference_spec(spec: RunSpec, info: ModelInfo, reference: dict | None = None) -> RunSpec:
    """The reference configuration of a resolved spec: same model, prompts, seeds and resolution;
    a high-step solver, fp32, the model's default guidance, no knobs."""
    ref = {**REFERENCE_DEFAULT, **(reference or {})}
    from studio_core.knobs.sampler import SAMPLERS

    sampler = ref["sampler"]
    if sampler != "default" and SAMPLERS[sampler].cls not in info.compatible_schedulers:
        sampler = "default"  # e.g. flow-matching models: their own solver at many steps
    steps = min(int(ref["steps"]), info.num_train_timesteps)
    return RunSpec(model=spec.model, prompts=spec.prompts, seeds=spec.seeds, steps=steps, sampler=sampler,
                   guidance=float(ref.get("guidance", info.defaults["guidance_scale"])), height=spec.height,
                   width=spec.width, precision="fp32", device=spec.device, warmup=1, repeats=1)


def _reference_key(ref: RunSpec, info: ModelInfo) -> str:
    src = {"fingerprint": info.fingerprint, **{k: v for k, v in ref.to_dict().items()
                                                 if k not in ("model", "device", "warmup", "repeats", "batch_size")}}
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------ engine
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _knobs_label(spec: RunSpec) -> str:
    return ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(spec.knobs.items()))


class Engine:
    """Runs specs against one store. Keeps up to ``max_pipelines`` loaded pipelines between runs."""

    def __init__(self, store: RunStore | None = None, max_pipelines: int = 2):
        self.store = store or RunStore()
        self.max_pipelines = max_pipelines
        self._pipes: OrderedDict[tuple, object] = OrderedDict()
        self._fidelity = {}
        self._models_run: dict[str, str] = {}  # model as given -> its folder, for every model run so far
        self.store.mark_interrupted()

    # ---- pipelines
    def pipeline(self, info: ModelInfo, device: str, options: dict):
        """A loaded pipeline for (model, device, load options), from the cache when possible. The key
        holds the model files' fingerprint: once they change, pipelines of the old files are dropped."""
        from studio_core.models import load_pipeline

        key = (info.path, info.fingerprint, device, tuple(sorted(options.items())))
        if key in self._pipes:
            self._pipes.move_to_end(key)
            return self._pipes[key], 0.0
        for old in [k for k in self._pipes if k[0] == info.path and k[1] != info.fingerprint]:
            del self._pipes[old]
        t0 = time.perf_counter()
        parts = {role: _DTYPES[p] for role, p in options.get("component_dtypes", ())}  # component_precision knob
        pipe = load_pipeline(info.path, device=device, dtype=_DTYPES[options.get("dtype", "fp32")],
                             component_dtypes=parts or None)
        load_ms = (time.perf_counter() - t0) * 1000
        self._pipes[key] = pipe
        while len(self._pipes) > self.max_pipelines:
            self._pipes.popitem(last=False)
        return pipe, load_ms

    def _evict(self, pipe) -> None:
        for key, value in list(self._pipes.items()):
            if value is pipe:
                del self._pipes[key]

    # ---- one pass over every image of a spec
    @staticmethod
    def call_pipeline(pipe, spec: RunSpec, call_kwargs: dict, probe: _Probe | None = None) -> np.ndarray:
        """All images of ``spec`` in prompt-major order (``generate``: one generator per image)."""
        return generate(pipe, spec.images(), batch=spec.batch_size, on_call=probe.new_call if probe else None,
                        **call_kwargs)

    def _timed_pass(self, pipe, spec, call_kwargs, clock: _Clock) -> tuple[np.ndarray, float, list[dict]]:
        with _Probe(pipe, clock) as probe:
            clock.sync()
            t0 = clock.mark()
            images = self.call_pipeline(pipe, spec, call_kwargs, probe)
            t1 = clock.mark()
            clock.sync()
        return images, clock.ms(t0, t1), probe.calls

    # ---- knobs
    @staticmethod
    def _load_options(spec: RunSpec) -> dict:
        options: dict = {}
        for knob, settings in knobs_in(spec):
            options.update(knob.load_options(settings))
        return options

    @staticmethod
    def _call_kwargs(applied) -> dict:
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

    def _apply_knobs(self, pipe, spec: RunSpec) -> list[tuple[object, object, Applied]]:
        applied = []
        try:
            for knob, settings in knobs_in(spec):
                reason = knob.supports(pipe, settings)
                if reason:
                    raise KnobUnsupported(f"{knob.field_name}={knob.describe(settings)!r} cannot run on this "
                                          f"pipeline: {reason}")
                applied.append((knob, settings, knob.apply(pipe, settings)))
        except BaseException:
            self._undo(pipe, applied)
            raise
        return applied

    def _undo(self, pipe, applied) -> None:
        for _knob, _settings, a in reversed(applied):
            if a.undo is None:
                self._evict(pipe)
            else:
                a.undo()

    # ---- references
    def reference_for(self, spec: RunSpec, info: ModelInfo, reference: dict | None = None,
                      device: str = "cpu") -> tuple[dict, np.ndarray]:
        """The stored reference of a resolved spec, generating and keeping it the first time."""
        ref = reference_spec(spec, info, reference)
        key = _reference_key(ref, info)
        row = self.store.get_reference(key)
        if row is None:
            ref, _ = resolve(ref, info)
            pipe, _ = self.pipeline(info, device, self._load_options(ref))
            applied = self._apply_knobs(pipe, ref)
            try:
                t0 = time.perf_counter()
                images = self.call_pipeline(pipe, ref, self._call_kwargs(applied))
                gen_ms = (time.perf_counter() - t0) * 1000
            finally:
                self._undo(pipe, applied)
            try:
                self.store.put_reference(key, config=ref.to_dict(), images=self.store.put_images(images),
                                         model_fingerprint=info.fingerprint, generate_ms=gen_ms,
                                         env=environment(device))
            except StoreError:  # another process kept the same reference first: use theirs
                pass
            row = self.store.get_reference(key)
        return row, self.store.load_images(row["images"])

    def _fidelity_index(self, info: ModelInfo):
        if info.path not in self._fidelity:
            from studio_core.embedded.training.data import load_or_build
            from studio_core.measure.fidelity import PromptFidelityIndex

            ds = load_or_build(ROOT / ".cache", int(info.sample_size or 32))
            self._fidelity[info.path] = PromptFidelityIndex(ds.images, ds.captions)
        return self._fidelity[info.path]

    # ---- the run
    def run(self, spec: RunSpec | dict, *, sweep_id: int | None = None, sweep_index: int | None = None,
            reference: dict | None = None, on_stage: Callable[[str], None] | None = None) -> RunResult:
        """Run, time, score and log one configuration (see the module docstring for the steps)."""
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
        # 2. record the run before doing anything that can fail
        run_id = self.store.start_run(
            spec.to_dict(), config_hash=config_hash(spec), model_path=info.path,
            model_fingerprint=info.fingerprint, pipeline_class=info.pipeline_class, knobs_label=_knobs_label(spec),
            sweep_id=sweep_id, sweep_index=sweep_index)
        self._models_run[spec.model] = info.path
        results: dict = {}
        try:
            images, reports = self._measure(spec, info, device, results, stage)
            stage("scoring")
            results.update(self._score(spec, info, device, images, reference))
            if not results["repeats_identical"]:
                results["metrics_note"] = "; ".join(filter(None, [
                    "outputs differed between repeats with the same seeds (this sampler or device is not "
                    "seed-deterministic); metrics are of the last repeat", results["metrics_note"]]))
            self.store.finish_run(run_id, results)
            return RunResult(run_id, "ok", self.store.get_run(run_id), images, reports)
        except KeyboardInterrupt:
            self.store.mark_interrupted([run_id], "stopped by the user (Ctrl-C or cancel)")
            raise
        except Exception as exc:  # recorded with its reason; the caller decides whether to go on
            oom = _is_out_of_memory(exc)
            if oom:
                msg = _out_of_memory_reason(exc, spec, device)
            elif isinstance(exc, ModelLoadError):
                msg = _load_failure_reason(exc, info.path)
            elif isinstance(exc, (SpecError, KnobUnsupported)):
                msg = str(exc)
            else:
                msg = f"{type(exc).__name__}: {exc}"
        # out of the except block, the failed call's frames (and the tensors they held) are released
        if oom:  # give the memory back: no pipeline is kept, whatever state the failure left it in
            self._pipes.clear()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.store.fail_run(run_id, msg, results)
        return RunResult(run_id, "failed", self.store.get_run(run_id), None, [])

    def _record_lost_model(self, spec: RunSpec, sweep_id: int | None, sweep_index: int | None) -> RunResult:
        """A model this engine ran earlier in the session no longer resolves: its folder was moved,
        deleted or broken since. That is a failed run (the row is written from the unresolved spec),
        where a model that never resolved is an input error."""
        path = self._models_run[spec.model]
        problem = _model_problem(spec.model) or f"{path} is no longer a pipeline folder"
        run_id = self.store.start_run(spec.to_dict(), config_hash=config_hash(spec), model_path=path,
                                      knobs_label=_knobs_label(spec), sweep_id=sweep_id, sweep_index=sweep_index)
        self.store.fail_run(run_id, f"model {spec.model} failed to load: {problem}. It ran earlier in this "
                                    "session, so its folder was moved, deleted or changed since: restore it, or "
                                    "choose another model")
        return RunResult(run_id, "failed", self.store.get_run(run_id), None, [])

    def _measure(self, spec: RunSpec, info: ModelInfo, device: str, results: dict, stage) -> tuple[np.ndarray, list]:
        # 3. load and apply knobs
        stage("loading")
        pipe, load_ms = self.pipeline(info, device, self._load_options(spec))
        results.update(environment(device), load_ms=round(load_ms, 3), scheduler_class=type(pipe.scheduler).__name__)
        applied = self._apply_knobs(pipe, spec)
        clock = _Clock(device)
        try:
            kwargs = self._call_kwargs(applied)
            # 4. warm up (first call = cold), then the timed repeats
            stage("warm-up")
            cuda = device.startswith("cuda")
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base_mem = torch.cuda.memory_allocated()
            else:
                _rss_reset()
                base_mem = _rss_status().get("VmRSS", 0)
            warm = []
            for i in range(spec.warmup):
                with contextlib.ExitStack() as stack:
                    if i == 0:  # knobs' counting instruments: the first warm-up call only, never timed repeats
                        for _knob, _settings, a in applied:
                            if a.instrument is not None:
                                stack.enter_context(a.instrument())
                    warm.append(self._timed_pass(pipe, spec, kwargs, clock)[1])
            passes = []
            for i in range(spec.repeats):
                stage(f"repeat {i + 1}/{spec.repeats}")
                passes.append(self._timed_pass(pipe, spec, kwargs, clock))
            if cuda:
                peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
            else:
                peak, kind = _rss_status().get("VmHWM", 0), "cpu_peak_rss"
            # 5. what each knob did, measured while it is still in effect
            reports, inactive = [], []
            for knob, settings, a in applied:
                if a.report is not None:
                    reports.append(a.report())
                    if not reports[-1].active and not knob.is_baseline(settings):
                        inactive.append(knob.name)
        finally:
            self._undo(pipe, applied)
        results.update(self._timing(spec, warm, passes, pipe, clock))
        images = passes[-1][0]
        results.update(
            peak_mem_bytes=int(peak), mem_baseline_bytes=int(base_mem), peak_mem_kind=kind,
            repeats_identical=int(all(np.array_equal(p[0], images) for p in passes)),
            knob_report=[{"knob": r.knob, "active": r.active, "summary": r.summary, "details": r.details}
                         for r in reports],
            knobs_inactive=", ".join(inactive) or None,
            images=self.store.put_images(images),
        )
        return images, reports

    @staticmethod
    def _timing(spec: RunSpec, warm: list[float], passes: list, pipe, clock: _Clock) -> dict:
        """Median and spread of end-to-end latency over the repeats; each breakdown part is its median
        over the repeats."""
        lat = [p[1] for p in passes]
        q = statistics.quantiles(lat, n=4, method="inclusive") if len(lat) > 1 else [lat[0]] * 3

        def per_pass(start: str, end: str) -> float | None:
            vals = []
            for _img, _ms, calls in passes:
                if not all(start in c and end in c for c in calls):
                    return None
                vals.append(sum(clock.ms(c[start], c[end]) for c in calls))
            return statistics.median(vals)

        denoise = per_pass("denoise_start", "decode_start")
        return {
            "cold_ms": round(warm[0], 3), "latencies_ms": [round(x, 3) for x in lat],
            "latency_median_ms": statistics.median(lat), "latency_iqr_ms": q[2] - q[0],
            "latency_min_ms": min(lat), "latency_max_ms": max(lat), "latency_mean_ms": statistics.fmean(lat),
            "per_image_ms": statistics.median(lat) / spec.n_images,
            "text_encode_ms": per_pass("encode_start", "encode_end"), "denoise_ms": denoise,
            "decode_ms": per_pass("decode_start", "decode_end"),
            "step_mean_ms": denoise / spec.steps if denoise else None,  # per requested step (Heun: 2 calls)
            "nfe": sum(c["nfe"] for c in passes[-1][2]),
        }

    def _score(self, spec: RunSpec, info: ModelInfo, device: str, images: np.ndarray,
               reference: dict | None) -> dict:
        # 6. quality against the reference, and prompt fidelity
        notes = []
        ref_row, ref_images = self.reference_for(spec, info, reference, device)
        out = {"reference_id": ref_row["id"], **image_metrics(images, ref_images)}
        why_not = _lpips_unavailable_reason()
        if why_not:
            notes.append(why_not)
        else:
            out["lpips"] = _lpips(images, ref_images)
        if info.is_embedded:
            index = self._fidelity_index(info)
            caps = [p for p, _ in spec.images()]
            known = [i for i, c in enumerate(caps) if c in index]
            if known:
                r = index.score(images[known], [caps[i] for i in known])
                out.update(fidelity_top1=r.top1, fidelity_top5=r.top5, fidelity_n=r.n)
                if len(known) < len(caps):
                    notes.append(f"prompt fidelity over {len(known)} of {len(caps)} images (other prompts "
                                 "are not emoji captions)")
            else:
                notes.append("prompt fidelity unavailable: no prompt is an emoji caption of the training set")
        else:
            notes.append("prompt fidelity applies to the embedded emoji model only")
        out["metrics_note"] = "; ".join(notes) or None
        return out
