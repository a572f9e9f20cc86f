"""Resource failures: a real out-of-memory and a model that stops loading mid-session are failed runs
with their reason; the engine, and the served studio, go on working.

The out-of-memory is not mocked. The math attention kernel materialises the whole attention matrix in
one allocation; at a large enough image that single allocation is bigger than the machine's RAM and
swap together, and the kernel's overcommit check refuses it outright (``mmap`` fails with ENOMEM), so
the allocator raises at once instead of filling memory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from live import free_port

from studio_core.errors import SpecError
from studio_core.measure.engine import Engine
from studio_core.store.store import RunStore

REF = {"sampler": "DPM++ 2M", "steps": 6}
# the tiny recipe's UNet: 2 attention heads at full latent resolution, a VAE that halves each side
HEADS, VAE_FACTOR, CFG_BATCH, FP32 = 2, 2, 2, 4


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def attention_matrix_bytes(px: int) -> int:
    """Bytes of the math kernel's attention matrix for one image of px x px on the tiny model."""
    tokens = (px // VAE_FACTOR) ** 2
    return CFG_BATCH * HEADS * tokens * tokens * FP32


def oom_px() -> int:
    """The smallest size whose attention matrix is over twice RAM + swap: refused, never paged in."""
    mode = Path("/proc/sys/vm/overcommit_memory")
    if not mode.exists():
        pytest.skip("needs Linux's overcommit accounting (/proc/sys/vm/overcommit_memory)")
    if mode.read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1 grants every allocation: the OOM killer would end the test instead")
    limit = _meminfo("MemTotal") + _meminfo("SwapTotal")
    for px in (512, 768, 1024):
        if attention_matrix_bytes(px) > 2 * limit:
            return px
    pytest.skip(f"{limit / 2**30:.0f} GiB of RAM + swap: no allowed size needs more than that")


@pytest.fixture(scope="module")
def wide_pipeline_dir(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """The tiny pipeline declared at 256 px native (its UNet's sample_size; the weights do not depend
    on it), so sizes up to 1024 px are allowed."""
    out = tmp_path_factory.mktemp("wide") / "pipe"
    shutil.copytree(tiny_pipeline_dir, out)
    config = out / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 128}, indent=2))
    return out


def _spec(model, **kw) -> dict:
    return {"model": str(model), "prompts": ["grinning face"], "seeds": [0], "steps": 2, "guidance": 2.0,
            "height": 32, "width": 32, "repeats": 1, **kw}


def _too_big(model, px: int) -> dict:
    return _spec(model, height=px, width=px, knobs={"attention_backend": {"backend": "math"}})


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def engine(tmp_path):
    e = Engine(RunStore(tmp_path / "study"))
    yield e
    e.store.close()


# ------------------------------------------------------------------------------------ out of memory
def test_out_of_memory_is_a_failed_run_that_says_what_to_shrink(engine, wide_pipeline_dir):
    px = oom_px()
    assert engine.run(_spec(wide_pipeline_dir), reference=REF).status == "ok"
    resettable = _peak_rss_reset()
    r = engine.run(_too_big(wide_pipeline_dir, px), reference=REF)
    assert r.status == "failed" and r.images is None
    assert r.error.startswith("out of memory (RAM): a single allocation of ")
    gib = attention_matrix_bytes(px) / 2**30
    assert f"{gib:.1f} GiB was refused for 1 image of {px}x{px} px" in r.error
    assert "Try a smaller height/width, a smaller batch_size" in r.error and "'math' attention kernel" in r.error
    assert r.row["status"] == "failed" and r.row["error"] == r.error and r.row["finished_at"]
    if resettable:  # refused, not paged in: the process never came near the allocation it asked for
        assert _peak_rss() < 4 * 2**30
    assert not engine._pipes  # no pipeline of the failed run is kept
    again = engine.run(_spec(wide_pipeline_dir), reference=REF)
    assert again.status == "ok", again.error
    assert again.row["load_ms"] > 0  # loaded afresh
    assert [x["status"] for x in engine.store.runs()] == ["ok", "failed", "ok"]
    assert engine.store.integrity_check() == "ok"


# ------------------------------------------------------------------------------------ models that stop loading
def test_weights_truncated_mid_session_fail_the_run_naming_the_file_then_recover(engine, tiny_pipeline_dir, tmp_path):
    model = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    first = engine.run(_spec(model), reference=REF)
    assert first.status == "ok", first.error
    weights.write_bytes(good[: len(good) // 2])
    broken = engine.run(_spec(model), reference=REF)  # the files changed: the cached pipeline is not reused
    assert broken.status == "failed"
    assert broken.error.startswith(f"could not load the pipeline in {model}: {weights} cannot be read (")
    assert "SafetensorError" in broken.error and broken.error.endswith("Restore or re-copy that file, or choose "
                                                                      "another model")
    assert broken.row["model_fingerprint"] != first.row["model_fingerprint"]
    assert all(key[1] != first.row["model_fingerprint"] for key in engine._pipes)  # the old files' pipeline is gone
    weights.write_bytes(good)
    again = engine.run(_spec(model), reference=REF)
    assert again.status == "ok", again.error
    assert again.row["load_ms"] > 0
    assert [x["status"] for x in engine.store.runs()] == ["ok", "failed", "ok"]


def test_a_model_deleted_mid_session_is_a_failed_run_and_a_typo_stays_an_input_error(engine, tiny_pipeline_dir,
                                                                                    tmp_path):
    model, aside = tmp_path / "pipe", tmp_path / "aside"
    shutil.copytree(tiny_pipeline_dir, model)
    assert engine.run(_spec(model), reference=REF).status == "ok"
    model.rename(aside)
    gone = engine.run(_spec(model, steps=3), reference=REF)
    assert gone.status == "failed"
    assert gone.error == (f"model {model} failed to load: model folder not found: {model}. It ran earlier in "
                          "this session, so its folder was moved, deleted or changed since: restore it, or choose "
                          "another model")
    row = gone.row
    assert (row["status"], row["model"], row["model_path"], row["steps"]) == ("failed", str(model), str(model), 3)
    with pytest.raises(SpecError, match="model folder not found"):  # never resolved: nothing is recorded
        engine.run(_spec(tmp_path / "no-such-model"), reference=REF)
    assert engine.store.db["runs"].count == 2
    aside.rename(model)
    assert engine.run(_spec(model), reference=REF).status == "ok"
    assert engine.store.integrity_check() == "ok"


def test_a_sweep_stopped_by_a_model_that_is_gone_is_left_failed_and_resumes(engine, tiny_pipeline_dir, tmp_path):
    from studio_core.study.sweep import run_sweep, sweep_from_dict

    model, aside = tmp_path / "pipe", tmp_path / "aside"
    shutil.copytree(tiny_pipeline_dir, model)
    sweep = sweep_from_dict({"name": "gone", "base": _spec(model), "grid": {"steps": [2, 3]}, "reference": REF})
    model.rename(aside)  # after the sweep was checked, before this engine ever loaded it
    with pytest.raises(SpecError, match="model folder not found"):
        run_sweep(engine, sweep, progress=False)
    (stopped,) = engine.store.sweeps()
    assert stopped["status"] == "failed" and engine.store.db["runs"].count == 0
    aside.rename(model)
    out = run_sweep(engine, sweep, progress=False)
    assert (out["sweep_id"], out["ran"], out["status"]) == (stopped["id"], 2, "done")


# ------------------------------------------------------------------------------------ through the served page
@pytest.fixture(scope="module")
def served(tmp_path_factory, wide_pipeline_dir):
    """The studio on a free port over a fresh study folder; yields (client, store)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from gradio_client import Client

    from app.layout import build_demo

    data_dir = tmp_path_factory.mktemp("study")
    demo = build_demo(str(wide_pipeline_dir), data_dir, reference=REF)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False,
                    download_files=str(tmp_path_factory.mktemp("downloads")))
    store = RunStore(data_dir)
    yield client, store
    client.close()
    store.close()
    demo.close()


def _runs_csv(client, status: str) -> pd.DataFrame:
    _table, path = client.predict(status, "(all)", "(all)", api_name="/runs")
    return pd.read_csv(path)


def test_the_page_reports_out_of_memory_and_keeps_serving(served, wide_pipeline_dir):
    client, store = served
    px = oom_px()
    with pytest.raises(Exception, match=r"failed: out of memory \(RAM\): a single allocation") as err:
        client.predict(_too_big(wide_pipeline_dir, px), api_name="/generate")
    assert "Try a smaller height/width" in str(err.value) and "Traceback" not in str(err.value)
    failed = _runs_csv(client, "failed")  # reads still work
    (error,) = failed[failed["height"] == px]["error"]
    assert error.startswith("out of memory")
    gallery, card = client.predict(_spec(wide_pipeline_dir), api_name="/generate")  # and so do runs
    assert len(gallery) == 1 and ": ok" in card
    assert store.integrity_check() == "ok"


def test_the_page_reports_a_model_deleted_mid_session_and_recovers(served, tiny_pipeline_dir, tmp_path):
    client, store = served
    model, aside = tmp_path / "pipe", tmp_path / "aside"
    shutil.copytree(tiny_pipeline_dir, model)
    client.predict(_spec(model), api_name="/generate")
    model.rename(aside)
    with pytest.raises(Exception, match="failed to load: model folder not found") as err:
        client.predict(_spec(model), api_name="/generate")
    assert str(model) in str(err.value) and "restore it" in str(err.value)
    assert store.runs()[-1]["status"] == "failed"
    aside.rename(model)
    gallery, _card = client.predict(_spec(model), api_name="/generate")
    assert len(gallery) == 1 and store.runs()[-1]["status"] == "ok"
