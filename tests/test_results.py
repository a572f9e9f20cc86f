"""Published figures are reproducible: raw results files, the generated RESULTS.md, the generated model card.

The harness refuses to measure on uncommitted code unless told (a real git repository in a temp folder),
keeps every raw repeat with its commit, and never overwrites an earlier file; ``make_results.py`` builds
each table from the newest file alone, marks uncommitted ones and says what is not measured yet; the
shipped model card is exactly what its two JSON files render, so no figure in it is written by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _harness  # noqa: E402
import make_results  # noqa: E402

MODEL_DIR = ROOT / "studio_core" / "embedded" / "emoji-sd"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed checkout with a script and a results folder."""
    r = tmp_path / "repo"
    (r / "benchmarks" / "results").mkdir(parents=True)
    (r / "benchmarks" / "bench.py").write_text("print('x')\n")
    (r / "benchmarks" / "results" / "README.md").write_text("raw results\n")
    _git(r, "init", "-q")
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "start")
    return r


# ---------------------------------------------------------------- harness: the tree and the raw file


def test_clean_tree_passes_and_new_results_files_do_not_make_it_dirty(repo: Path):
    (repo / "benchmarks" / "results" / "bench-2026-01-01.json").write_text("{}\n")
    state = _harness.check_tree(False, root=repo)
    assert state["dirty"] is False and state["changed"] == [] and len(state["commit"]) == 40


def test_dirty_tree_is_refused_with_one_line_unless_dirty_is_given(repo: Path, capsys):
    (repo / "benchmarks" / "bench.py").write_text("print('changed')\n")
    with pytest.raises(SystemExit) as exc:
        _harness.check_tree(False, root=repo)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "uncommitted changes" in err and "benchmarks/bench.py" in err
    assert "--dirty" in err
    state = _harness.check_tree(True, root=repo)
    assert state["dirty"] is True and "uncommitted code" in capsys.readouterr().err


def test_every_table_script_takes_dirty():
    for script in ("embedded_cpu_speed", "overhead", "caching", "quantization_cpu", "embedded_fidelity",
                   "distribution_validation", "sampler_distribution"):
        text = (ROOT / "benchmarks" / f"{script}.py").read_text()
        assert "add_publish_args(" in text and "check_tree(" in text and "publish(" in text, script


def test_publish_keeps_every_raw_repeat_commit_and_never_overwrites(repo: Path):
    raw = {"uncached": [101.25, 99.5, 100.0], "DeepCache N=2": [50.0, 51.0, 49.5]}
    table = {"header": ["configuration", "ms"], "align": "lr", "rows": [["uncached", "100"]]}
    kw = dict(setup_text="Setup: tiny", notes=["a note"], script="benchmarks/bench.py",
              argv=["--rounds", "3", "--dirty"], root=repo, results_dir=repo / "benchmarks" / "results")
    first = _harness.publish("bench", {"device": "cpu"}, raw, table, **kw)
    second = _harness.publish("bench", {"device": "cpu"}, raw, table, **kw)
    assert first != second and first.exists() and second.name.endswith("-2.json")
    data = json.loads(first.read_text())
    assert data["raw"] == raw and data["table"] == table and data["notes"] == ["a note"]
    assert data["dirty"] is False and len(data["commit"]) == 40 and data["name"] == "bench"
    assert data["command"] == ".venv/bin/python benchmarks/bench.py --rounds 3"  # --dirty is not for reruns


def test_publish_on_a_dirty_tree_says_so(repo: Path):
    (repo / "benchmarks" / "bench.py").write_text("print('changed')\n")
    path = _harness.publish("bench", {}, {"a": [1]}, {"header": ["a"], "rows": [["1"]]}, script="b.py", argv=[],
                            root=repo, results_dir=repo / "benchmarks" / "results")
    data = json.loads(path.read_text())
    assert data["dirty"] is True and any("bench.py" in c for c in data["changed"])


# ---------------------------------------------------------------- the generator


def _results_file(folder: Path, name: str, utc: str, *, dirty=False, value="100") -> None:
    data = {"name": name, "command": f".venv/bin/python benchmarks/{name}.py --rounds 3", "argv": ["--rounds", "3"],
            "utc": utc, "commit": "abcdef1234567890" * 2 + "abcdef12", "dirty": dirty,
            "changed": [" M studio_core/x.py"] if dirty else [], "setup": {}, "setup_text": f"Setup: {name} setup",
            "raw": {"a": [1.0, 2.0]}, "table": {"header": ["configuration", "ms"], "align": "lr",
                                                "rows": [["a", value]]}, "notes": ["Target: met."]}
    (folder / f"{name}-{utc[:10]}.json").write_text(json.dumps(data))


def test_generator_builds_each_table_from_the_newest_file_with_its_provenance(tmp_path: Path):
    _results_file(tmp_path, "overhead", "2026-01-01T00:00:00Z", value="111")
    _results_file(tmp_path, "overhead", "2026-02-03T00:00:00Z", value="222")
    text = make_results.render_results(tmp_path)
    section = text.split("## Engine overhead")[1].split("\n## ")[0]
    assert "| a | 222 |" in section and "111" not in section
    assert "`.venv/bin/python benchmarks/overhead.py --rounds 3` — 2026-02-03, commit `abcdef123456`" in section
    assert "Setup: overhead setup" in section and "Target: met." in section
    assert "[`results/overhead-2026-02-03.json`](results/overhead-2026-02-03.json)" in section
    assert "uncommitted" not in section
    assert text.startswith("# Benchmark results\n\n*Generated by `.venv/bin/python benchmarks/make_results.py`")


def test_generator_marks_uncommitted_results_and_says_what_is_not_measured(tmp_path: Path):
    _results_file(tmp_path, "caching", "2026-01-01T00:00:00Z", dirty=True)
    text = make_results.render_results(tmp_path)
    caching = text.split("## Feature caching")[1].split("\n## ")[0]
    assert "**Measured on uncommitted code**" in caching
    quant = text.split("## Precision and quantization")[1].split("\n## ")[0]
    assert "Not measured yet: run `.venv/bin/python benchmarks/quantization_cpu.py`" in quant
    assert "| fp32 |" not in quant  # no old hand-made figures survive


def test_generator_lists_results_it_has_no_section_for(tmp_path: Path):
    _results_file(tmp_path, "brand_new", "2026-01-01T00:00:00Z")
    assert "`brand_new-2026-01-01.json` (brand_new): add a `Section`" in make_results.render_results(tmp_path)


def test_committed_results_md_is_what_the_committed_files_give():
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8") == make_results.render_results()


# ---------------------------------------------------------------- the model card


def test_shipped_model_card_is_rendered_entirely_from_its_two_files():
    from studio_core.embedded.training.evaluate import weights_digest
    from studio_core.embedded.training.model_card import render_model_card

    report = json.loads((MODEL_DIR / "training_report.json").read_text(encoding="utf-8"))
    evaluation = json.loads((MODEL_DIR / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["weights"] == weights_digest(MODEL_DIR)  # measured on the shipped weights
    assert render_model_card(report, evaluation) == (MODEL_DIR / "README.md").read_text(encoding="utf-8")


def test_card_leaves_out_an_evaluation_of_other_weights(tmp_path: Path):
    from studio_core.embedded.training.model_card import card_from_folder

    folder = tmp_path / "m"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"other weights")
    (folder / "training_report.json").write_text((MODEL_DIR / "training_report.json").read_text())
    (folder / "evaluation.json").write_text((MODEL_DIR / "evaluation.json").read_text())
    card = card_from_folder(folder).read_text(encoding="utf-8")
    assert "Not measured on these weights yet: run `python -m studio_core.embedded.training evaluate" in card
    assert "Speed (" not in card
