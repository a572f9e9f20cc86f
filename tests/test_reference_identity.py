"""A reference is reused only for the same model files (by content, every weights format the loader reads),
device type, precision policy, library versions and reference configuration; references run with TF32 off."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from app import cards
from studio_core import fingerprint
from studio_core.measure import reference as reference_module
from studio_core.measure.engine import Engine
from studio_core.measure.reference import reference_key, reference_spec, tf32_off
from studio_core.spec import RunSpec, model_info, resolve
from studio_core.store.store import RunStore

REF = {"sampler": "DPM++ 2M", "steps": 4}


def _spec(model, **kw):
    return {"model": str(model), "prompts": ["grinning face"], "seeds": [0, 1], "steps": 2, "guidance": 2.0,
            "repeats": 1, **kw}


@pytest.fixture
def bin_pipeline(tmp_path, tiny_pipeline_dir):
    """A copy of the tiny pipeline whose UNet is saved as a pickled ``.bin`` instead of safetensors."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    assert [f.name for f in (folder / "unet").glob("*.bin")] == ["diffusion_pytorch_model.bin"]
    return folder


def _wait_for_fs_clock_past(path, probe):
    """Until the file system stamps a new write later than ``path``'s last change (coarse clocks tick in ms)."""
    while True:
        probe.write_bytes(b"")
        if os.stat(probe).st_ctime_ns > os.stat(path).st_ctime_ns:
            return


def _rewrite_keeping_size_and_mtime(path, change):
    """Rewrite ``path`` through ``change(bytes) -> bytes`` of the same length, then set its old times back."""
    before = os.stat(path)
    data = change(path.read_bytes())
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_changed_bin_weight_gives_a_new_fingerprint_pipeline_and_reference(tmp_path, bin_pipeline):
    engine = Engine(RunStore(tmp_path / "study"))
    try:
        first = engine.run(_spec(bin_pipeline), reference=REF)
        assert first.status == "ok", first.error
        old_print = model_info(str(bin_pipeline)).fingerprint
        assert {k[1] for k in engine._pipes} == {old_print}
        # one tensor of the .bin changed, same size and mtime: only the content tells
        weights = bin_pipeline / "unet" / "diffusion_pytorch_model.bin"
        state = torch.load(weights, weights_only=True)
        name = next(k for k, v in state.items() if v.ndim == 4)
        state[name] = state[name] + 0.5
        _wait_for_fs_clock_past(weights, tmp_path / "probe")
        changed = tmp_path / "changed" / weights.name  # torch.save names the archive's folder after the file
        changed.parent.mkdir()
        torch.save(state, changed)
        _rewrite_keeping_size_and_mtime(weights, lambda _old: changed.read_bytes())

        new_print = model_info(str(bin_pipeline)).fingerprint
        assert new_print != old_print
        second = engine.run(_spec(bin_pipeline), reference=REF)
        assert second.status == "ok", second.error
        rows = [engine.store.get_run(r.run_id) for r in (first, second)]
        assert [r["model_fingerprint"] for r in rows] == [old_print, new_print]
        assert rows[1]["load_ms"] > 0 and {k[1] for k in engine._pipes} == {new_print}  # reloaded, old dropped
        assert rows[0]["reference_id"] != rows[1]["reference_id"]
        refs = [engine.store.reference_images(r["reference_id"]) for r in rows]
        assert not np.array_equal(refs[0], refs[1])  # the new reference is of the new weights
    finally:
        engine.store.close()


def test_the_fingerprint_covers_every_file_the_loader_reads_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "RACY_S", -3600.0)  # trust even a file written a moment ago
    folder = tmp_path / "pipe"
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None]}
    read = {"model_index.json": json.dumps(index), "unet/config.json": "{}", "unet/w.safetensors": "s" * 64,
            "unet/w.bin": "b" * 64, "unet/w.pt": "p" * 64, "unet/w.ckpt": "c" * 64, "tokenizer/merges.txt": "m",
            "tokenizer/spiece.model": "sp"}
    ignored = {"README.md": "r", "gallery.png": "g", "training_report.json": "{}", "unet/notes.md": "n",
               "unet/.lock.bin": "l", "other/w.bin": "o"}
    for rel, text in {**read, **ignored}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    assert sorted(p.relative_to(folder).as_posix() for p in fingerprint.model_files(folder, index)) == sorted(read)
    base = fingerprint.model_fingerprint(folder, index)
    assert fingerprint.model_fingerprint(folder, index) == base  # stable, and now every file is cached
    probe = tmp_path / "probe"
    for rel in list(read)[1:] + list(ignored):
        path = folder / rel
        _wait_for_fs_clock_past(path, probe)
        old = path.read_bytes()
        _rewrite_keeping_size_and_mtime(path, lambda data: bytes([data[0] ^ 1]) + data[1:])
        assert (fingerprint.model_fingerprint(folder, index) != base) == (rel in read), rel
        _wait_for_fs_clock_past(path, probe)
        path.write_bytes(old)
        assert fingerprint.model_fingerprint(folder, index) == base, rel


def test_a_file_changed_moments_before_hashing_is_not_cached(tmp_path, monkeypatch):
    """A coarse file-system clock can give an edit right after hashing the same size, times and inode, so a
    file changed within ``RACY_S`` of its hash is hashed again next time ('racy clean', as git does)."""
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 32)
    real = os.path.realpath(path)
    digest = fingerprint.file_sha256(path)
    assert real not in fingerprint._DIGESTS  # written a moment ago: not trusted
    monkeypatch.setattr(fingerprint, "RACY_S", -3600.0)  # as if it had been written an hour ago
    assert fingerprint.file_sha256(path) == digest and fingerprint._DIGESTS[real][1] == digest


def test_reference_key_names_device_type_versions_and_reference_guidance(tiny_pipeline_dir, monkeypatch):
    spec, info = resolve(RunSpec.from_dict(_spec(tiny_pipeline_dir, device="cpu")))
    ref = reference_spec(spec, info, REF)
    key = reference_key(ref, info, "cpu")
    assert reference_key(reference_spec(spec, info, REF), info, "cpu") == key  # the same inputs, the same key
    assert reference_key(ref, info) == key  # the reference's own device, when none is given
    assert reference_key(ref, info, "cuda") != key and reference_key(ref, info, "cuda") == reference_key(
        ref, info, "cuda:1")  # device type: cuda:0 and cuda:1 share one
    assert reference_key(reference_spec(spec, info, {**REF, "guidance": 5.0}), info, "cpu") != key
    # one guidance per reference: the run's own guidance does not change it (see reference.py's docstring)
    cfg_off, _ = resolve(RunSpec.from_dict(_spec(tiny_pipeline_dir, device="cpu", guidance=1.0)))
    assert reference_key(reference_spec(cfg_off, info, REF), info, "cpu") == key
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert reference_key(ref, info, "cpu") != key
    monkeypatch.undo()
    import diffusers

    monkeypatch.setattr(diffusers, "__version__", "9.9.9")
    assert reference_key(ref, info, "cpu") != key


def test_tf32_off_turns_tf32_off_inside_and_restores_the_legacy_flags():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True  # a user's TF32 on: the reference must not inherit it
        with tf32_off():
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        with pytest.raises(KeyError), tf32_off():
            raise KeyError("a failed reference")
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_tf32_off_keeps_to_the_per_operator_api_where_flags_were_set_through_it():
    """torch refuses the legacy read once conv and RNN flags were set apart through ``fp32_precision``."""
    ops = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    saved = [op.fp32_precision for op in ops]
    try:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision = "tf32", "ieee"
        with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
            torch.backends.cudnn.allow_tf32
        before = [op.fp32_precision for op in ops]
        with tf32_off():
            assert [op.fp32_precision for op in ops] == ["ieee"] * 3
        assert [op.fp32_precision for op in ops] == before
    finally:
        for op, value in zip(ops, saved):
            op.fp32_precision = value
    assert isinstance(torch.backends.cudnn.allow_tf32, bool)  # the legacy read works again


def test_the_reference_is_generated_with_tf32_off(tmp_path, tiny_pipeline_dir, monkeypatch):
    seen = []
    real_generate = reference_module.generate

    def recording_generate(*args, **kwargs):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(reference_module, "generate", recording_generate)
    saved = torch.backends.cudnn.allow_tf32
    engine = Engine(RunStore(tmp_path / "study"))
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert engine.run(_spec(tiny_pipeline_dir), reference=REF).status == "ok"
        assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = saved
        engine.store.close()


def test_the_card_says_the_reference_guidance_when_the_run_has_another():
    row = {"id": 7, "status": "ok", "n_images": 1, "psnr": 30.0, "ssim": 0.9, "guidance": 1.0}
    reference = {"id": 2, "sampler": "DPM++ 2M", "steps": 200, "precision": "fp32", "guidance": 7.5}
    text = cards.metrics_card(row, reference)
    assert ("**reference at guidance 7.5**, this run at guidance 1: the scores include the change of guidance"
            in text)
    assert "reference at guidance" not in cards.metrics_card({**row, "guidance": 7.5}, reference)
