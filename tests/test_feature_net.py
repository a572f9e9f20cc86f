"""The shipped emoji feature network and its generated card: the weights load and recognise clean renders, the
card is exactly what its files render, ``features evaluate`` / ``features card`` write it, and the ``tiny``
recipe trains end to end into a folder that loads."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from studio_core.embedded.training.feature_card import EVALUATION_KEYS, main, render_feature_card, weights_digest
from studio_core.embedded.training.features import FEATURE_RECIPES, topk_accuracy, train_feature_net
from studio_core.measure.feature_net import FEATURE_NET_DIR, load_feature_net

ROOT = Path(__file__).resolve().parents[1]


def _validation_results(path: Path, weights: str | None = None) -> Path:
    """A raw results file shaped like benchmarks/distribution_validation.py's, with keys the card must drop."""
    verdicts = {"same_verdict": 0.9, "both_hit": 0.5, "kappa": 0.81, "n": 100}
    path.write_text(json.dumps({
        "name": "distribution_validation", "command": ".venv/bin/python benchmarks/distribution_validation.py",
        "argv": [], "utc": "2026-12-03T10:00:00Z", "commit": "abc1234", "dirty": False, "changed": [],
        "setup": {"device_name": "CPU", "feature_net_weights": weights or weights_digest(FEATURE_NET_DIR)},
        "setup_text": "Setup: 32 px, seeds 0-9.", "raw": {"fd": [1.0, 2.0]},
        "table": {"header": ["x"], "rows": [["1"]]}, "notes": [],
        "card_tables": [{"title": "FD-emoji against set size", "header": ["n", "FD-emoji", "KID-emoji"],
                         "rows": [[250, 12.3456, "0.012 ± 0.003"], [1000, 3.2, "a|b"]],
                         "notes": ["real set: training renders"]}],
        "agreement": {"50": {"top1": verdicts, "top5": verdicts}, "pooled": {"top1": verdicts, "top5": verdicts}},
        "chosen_sizes": {"fd_kid_n": 1000, "reason": "FD within 5% of its n=3000 value"},
    }), encoding="utf-8")
    return path


def _feature_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "emoji-features"
    folder.mkdir()
    for name in ("training_report.json", "model.safetensors"):
        (folder / name).write_bytes((FEATURE_NET_DIR / name).read_bytes())
    return folder


# --------------------------------------------------------------------------- the shipped network


def test_shipped_network_loads_and_recognises_clean_renders(emoji32):
    net = load_feature_net()
    assert net.config.n_classes == len(net.config.captions) == len(emoji32.captions)
    feats = net.features(emoji32.images[:4])
    assert feats.shape == (4, 192) and feats.dtype == torch.float64 and torch.isfinite(feats).all()
    # 64 renders spread over the whole set: the first 64 are keycaps and arrows, the set's finest distinctions
    sample = np.linspace(0, len(emoji32.captions) - 1, 64).round().astype(int)
    index = {c: i for i, c in enumerate(net.config.captions)}
    labels = torch.tensor([index[emoji32.captions[i]] for i in sample])
    assert topk_accuracy(net, emoji32.images[sample], labels)["top1"] >= 0.8


def test_shipped_card_is_rendered_entirely_from_its_files():
    report = json.loads((FEATURE_NET_DIR / "training_report.json").read_text(encoding="utf-8"))
    ev_path = FEATURE_NET_DIR / "evaluation.json"
    evaluation = json.loads(ev_path.read_text(encoding="utf-8")) if ev_path.is_file() else None
    if evaluation is not None:
        assert evaluation.get("weights") == weights_digest(FEATURE_NET_DIR)  # measured on the shipped weights
    assert render_feature_card(report, evaluation) == (FEATURE_NET_DIR / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- features card / evaluate


def test_card_without_evaluation_says_how_to_measure(tmp_path: Path, capsys):
    folder = _feature_folder(tmp_path)
    main(["card", "--model-dir", str(folder)])
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "Not measured on these weights yet: run `python benchmarks/distribution_validation.py` then " in card
    assert "| clean renders | 90.3% | 99.4% |" in card  # the report's accuracy table
    assert "| `budget_minutes` | 25 |" in card and "stopped by time budget (25 min)" in card
    assert "SIL Open Font License 1.1" in card and "--metric-weights DIR" in card
    assert capsys.readouterr().out.strip() == str(folder / "README.md")


def test_evaluate_keeps_the_validation_figures_and_renders_them(tmp_path: Path):
    folder = _feature_folder(tmp_path)
    results = _validation_results(tmp_path / "distribution_validation-2026-12-03.json")
    subprocess.run([sys.executable, "-m", "studio_core.embedded.training", "features", "evaluate",
                    "--model-dir", str(folder), "--results", str(results)], cwd=ROOT, check=True, capture_output=True)
    evaluation = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
    assert set(evaluation) == set(EVALUATION_KEYS) | {"dirty", "weights"}  # raw, table, setup, argv... left out
    assert evaluation["weights"] == weights_digest(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card == render_feature_card(json.loads((folder / "training_report.json").read_text()), evaluation)
    assert "Not measured on these weights yet" not in card
    assert ("### FD-emoji against set size\n\n| n | FD-emoji | KID-emoji |\n|---|---|---|\n"
            "| 250 | 12.35 | 0.012 ± 0.003 |\n| 1000 | 3.2 | a\\|b |\n\n- real set: training renders") in card
    assert ("| | same_verdict | both_hit | kappa | n |\n|---|---|---|---|---|\n| 50 / top1 | 0.9 | 0.5 | 0.81 | 100 |"
            in card) and "| pooled / top5 | 0.9 | 0.5 | 0.81 | 100 |" in card
    assert "**n = 1,000** images: FD within 5% of its n=3000 value" in card
    assert f"on weights `{weights_digest(folder)}` at commit `abc1234`, 2026-12-03T10:00:00Z. Setup: 32 px" in card


def test_figures_of_other_weights_are_refused_and_left_out(tmp_path: Path, capsys):
    folder = _feature_folder(tmp_path)
    with pytest.raises(SystemExit):
        main(["evaluate", "--model-dir", str(folder), "--results",
              str(_validation_results(tmp_path / "old.json", weights="0123456789ab"))])
    assert f"measured on feature-network weights 0123456789ab, but this folder's are {weights_digest(folder)}" in (
        capsys.readouterr().err)
    main(["evaluate", "--model-dir", str(folder), "--results", str(_validation_results(tmp_path / "new.json"))])
    assert "### Chosen sizes" in (folder / "README.md").read_text(encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"retrained")  # new weights: the evaluation no longer describes them
    main(["card", "--model-dir", str(folder)])
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "Not measured on these weights yet" in card and "### Chosen sizes" not in card


@pytest.mark.parametrize("content, problem", [
    ('{"commit": "abc", "utc": "x", "command": "c", "setup_text": ""}', "missing card_tables, agreement, chosen_sizes"),
    ("not json", "not JSON"),
    ('{"commit": "abc", "utc": "x", "command": "c", "setup_text": "", "card_tables": [{"rows": []}], '
     '"agreement": {}, "chosen_sizes": {"fd_kid_n": 10, "reason": "r"}}', "do not have the expected shape"),
])
def test_evaluate_refuses_a_file_that_is_not_validation_results(tmp_path: Path, capsys, content: str, problem: str):
    folder = _feature_folder(tmp_path)
    bad = tmp_path / "other.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model-dir", str(folder), "--results", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--results {bad}: " in err and problem in err
    assert not (folder / "evaluation.json").exists() and not (folder / "README.md").exists()


# --------------------------------------------------------------------------- training


def test_tiny_recipe_trains_lowers_its_loss_and_saves_a_loadable_folder(tmp_path: Path, emoji32):
    # 100 steps: the report's loss_first / loss_last average the first / last 50 steps, so they must not overlap.
    # One thread: two oversubscribe a shared 2-core machine (25x slower here); the process's count is restored.
    recipe = replace(FEATURE_RECIPES["tiny"], steps=100, lr=3e-3, batch=16, threads=1)
    threads = torch.get_num_threads()
    try:
        report = train_feature_net(recipe, tmp_path / "tiny", ROOT / ".cache")
    finally:
        torch.set_num_threads(threads)
    assert report["steps_done"] == 100 and report["stopped_by"] == "steps" and report["images_seen"] == 1600
    assert report["loss_last"] < report["loss_first"]
    net = load_feature_net(tmp_path / "tiny")
    assert net.config.n_classes == 24 and net.config.captions == list(emoji32.captions[:24])
    assert net.features(emoji32.images[:3]).shape == (3, 8)
    assert "**100 of 100 steps**, stopped by steps" in render_feature_card(report, None)
