"""The command line: run, sweep, export, frontier, runs, knobs; bad input exits 2 with a clear line."""

import re
from pathlib import Path

import pandas as pd
import pytest

from studio_core.cli import COMMANDS, main
from studio_core.knobs import KNOBS

ROOT = Path(__file__).resolve().parents[1]


def test_run_export_frontier_runs(tmp_path, tiny_pipeline_dir, capsys):
    d = str(tmp_path / "study")
    base = ["--data-dir", d, "run", "--model", str(tiny_pipeline_dir), "--prompt", "grinning face", "--seeds", "0",
            "1", "--guidance", "2", "--repeats", "1"]
    assert main(base + ["--steps", "2", "--sampler", "DDIM"]) == 0
    assert main(base + ["--steps", "4", "--sampler", "Euler"]) == 0
    out = capsys.readouterr().out
    assert "latency_median_ms" in out and "[did nothing]" in out  # DDIM on a DDIM model
    assert main(["--data-dir", d, "export", "--csv", str(tmp_path / "runs.csv")]) == 0
    frame = pd.read_csv(tmp_path / "runs.csv")
    assert len(frame) == 2 and list(frame["sampler"]) == ["DDIM", "Euler"] and "config_json" in frame
    assert main(["--data-dir", d, "frontier", "--metric", "psnr", "--cost", "latency_median_ms"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front: psnr" in out
    assert main(["--data-dir", d, "runs"]) == 0 and "Euler" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["run", "--prompt", "sun", "--steps", "0"], "steps=0 is not allowed"),
    (["run", "--prompt", "sun", "--steps", "5000"], "steps=5000 is not allowed"),
    (["run", "--prompt", "sun", "--sampler", "Eular"], "sampler='Eular' is not allowed"),
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
    assert "guidance=7.5" in capsys.readouterr().out


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
