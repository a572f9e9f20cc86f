"""The command line: run, sweep, export, frontier, runs, knobs; bad input exits 2 with a clear line."""

import re
from pathlib import Path

import pandas as pd
import pytest

from studio_core.cli import COMMANDS, main
from studio_core.knobs import KNOBS

ROOT = Path(__file__).resolve().parents[1]


HUMAN_ONLY = re.compile(r"\bnan\b|\bNone\b|[{}]", re.IGNORECASE)  # what no table a person reads may hold


def test_run_export_frontier_runs(tmp_path, tiny_pipeline_dir, capsys):
    d = str(tmp_path / "study")
    base = ["--data-dir", d, "run", "--model", str(tiny_pipeline_dir), "--prompt", "grinning face", "--seeds", "0",
            "1", "--guidance", "2", "--repeats", "1"]
    assert main(base + ["--steps", "2", "--sampler", "DDIM"]) == 0
    assert main(base + ["--steps", "4", "--sampler", "Euler", "--knob", "deepcache.interval=2"]) == 0
    out = capsys.readouterr().out
    assert "median latency (ms)" in out and "peak memory (MiB)" in out and "configuration" in out
    assert "DDIM (model default)" in out and "Sampler: the model's own DDIM" in out  # a baseline, not a failure
    assert "Euler · DeepCache N=2" in out and "DeepCache: " in out and "[did nothing]" not in out
    assert not HUMAN_ONLY.search(out), out
    assert main(["--data-dir", d, "export", "--csv", str(tmp_path / "runs.csv")]) == 0
    frame = pd.read_csv(tmp_path / "runs.csv")
    assert len(frame) == 2 and list(frame["sampler"]) == ["DDIM", "Euler"] and "config_json" in frame
    capsys.readouterr()
    assert main(["--data-dir", d, "frontier", "--metric", "psnr", "--cost", "latency_median_ms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Pareto front of {tiny_pipeline_dir.name} · ")  # one setup: model, device, size, ref
    assert ": PSNR (pooled, dB), higher is better, against median latency (ms): " in lines[0]
    assert re.match(r"run +model +configuration", lines[1]) and f" {tiny_pipeline_dir.name} " in lines[2]
    assert main(["--data-dir", d, "runs"]) == 0
    out = capsys.readouterr().out
    assert "Euler · DeepCache N=2" in out and not HUMAN_ONLY.search(out), out


def test_tables_name_knobs_and_failures_in_words(tmp_path, capsys):
    """A run with knobs that did and did not act, one without numbers, one that failed: labelled columns,
    fixed decimals, blanks, settings in words, the failure's reason on its own line."""
    from studio_core.store.store import RunStore

    store = RunStore(tmp_path)
    config = {"model": "emoji-sd", "prompts": ["sun"], "seeds": [0], "steps": 10, "sampler": "DPM++ 2M",
              "precision": "fp16", "knobs": {"deepcache": {"interval": 3}, "token_merging": {"ratio": 0.5}}}
    knobbed = store.start_run(config, config_hash="a")
    store.finish_run(knobbed, {
        "psnr": 31.23456, "ssim": 0.91234, "latency_median_ms": 123.456, "latency_iqr_ms": 50.0, "repeats": 3,
        "peak_mem_bytes": 3 * 2**20, "knobs_inactive": "token_merging",
        "scheduler_class": "DPMSolverMultistepScheduler",
        "knob_report": [{"knob": "deepcache", "active": True, "summary": "reused deep features 6 of 10 steps"},
                        {"knob": "token_merging", "active": False, "summary": "nothing merged: too few tokens"}]})
    bare = store.start_run({**config, "sampler": "default", "precision": "fp32", "knobs": {}}, config_hash="b")
    store.finish_run(bare, {"latency_median_ms": 80.0, "psnr": 29.0})
    failed = store.start_run({**config, "knobs": {"deepcache": {"interval": 2}}}, config_hash="c")
    store.fail_run(failed, "out of memory on the device\nTraceback follows")
    store.close()
    assert main(["--data-dir", str(tmp_path), "runs"]) == 0
    assert main(["--data-dir", str(tmp_path), "frontier"]) == 0
    runs, front = capsys.readouterr().out.split("Pareto front of ")
    lines = runs.splitlines()
    assert re.match(r"run +status +model +configuration +steps +median latency \(ms\) +latency IQR \(ms\) +"
                    r"peak memory \(MiB\) +PSNR \(pooled, dB\) +SSIM +did nothing +timing noise$", lines[0])
    assert "DPM++ 2M · fp16 · DeepCache N=3 · ToMe 50%" in lines[1] and "123.5" in lines[1] and "3.0" in lines[1]
    assert "31.23" in lines[1] and "0.912" in lines[1] and "ToMe 50%" in lines[1] and "IQR 41%" in lines[1]
    assert "(model default)" in lines[2] and "80.0" in lines[2]
    assert "failed" in lines[3] and lines[4] == f"run {failed} failed: out of memory on the device"
    assert "DeepCache N=3 · ToMe 50%" in front and "Euler" not in front
    assert not HUMAN_ONLY.search(runs + front), runs + front
    # the newest runs off the index, oldest of them first, and how many were left out
    assert main(["--data-dir", str(tmp_path), "runs", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "(model default)" in lines[1] and "failed" in lines[2] and lines[-1] == "the newest 2 of 3 runs (--limit)"
    assert main(["--data-dir", str(tmp_path), "runs", "--limit", "0"]) == 2
    assert "--limit=0 is not allowed" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "none"), "runs"]) == 2  # read-only: nothing is created
    assert f"study folder {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("args, message", [
    (["run", "--prompt", "sun", "--steps", "0"], "steps=0 is not allowed"),
    (["run", "--prompt", "sun", "--steps", "5000"], "steps=5000 is not allowed"),
    (["run", "--prompt", "sun", "--sampler", "Eular"], "sampler='Eular' is not allowed"),
    (["run", "--prompt", "sun", "--shift", "0"], "flow_shift=0.0 is not allowed: unset (the model's own) or a number"),
    (["run", "--prompt", "sun", "--height", "30"], "height=30 is not allowed: a multiple of"),
    (["run", "--prompt", "sun", "--guidance", "-1"], "guidance=-1.0 is not allowed"),
    (["run"], "prompts=[] is not allowed"),
    (["run", "--prompt", "sun", "--model", "/no/such/folder"], "model folder not found"),
    (["run", "--prompt", "sun", "--knob", "nothing"], "--knob='nothing' is not allowed"),
    (["sweep", "presets/none.yaml"], "an existing YAML file"),
    (["frontier", "--metric", "beauty"], "--metric='beauty' is not allowed"),
])
def test_bad_input_exits_2_with_the_reason(tmp_path, args, message, capsys, bad_inputs):
    assert main(["--data-dir", str(tmp_path)] + args) == 2
    err = capsys.readouterr().err
    bad_inputs.append(("CLI " + args[0], " ".join(args[1:]) or "(no prompt)", err.strip()))
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_sweep_dry_run_lists_the_grid(capsys):
    assert main(["sweep", str(ROOT / "presets" / "guidance-ladder.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  guidance = 7.5" in out and "{" not in out


def test_readme_documents_every_command_knob_and_preset(capsys):
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert re.search(rf"python -m studio_core [^\n]*\b{command}\b", readme), f"README lacks `{command}`"
    for name in KNOBS:
        assert f"`{name}`" in readme, f"README lacks knob `{name}`"
    for preset in (ROOT / "presets").glob("*.yaml"):
        assert preset.name in readme
    assert main(["knobs"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in KNOBS) and "DPM++ 2M Karras" in out
