"""Shared fixtures: the rendered emoji set, a tiny pipeline built from config, the embedded model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ("browser_kit",)  # the browser tests' fixtures: served, browser, page, far_apart_runs
TINY_CAPTIONS = ["grinning face", "red heart", "man scientist: dark skin tone", "flag: France", "keycap: 7"]


@pytest.fixture(scope="session")
def emoji32():
    """The full rendered data set at the embedded model's resolution (cached under .cache)."""
    from studio_core.embedded.training.data import load_or_build

    return load_or_build(ROOT / ".cache", 32)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A StableDiffusionPipeline folder with tiny random components (the 'tiny' training recipe's shapes)."""
    import torch

    from studio_core.embedded.training.recipe import RECIPES, build_components
    from studio_core.embedded.training.tokenizer import build_caption_tokenizer
    from studio_core.embedded.training.train import save_pipeline

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "pipe"
    tok = build_caption_tokenizer(out / "tokenizer", TINY_CAPTIONS, max_length=16)
    vae, te, unet, sched = build_components(RECIPES["tiny"], len(tok), tok.bos_token_id, tok.eos_token_id)
    save_pipeline(out, vae, te, tok, unet, sched)
    return out


@pytest.fixture(scope="session")
def tiny_emoji_flux(tmp_path_factory) -> Path:
    """A folder shaped like the embedded emoji-flux: a real FluxPipeline from its training's tiny recipe (64 px,
    ``studio_defaults.json`` with ``"domain": "emoji"``), trained a few steps once a session."""
    from studio_core.embedded.training.flux import FLUX_RECIPES, train_flux

    out = tmp_path_factory.mktemp("flux") / "emoji-flux"
    train_flux(FLUX_RECIPES["tiny"], out, ROOT / ".cache", device="cpu", evaluate_after=False)
    return out


@pytest.fixture(scope="session")
def embedded_pipe():
    from studio_core.models import load_pipeline

    return load_pipeline("emoji-sd")


@pytest.fixture
def dummy_knob():
    """A registered knob that changes nothing (three settings: int, Literal, optional str); removed after."""
    from studio_core.knobs import KNOBS, register
    from studio_core.knobs.base import Applied, Knob, KnobReport

    class DummyKnob(Knob):
        name = "dummy"
        title = "Dummy cache"
        description = "A test knob: it registers like any other and changes nothing."
        Settings = DummySettings

        def apply(self, pipe, settings) -> Applied:
            return Applied(self.name, report=lambda: KnobReport(self.name, False,
                                                                 f"interval {settings.interval}: nothing cached"))

    register(DummyKnob)
    try:
        yield KNOBS["dummy"]
    finally:
        KNOBS.pop("dummy", None)


@dataclass(frozen=True)
class DummySettings:
    interval: int = 2
    mode: Literal["fast", "exact"] = "fast"
    note: str | None = None


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: OpenMP threads spinning against other processes make tiny models 10-100x slower,
    so modules of tiny-model tests run torch on one thread (``pytest.mark.usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bad_inputs():
    """Collects (surface, input, message) from the bad-input tests; with ``STUDIO_BAD_INPUTS_TABLE=PATH``
    the session writes them as a markdown table there (``scripts/bad_inputs_table.sh``)."""
    import os

    rows: list[tuple[str, str, str]] = []
    yield rows
    target = os.environ.get("STUDIO_BAD_INPUTS_TABLE")
    if target and rows:
        def cell(text: str) -> str:
            text = " ".join(str(text).split())
            return (text[:300] + " ...") if len(text) > 300 else text.replace("|", "\\|")

        lines = ["# Bad inputs and what a user gets", "",
                 "Written by `scripts/bad_inputs_table.sh` from the tests that sent each input (paths are the "
                 "tests' temporary folders). Every case is an assertion in `tests/test_bad_inputs.py`, "
                 "`tests/test_cli.py`, `tests/test_browser.py`, `tests/test_serving.py`, `tests/test_store_faults.py`, "
                 "`tests/test_disk_faults.py` or `tests/test_cancel.py`: the message names the problem, no "
                 "traceback, nothing written by the refused input (a cancelled run is recorded `cancelled`).", "",
                 "| # | where | input | what the user gets |", "|---|---|---|---|"]
        lines += [f"| {i} | {cell(s)} | `{cell(x)}` | {cell(m)} |" for i, (s, x, m) in enumerate(rows, 1)]
        Path(target).write_text("\n".join(lines) + "\n", encoding="utf-8")


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests where CUDA is missing; torch is imported only when some test needs it, so
    collecting the torch-free tests stays fast."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on the device machine)")
    for item in gpu_items:
        item.add_marker(skip)
