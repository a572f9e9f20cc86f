"""Efficiency knobs II: component precision, torch.compile, attention kernel, memory layout.

Each knob: bad settings name their field, refusals give their reason, apply-then-undo leaves the tiny
pipeline's weights and outputs exactly as they were, and the report says what happened. The compile tests
use dynamo with the ``eager`` backend (the same tracing, guards and recompiles, seconds instead of
minutes); the TorchInductor test on the tiny pipeline is ``slow`` (a cold compile takes minutes on CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import studio_core.knobs.attention  # noqa: F401 - registers the knobs
import studio_core.knobs.compile  # noqa: F401
import studio_core.knobs.component_precision  # noqa: F401
import studio_core.knobs.memory_layout  # noqa: F401
from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs.attention import sdpa_probe_reason
from studio_core.knobs.compile import COMPILE_CONFLICTS, FULLGRAPH_CONFLICTS, inductor_reason
from studio_core.knobs.component_precision import dtype_probe_reason
from studio_core.measure.engine import Engine
from studio_core.measure.pipelines import call_kwargs
from studio_core.models import load_pipeline
from studio_core.spec import RunSpec, resolve
from studio_core.store.store import RunStore

CP, COMPILE, ATTN, MEM = (KNOBS[n] for n in ("component_precision", "compile", "attention_backend", "memory"))
REF = {"sampler": "DDIM", "steps": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir)


def _images(pipe, call_kwargs=None, size=32, n=1, steps=2):
    return pipe(["grinning face", "red heart"][:n], num_inference_steps=steps, guidance_scale=2.0, height=size,
                width=size, output_type="np", generator=[torch.Generator().manual_seed(i) for i in range(n)],
                **(call_kwargs or {})).images


def _run(knob, pipe, settings, size=32, n=1, instrument=True):
    """(images, report) of one call with the knob applied; the knob is undone afterwards."""
    applied = knob.apply(pipe, settings)
    try:
        kwargs = call_kwargs([(knob, settings, applied)])
        if instrument and applied.instrument is not None:
            with applied.instrument():
                images = _images(pipe, kwargs, size, n)
        else:
            images = _images(pipe, kwargs, size, n)
        return images, applied.report()
    finally:
        applied.undo()


def _state(module):
    return {k: (v.detach().clone(), v.stride(), v.dtype) for k, v in module.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k][0], b[k][0]) and a[k][1:] == b[k][1:] for k in a)


def _skip_without_cpu_kernels(*dtypes):
    """Skip where this PyTorch build cannot run a diffusion model's basic ops in these dtypes on CPU."""
    for dtype in dtypes:
        reason = dtype_probe_reason("cpu", dtype)
        if reason:
            pytest.skip(f"no CPU kernels for {dtype} in this PyTorch build: {reason}")


def _spec(tiny_pipeline_dir, knobs, **kw):
    return RunSpec(model=str(tiny_pipeline_dir), prompts=("red heart",), steps=2, device="cpu", knobs=knobs, **kw)


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("knob, raw, field", [
    ("component_precision", {"vae": "fp8"}, "vae"),
    ("component_precision", {"unet": "fp16"}, "unet"),
    ("compile", {"mode": "fast"}, "mode"),
    ("compile", {"backend": "eager", "mode": "max-autotune"}, "mode"),
    ("compile", {"fullgraph": "yes"}, "fullgraph"),
    ("compile", {"dynamic": 1}, "dynamic"),
    ("compile", {"components": "text_encoder"}, "components"),
    ("compile", {"backend": "tensorrt"}, "backend"),
    ("attention_backend", {"backend": "xformers"}, "backend"),
    ("memory", {"channels_last": "yes"}, "channels_last"),
    ("memory", {"vae_tiling": 1}, "vae_tiling"),
])
def test_bad_settings_name_the_field(knob, raw, field):
    with pytest.raises(SpecError) as e:
        KNOBS[knob].parse(raw)
    assert e.value.field == f"knobs.{knob}.{field}"


def test_settings_have_defaults_and_ui_choices():
    from app.widgets import knob_settings

    for knob in (CP, COMPILE, ATTN, MEM):
        knob.parse({})  # every field has a default
    by_name = {(s.knob, s.name): s for k in (CP, COMPILE, ATTN, MEM) for s in knob_settings(k)}
    assert by_name[("component_precision", "vae")].choices == ("fp32", "fp16", "bf16")
    assert by_name[("component_precision", "vae")].optional
    assert by_name[("compile", "mode")].choices[1] == "reduce-overhead"
    assert by_name[("compile", "dynamic")].kind is bool and by_name[("compile", "dynamic")].optional
    assert by_name[("attention_backend", "backend")].choices == ("math", "efficient", "flash", "cudnn")
    assert by_name[("memory", "vae_tiling")].kind is bool
    assert CP.is_baseline(CP.parse({})) and MEM.is_baseline(MEM.parse({}))


# ------------------------------------------------------------------------------------------ refusals
# the conflicts hold for every backend; eager keeps these cases off inductor's need for a C++ compiler
@pytest.mark.parametrize("knobs, text", [
    ({"compile": {"mode": "reduce-overhead"}}, "CUDA graphs, which need a CUDA device"),
    ({"compile": {"backend": "eager"}, "deepcache": {}},
     "does not work with deepcache: DeepCache's hooks branch on the step"),
    ({"compile": {"backend": "eager", "fullgraph": True}, "token_merging": {}},
     "creates a torch.Generator inside the forward"),
    ({"compile": {"backend": "eager", "components": "denoiser+vae"}, "cross_attention_cache": {}},
     "recompiles at every step"),
    ({"attention_backend": {"backend": "efficient"}}, "no CPU kernel for the efficient SDPA backend"),
    ({"attention_backend": {"backend": "cudnn"}}, "no CPU kernel for the cudnn SDPA backend"),
])
def test_incompatible_combinations_are_refused_before_any_work(tiny_pipeline_dir, knobs, text):
    with pytest.raises(SpecError) as e:
        resolve(_spec(tiny_pipeline_dir, knobs))
    assert text in str(e.value)


def test_combinations_that_work_on_cpu_resolve(tiny_pipeline_dir):
    for knobs in ({"attention_backend": {"backend": "flash"}}, {"attention_backend": {"backend": "math"}},
                  {"compile": {"backend": "eager"}},
                  {"compile": {"backend": "aot_eager", "components": "vae"}, "deepcache": {}},
                  {"component_precision": {"denoiser": "fp16", "vae": "bf16"}},
                  {"memory": {"vae_slicing": True, "vae_tiling": True}}):
        resolve(_spec(tiny_pipeline_dir, knobs))
    # inductor resolves where it can build CPU kernels, and is refused with its reason where it cannot
    inductor = _spec(tiny_pipeline_dir, {"compile": {"mode": "max-autotune-no-cudagraphs"}})
    reason = inductor_reason("cpu")
    if reason is None:
        resolve(inductor)
    else:
        with pytest.raises(SpecError) as e:
            resolve(inductor)
        assert e.value.field == "knobs.compile" and reason in str(e.value)


def test_fullgraph_is_refused_with_diffusers_transformer_cache_hooks():
    settings = COMPILE.parse({"fullgraph": True, "backend": "eager"})
    spec = RunSpec(device="cpu", knobs={"transformer_cache": {}, "compile": {"fullgraph": True, "backend": "eager"}})
    assert "torch.compiler.disable" in COMPILE.check_spec(spec, settings)
    assert COMPILE.check_spec(spec, COMPILE.parse({"backend": "eager"})) is None  # graph breaks, but it compiles


@pytest.fixture
def as_if_cuda(monkeypatch):
    """The device resolver answering as on a CUDA machine, so the CUDA rules of ``check_spec`` run here too."""
    import studio_core.measure.environment as environment

    monkeypatch.setattr(environment, "resolve_device", lambda device: "cuda" if device == "auto" else device)


def test_gpu_refusals_read_the_spec(as_if_cuda):
    flash = ATTN.parse({"backend": "flash"})
    assert "fp16 or bf16 only" in ATTN.check_spec(RunSpec(device="cuda", precision="fp32"), flash)
    assert ATTN.check_spec(RunSpec(device="cuda", precision="fp16"), flash) is None
    fp32_denoiser = RunSpec(device="auto", precision="fp16", knobs={"component_precision": {"denoiser": "fp32"}})
    assert "denoiser runs in fp32" in ATTN.check_spec(fp32_denoiser, flash)


def test_cuda_without_a_cuda_device_is_a_device_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: device cuda is allowed here")
    with pytest.raises(SpecError) as e:
        ATTN.check_spec(RunSpec(device="cuda", precision="fp16"), ATTN.parse({"backend": "flash"}))
    assert e.value.field == "device" and "no CUDA device is visible" in str(e.value)
    assert ATTN.check_spec(RunSpec(device="cuda"), ATTN.parse({"backend": "math"})) is None  # math runs anywhere


def test_inductor_reason_matches_the_machine():
    import shutil
    import sysconfig
    from pathlib import Path

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler on PATH: inductor cannot build CPU kernels")
    if not (Path(sysconfig.get_path("include")) / "Python.h").exists():
        pytest.skip("no Python headers (Python.h): inductor cannot build CPU kernels")
    assert inductor_reason("cpu") is None


def test_inductor_without_a_cpp_compiler_is_refused(monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    inductor_reason.cache_clear()

    def missing():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    try:
        reason = COMPILE.check_spec(RunSpec(device="cpu"), COMPILE.parse({}))
        assert "no C++ compiler" in reason and "g++" in reason
        assert COMPILE.check_spec(RunSpec(device="cpu"), COMPILE.parse({"backend": "eager"})) is None
    finally:
        inductor_reason.cache_clear()


def test_token_merging_really_fails_under_fullgraph(tiny_pipe):
    """One of the reasons for refusing compile with the UNet hook knobs, measured: dynamo cannot trace it."""
    torch._dynamo.reset()
    tome = KNOBS["token_merging"]
    settings = tome.parse({"ratio": 0.5})
    applied = tome.apply(tiny_pipe, settings)
    hooked = tiny_pipe.unet.forward
    tiny_pipe.unet.forward = torch.compile(hooked, backend="eager", fullgraph=True)
    try:
        with pytest.raises(Exception, match="torch.Generator|opaque object"):
            _images(tiny_pipe, applied.call_kwargs)
    finally:
        tiny_pipe.unet.forward = hooked
        applied.undo()
    assert set(COMPILE_CONFLICTS) == {"deepcache", "cross_attention_cache", "token_merging"}
    assert set(FULLGRAPH_CONFLICTS) == {"transformer_cache"}


def test_runtime_support_checks(tiny_pipe, monkeypatch):
    # a half precision runs where its probe passes; where the build has no kernel, supports says which failed
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        probe, reason = dtype_probe_reason("cpu", dtype), CP.supports(tiny_pipe, CP.parse({"denoiser": name}))
        if probe is None:
            assert reason is None
        else:
            assert reason.startswith(f"{name} does not run on cpu") and probe in reason
    monkeypatch.setitem(studio_core.knobs.component_precision._PROBED, ("cpu", torch.float16),
                        'RuntimeError: "addmm" not implemented for \'Half\'')
    reason = CP.supports(tiny_pipe, CP.parse({"denoiser": "fp16"}))
    assert reason.startswith("fp16 does not run on cpu") and "not implemented for 'Half'" in reason
    monkeypatch.undo()
    assert "No viable backend" in ATTN.supports(tiny_pipe, ATTN.parse({"backend": "efficient"}))
    assert ATTN.supports(tiny_pipe, ATTN.parse({"backend": "flash"})) is None
    assert sdpa_probe_reason("math", "cpu", torch.float16, 2, 16) is None
    assert "CUDA graphs" in COMPILE.supports(tiny_pipe, COMPILE.parse({"mode": "reduce-overhead"}))
    applied = COMPILE.apply(tiny_pipe, COMPILE.parse({"backend": "eager"}))
    try:
        assert "already compiled" in COMPILE.supports(tiny_pipe, COMPILE.parse({}))
    finally:
        applied.undo()
    assert COMPILE.supports(tiny_pipe, COMPILE.parse({"backend": "eager"})) is None
    assert COMPILE.supports(tiny_pipe, COMPILE.parse({})) == inductor_reason("cpu")  # None where g++ is found


# ------------------------------------------------------------------------------------------ component precision
def test_component_precision_loads_bridges_reports_and_undoes(tiny_pipeline_dir, tmp_path):
    _skip_without_cpu_kernels(torch.bfloat16, torch.float16)
    settings = CP.parse({"denoiser": "bf16", "vae": "fp16"})
    assert CP.load_options(settings) == {"component_dtypes": (("denoiser", "bf16"), ("vae", "fp16"))}
    assert CP.load_options(CP.parse({})) == {}
    engine = Engine(RunStore(tmp_path))
    info = resolve(_spec(tiny_pipeline_dir, {"component_precision": {"denoiser": "bf16", "vae": "fp16"}}))[1]
    pipe, _ = engine.pipeline(info, "cpu", {"dtype": "fp32", **CP.load_options(settings)})
    plain, _ = engine.pipeline(info, "cpu", {"dtype": "fp32"})
    assert pipe is not plain  # a pipeline of its own: cached pipelines never carry cast weights
    assert (pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype) == (torch.bfloat16, torch.float32, torch.float16)
    assert CP.supports(pipe, settings) is None
    with pytest.raises(RuntimeError):  # without the knob's casts the components cannot talk to each other
        _images(pipe)
    base = _images(plain)
    images, report = _run(CP, pipe, settings)
    assert report.active and report.details["component_dtype"] == {"denoiser": "bf16", "text_encoder": "fp32",
                                                                    "vae": "fp16"}
    assert "text_encoder fp32 -> denoiser bf16" in report.summary
    assert 0 < np.abs(images - base).max() < 0.1  # close to fp32, not equal
    hooks = [m._forward_pre_hooks for m in (pipe.unet, pipe.text_encoder, *pipe.vae.children())]
    assert all(len(h) == 0 for h in hooks)  # undo removed every cast
    # the same knob on the plain fp32 pipeline: nothing asked for differs, and undo leaves it exact
    images, report = _run(CP, plain, CP.parse({"vae": "fp32"}))
    assert not report.active and "already run in the run's precision" in report.summary
    assert np.array_equal(images, base) and np.array_equal(_images(plain), base)
    images, report = _run(CP, plain, CP.parse({"vae": "fp16"}))  # not loaded with the option: said plainly
    assert not report.active and "not as asked" in report.summary


def test_component_precision_in_an_engine_run(tiny_pipeline_dir, tmp_path):
    _skip_without_cpu_kernels(torch.bfloat16)
    engine = Engine(RunStore(tmp_path))
    spec = {"model": str(tiny_pipeline_dir), "prompts": ["grinning face"], "seeds": [0], "steps": 2, "guidance": 2.0,
            "warmup": 1, "repeats": 1, "device": "cpu", "precision": "bf16",
            "knobs": {"component_precision": {"vae": "fp32"}}}
    run = engine.run(spec, reference=REF)
    assert run.status == "ok", run.error
    report = {r["knob"]: r for r in run.row["knob_report"]}["component_precision"]
    assert report["active"] and report["details"]["component_dtype"]["vae"] == "fp32"
    assert report["details"]["run_precision"] == "bf16" and not run.row["knobs_inactive"]


# ------------------------------------------------------------------------------------------ attention kernel
def test_attention_backend_runs_the_chosen_kernel_and_undoes(tiny_pipe):
    base, state = _images(tiny_pipe), _state(tiny_pipe.unet)
    # the tiny UNet calls SDPA 8 times per denoiser call (self- and cross-attention of 4 transformer blocks);
    # with one kernel allowed, PyTorch runs it or raises, so every call counted ran the chosen kernel
    math, report = _run(ATTN, tiny_pipe, ATTN.parse({"backend": "math"}))
    assert report.active and report.details["kernels"] == {"math": 8} and "math kernel ran 8 time(s)" in report.summary
    assert np.abs(math - base).max() < 1e-4
    flash = ATTN.parse({"backend": "flash"})
    refused = ATTN.supports(tiny_pipe, flash)  # PyTorch's tiled CPU kernel, where this build has one
    if refused is None:
        images, report = _run(ATTN, tiny_pipe, flash)
        assert report.active and report.details["kernels"] == {"flash": 8} and report.details["sdpa_calls"] == 8
        assert np.abs(images - base).max() < 1e-4
    else:
        assert refused.startswith("the flash SDPA kernel cannot run here")
    assert np.array_equal(_images(tiny_pipe), base) and _same_state(state, _state(tiny_pipe.unet))
    assert not getattr(tiny_pipe.unet, "_diffusers_hook", None) or not tiny_pipe.unet._diffusers_hook.hooks


# ------------------------------------------------------------------------------------------ memory layout
def test_memory_layout_converts_undoes_exactly_and_says_when_slicing_and_tiling_did_nothing(tiny_pipe):
    base, unet_state, vae_state = _images(tiny_pipe), _state(tiny_pipe.unet), _state(tiny_pipe.vae)
    settings = MEM.parse({"channels_last": True, "vae_slicing": True, "vae_tiling": True})
    images, report = _run(MEM, tiny_pipe, settings)  # one 32 px image: one tile, one image per decode
    assert report.active and report.details["channels_last"]["denoiser"]["converted"] > 0
    assert report.details["channels_last_now"]["denoiser"] == report.details["channels_last"]["denoiser"]["weights_4d"]
    assert "VAE slicing did nothing: every pipeline call decodes one image" in report.summary
    assert "VAE tiling did nothing: the latent (16x16) is not larger than the VAE's tile" in report.summary
    assert np.abs(images - base).max() < 1e-4
    assert np.array_equal(_images(tiny_pipe), base)
    assert _same_state(unet_state, _state(tiny_pipe.unet)) and _same_state(vae_state, _state(tiny_pipe.vae))
    assert not tiny_pipe.vae.use_slicing and not tiny_pipe.vae.use_tiling and "_decode" not in tiny_pipe.vae.__dict__

    base2 = _images(tiny_pipe, size=64, n=2)
    images, report = _run(MEM, tiny_pipe, MEM.parse({"channels_last": False, "vae_slicing": True, "vae_tiling": True}),
                          size=64, n=2)
    assert report.active and "decoded batches of 2 one image at a time" in report.summary
    assert report.details["tiled_decodes"] == 2 and "in tiles of 16 latent px" in report.summary
    assert np.abs(images - base2).max() > 0  # tiles are blended: not the same image
    assert np.array_equal(_images(tiny_pipe, size=64, n=2), base2)


# ------------------------------------------------------------------------------------------ compile
def test_compile_reports_compile_time_and_recompiles_on_a_new_resolution_and_undoes(tiny_pipe):
    torch._dynamo.reset()
    base32, base24, state = _images(tiny_pipe), _images(tiny_pipe, size=24), _state(tiny_pipe.unet)
    original = tiny_pipe.unet
    settings = COMPILE.parse({"backend": "eager"})
    images, first = _run(COMPILE, tiny_pipe, settings)
    d = first.details
    assert first.active and d["compile_ms"] > 0 and d["compile_ms_first_call"] == d["compile_ms"]
    assert d["graphs"] == 1 and d["recompiles"] == 0 and d["late_compiles"] == 0 and d["graph_breaks"] == 0
    assert d["calls"] == {"unet": 2} and "compiled in" in first.summary  # one call per step
    assert np.array_equal(images, base32)  # the eager backend runs the traced graph's ops as they are
    assert tiny_pipe.unet is original and np.array_equal(_images(tiny_pipe), base32)

    images, again = _run(COMPILE, tiny_pipe, settings)  # same shapes: dynamo's cache serves the graph
    assert again.active and again.details["frame_compiles"] == 0 and "no compile in this run" in again.summary

    images, other = _run(COMPILE, tiny_pipe, settings, size=24)  # another resolution: a recompile, with reason
    d = other.details
    assert d["recompiles"] >= 1 and d["compile_ms"] > 0 and "size mismatch" in d["recompile_reasons"][0]
    assert "recompile" in other.summary and np.array_equal(images, base24)
    assert tiny_pipe.unet is original and _same_state(state, _state(tiny_pipe.unet))
    assert np.array_equal(_images(tiny_pipe), base32)


@pytest.mark.slow
def test_inductor_compile_of_the_tiny_pipeline_is_close_and_undo_is_exact(tiny_pipeline_dir):
    reason = inductor_reason("cpu")
    if reason:
        pytest.skip(f"inductor cannot build CPU kernels here: {reason}")
    pipe = load_pipeline(tiny_pipeline_dir)
    base = _images(pipe)
    torch._dynamo.reset()
    images, report = _run(COMPILE, pipe, COMPILE.parse({"components": "denoiser+vae"}))
    assert report.active and report.details["graphs"] == 2 and report.details["compile_ms"] > 0
    assert np.abs(images - base).max() < 1e-4
    assert np.array_equal(_images(pipe), base) and type(pipe.unet).__name__ == "UNet2DConditionModel"


# ------------------------------------------------------------------------------------------ on CUDA
@pytest.fixture
def cuda_pipe(tiny_pipeline_dir):
    """A tiny pipeline of its own on the GPU (a CUDA graph or a kernel choice must not leak into other tests)."""
    pipe = load_pipeline(tiny_pipeline_dir, device="cuda")
    yield pipe
    del pipe
    torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("backend, precision", [("flash", torch.float16), ("efficient", torch.float32)])
def test_cuda_sdpa_kernel_is_the_one_counted(cuda_pipe, backend, precision):
    """FlashAttention-2 takes half precision only; the memory-efficient kernel takes fp32 too."""
    pipe = cuda_pipe.to(dtype=precision)
    settings = ATTN.parse({"backend": backend})
    assert ATTN.supports(pipe, settings) is None
    base = _images(pipe)
    images, report = _run(ATTN, pipe, settings)
    assert report.active and report.details["kernels"] == {backend: 8} and report.details["sdpa_calls"] == 8
    assert f"{backend} kernel ran 8 time(s)" in report.summary
    assert np.isfinite(images).all() and np.abs(images - base).max() < 1e-2
    assert np.array_equal(_images(pipe), base)  # undo: the default kernel choice again


@pytest.mark.gpu
def test_cuda_compile_with_cuda_graphs(cuda_pipe):
    """mode reduce-overhead records the compiled UNet as CUDA graphs (refused off CUDA, see above)."""
    from torch._dynamo.utils import counters
    from torch._inductor.cudagraph_trees import get_manager

    settings = COMPILE.parse({"mode": "reduce-overhead"})
    assert COMPILE.check_spec(RunSpec(device="cuda"), settings) is None
    assert COMPILE.supports(cuda_pipe, settings) is None
    torch._dynamo.reset()
    base = _images(cuda_pipe)
    skips = counters["inductor"]["cudagraph_skips"]
    applied = COMPILE.apply(cuda_pipe, settings)
    try:
        with applied.instrument():
            first = _images(cuda_pipe, applied.call_kwargs)
        again = _images(cuda_pipe, applied.call_kwargs)  # replays the recorded graphs
        report = applied.report()
    finally:
        applied.undo()
    d = report.details
    assert report.active and d["mode"] == "reduce-overhead" and d["graphs"] >= 1 and d["compile_ms"] > 0
    assert d["late_compiles"] == 0 and d["calls"] == {"unet": 4}
    assert counters["inductor"]["cudagraph_skips"] == skips  # no graph fell back to plain kernels
    assert get_manager(torch.cuda.current_device(), create_if_none_exists=False) is not None
    assert np.abs(first - again).max() < 1e-5 and np.abs(first - base).max() < 1e-2
    assert np.array_equal(_images(cuda_pipe), base)  # undo: the eager UNet again
    torch._dynamo.reset()
