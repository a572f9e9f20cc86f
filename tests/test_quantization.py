"""Quantization knob: what runs on this CPU, each refusal and its reason, the report, and that a quantized
run leaves the next run's pipeline exactly as it was (the engine reloads it: ``undo=None``)."""

import importlib.metadata
import sys

import numpy as np
import pytest
import torch

import studio_core.knobs.quantization as Q
from studio_core.errors import SpecError
from studio_core.knobs import KNOBS
from studio_core.knobs.quantization import QuantizationSettings, tensor_bytes, weight_bytes
from studio_core.measure.engine import Engine, image_metrics
from studio_core.spec import RunSpec, model_info, resolve
from studio_core.store.store import RunStore

KNOB = KNOBS["quantization"]
REF = {"sampler": "DDIM", "steps": 4}
PROMPTS = ["grinning face", "red heart"]


def _images(pipe, steps=4):
    return pipe(PROMPTS, num_inference_steps=steps, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]).images


def _to8(x):
    return (x * 255).round().clip(0, 255).astype("uint8")


@pytest.fixture
def fresh_embedded():
    """An embedded pipeline of its own (quantizing the shared session fixture would spoil other tests)."""
    from studio_core.models import load_pipeline

    return load_pipeline("emoji-sd")


# ------------------------------------------------------------------------------------------ settings
def test_registered_with_defaults():
    assert KNOB.title == "Quantization (torchao / bitsandbytes)" and KNOB.order == 70
    s = KNOB.parse({})
    assert s == QuantizationSettings() and s.scheme == "int8_weight_only" and s.components == "denoiser"
    assert not KNOB.is_baseline(s)


@pytest.mark.parametrize("raw, field", [({"scheme": "int2"}, "scheme"), ({"components": "vae"}, "components"),
                                        ({"min_features": -1}, "min_features"), ({"min_features": 1.5}, "min_features"),
                                        ({"group_size": 48}, "group_size"), ({"group_size": True}, "group_size"),
                                        ({"bits": 8}, "bits")])
def test_bad_settings_name_the_field(raw, field):
    with pytest.raises(SpecError) as e:
        KNOB.parse(raw)
    assert e.value.field == f"knobs.quantization.{field}"


# ------------------------------------------------------------------------------------------ refusals
def _resolve(scheme, **spec):
    fields = {"prompts": ("grinning face",), "device": "cpu", "knobs": {"quantization": {"scheme": scheme}}}
    return resolve(RunSpec(**{**fields, **spec}))


def test_device_bound_schemes_need_a_visible_cuda_device_for_device_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: device cuda is allowed here")
    with pytest.raises(SpecError) as e:
        _resolve("fp8_dynamic", device="cuda")
    assert e.value.field == "device" and "no CUDA device is visible" in str(e.value)


def test_cpu_refusals_before_any_work():
    for scheme in ("int8_weight_only", "int8_dynamic", "fp8_weight_only"):
        for precision in ("fp32", "fp16", "bf16"):
            _resolve(scheme, precision=precision)  # all of these run on CPU (checked below and in the benchmark)
    with pytest.raises(SpecError) as e:
        _resolve("fp8_dynamic")
    assert e.value.field == "knobs.quantization" and "compute capability >= 8.9" in str(e.value)
    assert "this run is on CPU" in str(e.value)
    with pytest.raises(SpecError) as e:
        _resolve("int4_weight_only", precision="bf16")
    assert "int4 weight-only needs CUDA" in str(e.value)


def test_gpu_refusals_name_the_device_capability(monkeypatch):
    monkeypatch.setattr(Q, "_capability", lambda device: ("NVIDIA A100-SXM4-80GB", (8, 0)))
    r = Q._hardware_reason("fp8_dynamic", "cuda", "bf16")
    assert "compute capability >= 8.9" in r and "NVIDIA A100-SXM4-80GB has 8.0" in r
    assert Q._hardware_reason("fp8_weight_only", "cuda", "fp16") is None
    assert "needs bf16 weights" in Q._hardware_reason("int4_weight_only", "cuda", "fp16")
    assert Q._hardware_reason("int4_weight_only", "cuda", "bf16") is None
    monkeypatch.setattr(Q, "_capability", lambda device: ("Tesla T4", (7, 5)))
    assert "needs compute capability >= 8.0; Tesla T4 has 7.5" in Q._hardware_reason("int4_weight_only", "cuda", "bf16")
    monkeypatch.setattr(Q, "_capability", lambda device: ("NVIDIA H100", (9, 0)))
    assert Q._hardware_reason("fp8_dynamic", "cuda", "fp32") is None


def test_check_spec_reads_the_component_precision_of_the_quantized_components(monkeypatch):
    import studio_core.measure.environment as environment

    monkeypatch.setattr(environment, "resolve_device", lambda device: device)  # as on a CUDA machine
    monkeypatch.setattr(Q, "_capability", lambda device: ("NVIDIA H100", (9, 0)))
    settings = QuantizationSettings(scheme="int4_weight_only")
    spec = RunSpec(prompts=("x",), device="cuda", precision="fp32")
    assert "needs bf16 weights" in KNOB.check_spec(spec, settings)
    bf16_denoiser = RunSpec(prompts=("x",), device="cuda", precision="fp32",
                            knobs={"component_precision": {"denoiser": "bf16"}})
    assert KNOB.check_spec(bf16_denoiser, settings) is None
    assert "needs bf16 weights" in KNOB.check_spec(bf16_denoiser, QuantizationSettings(scheme="int4_weight_only",
                                                                                       components="all"))


def test_library_refusals(monkeypatch):
    real_find = Q.importlib.util.find_spec
    monkeypatch.setattr(Q.importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real_find(n, *a))
    with pytest.raises(SpecError) as e:
        _resolve("bnb_8bit")
    assert "bitsandbytes is not installed" in str(e.value) and "requirements-gpu.txt" in str(e.value)

    real_version = importlib.metadata.version

    def version(name, old=None):
        if name != "torchao":
            return real_version(name)
        if old is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return old

    monkeypatch.setattr(Q.importlib.metadata, "version", version)
    assert "torchao is not installed" in Q._package_reason("int8_weight_only")
    monkeypatch.setattr(Q.importlib.metadata, "version", lambda n: version(n, "0.12.0"))
    assert "torchao 0.12.0 is older than 0.18.0" in Q._package_reason("int8_dynamic")
    with pytest.raises(SpecError):
        _resolve("int8_weight_only")


def test_import_failure_and_trial_failure_give_the_library_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # "import torchao.quantization" now fails
    assert Q._torchao_import_reason.__wrapped__().startswith("torchao failed to import: ModuleNotFoundError")
    monkeypatch.undo()
    # int4 has no CPU path: the trial quantization on this device says so in torchao's own words
    r = Q._trial_reason("int4_weight_only", "cpu", torch.bfloat16, 64)
    assert r.startswith("int4_weight_only failed a trial on cpu (bf16)")
    assert Q._trial_reason("int8_dynamic", "cpu", torch.float32, 64) is None


def test_int8_dynamic_trial_in_half_precision_on_cpu():
    from studio_core.knobs.component_precision import dtype_probe_reason

    reason = dtype_probe_reason("cpu", torch.float16)
    if reason:
        pytest.skip(f"this PyTorch build cannot run fp16 on CPU: {reason}")
    assert Q._trial_reason("int8_dynamic", "cpu", torch.float16, 64) is None


def test_supports_on_the_loaded_pipeline(tiny_pipeline_dir):
    from studio_core.models import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    for scheme in ("int8_weight_only", "int8_dynamic", "fp8_weight_only"):
        assert KNOB.supports(pipe, QuantizationSettings(scheme=scheme, components="all")) is None
    assert "compute capability >= 8.9" in KNOB.supports(pipe, QuantizationSettings(scheme="fp8_dynamic"))
    assert "needs CUDA" in KNOB.supports(pipe, QuantizationSettings(scheme="int4_weight_only"))
    KNOB.apply(pipe, QuantizationSettings())
    assert "already quantized" in KNOB.supports(pipe, QuantizationSettings(scheme="int8_dynamic"))


def test_components_refused_when_the_model_has_no_text_encoder(tiny_pipeline_dir, tmp_path):
    import dataclasses
    import json

    info = model_info(str(tiny_pipeline_dir))
    assert KNOB.check_model(info, QuantizationSettings(components="denoiser+text_encoder")) is None
    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    bare = dataclasses.replace(info, path=str(tmp_path))
    assert "no text encoder" in KNOB.check_model(bare, QuantizationSettings(components="denoiser+text_encoder"))
    assert KNOB.check_model(bare, QuantizationSettings(components="all")) is None


# ------------------------------------------------------------------------------------------ effect
def test_tensor_bytes_counts_the_quantized_inner_tensors():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    m = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False))
    assert weight_bytes(m) == 256 * 128 * 4
    quantize_(m, Int8WeightOnlyConfig())
    w = m[0].weight
    assert w.numel() * w.element_size() == 256 * 128 * 4  # what the subclass claims: the fp32 it stands for
    assert tensor_bytes(w) == 256 * 128 + 128 * 4 + 128  # int8 data + fp32 row scales + int8 zero points
    assert weight_bytes(m) == tensor_bytes(w)


def test_int8_on_cpu_is_close_smaller_and_reported(fresh_embedded):
    base = _images(fresh_embedded)
    unet_bytes = weight_bytes(fresh_embedded.unet)
    applied = KNOB.apply(fresh_embedded, QuantizationSettings(scheme="int8_weight_only"))
    assert applied.undo is None  # irreversible in place: the engine reloads the pipeline
    images = _images(fresh_embedded)
    report = applied.report()
    d = report.details
    assert np.isfinite(images).all() and not np.array_equal(_to8(images), _to8(base))
    assert image_metrics(_to8(images), _to8(base))["psnr"] > 20
    assert report.active and d["scheme"] == "int8_weight_only" and d["components"] == ["unet"]
    assert d["linear_quantized"] == d["linear_total"] == 83 and d["linear_skipped"] == 0 and d["conv_unquantized"] == 49
    assert d["weight_bytes_after"] < d["weight_bytes_before"] == unet_bytes
    assert d["weight_bytes_after"] == weight_bytes(fresh_embedded.unet)
    assert "83 of 83 Linear layers quantized, 49 conv layers not quantized" in report.summary
    assert "MiB" in report.summary


def test_min_features_skips_small_layers_and_nothing_quantized_is_inactive(tiny_pipeline_dir):
    from studio_core.models import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    sizes = sorted(min(m.in_features, m.out_features) for m in pipe.unet.modules() if type(m) is torch.nn.Linear)
    cut = sizes[-1]  # the widest layers only
    report = KNOB.apply(pipe, QuantizationSettings(scheme="int8_dynamic", min_features=cut)).report()
    d = report.details
    assert report.active and d["linear_skipped_small"] == sum(s < cut for s in sizes) > 0
    assert d["linear_quantized"] == sum(s >= cut for s in sizes)
    assert all(r == f"smaller than min_features={cut}" for r in d["skipped_layers"].values())

    pipe = load_pipeline(tiny_pipeline_dir)
    before = weight_bytes(pipe.unet)
    report = KNOB.apply(pipe, QuantizationSettings(min_features=10**6)).report()
    assert not report.active and "nothing quantized" in report.summary and "smaller than min_features" in report.summary
    assert report.details["weight_bytes_after"] == before == report.details["weight_bytes_before"]


def test_skip_reasons_name_the_shape_rule():
    s = QuantizationSettings
    assert Q._skip_reason(torch.nn.Linear(96, 64), s(scheme="int4_weight_only", group_size=64)) == (
        "96 input features are not a multiple of group_size 64")
    assert "needs both sides multiples of 16" in Q._skip_reason(torch.nn.Linear(64, 40), s(scheme="fp8_dynamic"))
    assert Q._skip_reason(torch.nn.Linear(8, 64), s(min_features=16)) == "smaller than min_features=16"


def test_bitsandbytes_when_installed(tiny_pipeline_dir):
    pytest.importorskip("bitsandbytes")
    from studio_core.models import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    base = _images(pipe)
    for scheme in ("bnb_8bit", "bnb_4bit"):
        pipe = load_pipeline(tiny_pipeline_dir)
        settings = QuantizationSettings(scheme=scheme)
        reason = KNOB.supports(pipe, settings)
        if reason:  # no bitsandbytes backend for this device: the refusal names the library's error
            assert "failed a trial" in reason
            continue
        report = KNOB.apply(pipe, settings).report()
        images = _images(pipe)
        assert report.active and report.details["library"].startswith("bitsandbytes")
        assert report.details["weight_bytes_after"] < report.details["weight_bytes_before"]
        assert np.isfinite(images).all() and image_metrics(_to8(images), _to8(base))["psnr"] > 15


def test_a_failed_quantization_puts_every_weight_back(tiny_pipeline_dir, monkeypatch):
    from studio_core.models import load_pipeline

    pipe = load_pipeline(tiny_pipeline_dir)
    originals = dict(pipe.unet.named_parameters()) | dict(pipe.text_encoder.named_parameters())
    real = Q.quantize_linears
    calls = []

    def fail_second(root, *args):
        calls.append(root)
        if len(calls) == 2:
            raise RuntimeError("boom")
        real(root, *args)

    monkeypatch.setattr(Q, "quantize_linears", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        KNOB.apply(pipe, QuantizationSettings(components="all"))
    after = dict(pipe.unet.named_parameters()) | dict(pipe.text_encoder.named_parameters())
    assert after.keys() == originals.keys() and all(after[n] is originals[n] for n in originals)


# ------------------------------------------------------------------------------------------ engine
def test_engine_reloads_after_a_quantized_run_and_stores_the_report(tiny_pipeline_dir, tmp_path):
    engine = Engine(RunStore(tmp_path))
    spec = {"model": str(tiny_pipeline_dir), "prompts": PROMPTS, "seeds": [0], "steps": 3, "guidance": 2.0,
            "warmup": 1, "repeats": 1}
    plain = engine.run(spec, reference=REF)
    assert plain.status == "ok", plain.error
    cached = next(iter(engine._pipes.values()))
    quant = engine.run({**spec, "knobs": {"quantization": {"scheme": "int8_weight_only", "components": "all"}}},
                       reference=REF)
    assert quant.status == "ok", quant.error
    assert all(p is not cached for p in engine._pipes.values())  # the quantized pipeline was dropped
    (rep,) = [r for r in quant.row["knob_report"] if r["knob"] == "quantization"]
    assert rep["knob"] == "quantization" and rep["active"] and rep["details"]["scheme"] == "int8_weight_only"
    assert rep["details"]["weight_bytes_after"] < rep["details"]["weight_bytes_before"]
    assert not quant.row["knobs_inactive"] and not np.array_equal(quant.images, plain.images)
    again = engine.run(spec, reference=REF)
    assert again.status == "ok" and np.array_equal(again.images, plain.images)  # a clean copy, exactly
    assert again.row["psnr"] == plain.row["psnr"] and quant.row["psnr"] < 100
    with pytest.raises(SpecError, match="int4 weight-only needs CUDA"):  # refused before a row is written
        engine.run({**spec, "device": "cpu", "knobs": {"quantization": {"scheme": "int4_weight_only"}}})
    assert len(engine.store.runs()) == 3


# ------------------------------------------------------------------------------------------ on CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("settings", [QuantizationSettings(scheme="fp8_dynamic"),
                                      QuantizationSettings(scheme="int4_weight_only", group_size=32)],
                         ids=["fp8_dynamic", "int4_weight_only"])
def test_cuda_only_schemes_quantize_a_tiny_pipeline_on_cuda(tiny_pipeline_dir, settings):
    import dataclasses

    from studio_core.models import load_pipeline

    reason = Q._hardware_reason(settings.scheme, "cuda", "bf16")
    if reason:
        pytest.skip(reason)  # e.g. fp8 matmuls on a GPU older than Ada / Hopper
    resolve(RunSpec(model=str(tiny_pipeline_dir), prompts=("red heart",), device="cuda", precision="bf16",
                    knobs={"quantization": dataclasses.asdict(settings)}))  # not refused before loading
    pipe = load_pipeline(tiny_pipeline_dir, device="cuda", dtype=torch.bfloat16)
    assert KNOB.supports(pipe, settings) is None
    before = weight_bytes(pipe.unet)
    applied = KNOB.apply(pipe, settings)
    images = _images(pipe)
    report = applied.report()
    d = report.details
    assert report.active and d["scheme"] == settings.scheme and d["linear_quantized"] > 0
    assert d["weight_bytes_after"] < d["weight_bytes_before"] == before
    assert d["weight_bytes_after"] == weight_bytes(pipe.unet)
    assert images.shape == (len(PROMPTS), 32, 32, 3) and np.isfinite(images).all()
