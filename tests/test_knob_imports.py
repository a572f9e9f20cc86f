"""The knob registry is the torch-free front's: importing it, resolving a plain spec and checking every knob
against a model's configs import no torch or diffusers, knobs never import the spec, and the diffusers facts
written out as tables (scheduler compatibility, timestep spacing, cache-capable transformers) still hold."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from studio_core.knobs.sampler import (
    SAMPLERS,
    SCHEDULER_COMPATIBLES,
    TIMESTEP_SPACING_SCHEDULERS,
    compatible_names,
)
from studio_core.knobs.transformer_cache import CACHE_TRANSFORMERS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "torchao")

# what the page does when it loads: resolve a plain spec, check every knob's default settings on the model
_PAGE_LOAD = f"""
import json, sys
from studio_core.knobs import KNOBS
from studio_core.spec import RunSpec, model_info, resolve

resolve(RunSpec(prompts=("red heart",)))
resolve(RunSpec(prompts=("red heart",), sampler="DPM++ 2M Karras", timestep_spacing="trailing"))
info = model_info({{model!r}})
for knob in KNOBS.values():
    if knob.builtin_field:
        continue
    try:
        settings = knob.Settings()
    except TypeError:  # required fields: the page has nothing to check until they are set
        continue
    knob.check_model(info, settings)
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def _heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (this one has torch already) and return what it printed last."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_page_load_checks_import_no_torch_or_diffusers():
    assert _heavy_modules_after(_PAGE_LOAD.format(model="emoji-sd")) == []


def test_page_load_checks_of_a_transformer_model_import_no_torch_or_diffusers(tmp_path):
    from tiny_flux import build_tiny_flux

    folder = build_tiny_flux(tmp_path / "flux")
    assert _heavy_modules_after(_PAGE_LOAD.format(model=str(folder))) == []


def test_knobs_never_import_the_spec():
    """The spec imports the registry; a knob importing the spec back would be a cycle."""
    for path in sorted((ROOT / "studio_core" / "knobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "studio_core.spec" or n.startswith("studio_core.spec.") for n in names), (
                f"{path.name} line {node.lineno} imports studio_core.spec")


# ------------------------------------------------------------------------------------------ diffusers tables
def _diffusers_schedulers() -> dict[str, type]:
    diffusers = pytest.importorskip("diffusers")
    from diffusers import SchedulerMixin

    found = {}
    for name in dir(diffusers):
        if not name.endswith("Scheduler"):
            continue
        try:
            cls = getattr(diffusers, name)
        except (ImportError, AttributeError, RuntimeError):  # an optional dependency is missing
            continue
        if isinstance(cls, type) and issubclass(cls, SchedulerMixin):
            found[name] = cls
    return found


def test_scheduler_compatibility_table_is_diffusers_own():
    schedulers = _diffusers_schedulers()
    listed = {name for name, cls in schedulers.items() if getattr(cls, "_compatibles", None)}
    assert set(SCHEDULER_COMPATIBLES) == listed  # every scheduler that declares compatibles, and only those
    for name, compatibles in SCHEDULER_COMPATIBLES.items():
        assert sorted(compatibles) == sorted(schedulers[name]._compatibles), name
    for sampler in SAMPLERS.values():  # every named sampler is a diffusers scheduler the table can answer for
        assert sampler.cls in schedulers
        assert compatible_names(sampler.cls) == tuple(sorted(set(getattr(schedulers[sampler.cls], "_compatibles",
                                                                         None) or []) | {sampler.cls}))


def test_timestep_spacing_table_is_diffusers_own():
    schedulers = _diffusers_schedulers()
    takes = {name for name, cls in schedulers.items()
             if "timestep_spacing" in inspect.signature(cls.__init__).parameters}
    assert TIMESTEP_SPACING_SCHEDULERS == takes


def test_cache_transformer_table_is_diffusers_own():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.hooks._helpers import TransformerBlockRegistry
    from diffusers.models.cache_utils import CacheMixin

    def has_block_metadata(cls) -> bool:  # a block class of the model's module that diffusers registered
        for value in vars(sys.modules[cls.__module__]).values():
            if isinstance(value, type):
                try:
                    TransformerBlockRegistry.get(value)
                    return True
                except ValueError:
                    pass
        return False

    found = {}
    for name in dir(diffusers):
        try:
            cls = getattr(diffusers, name)
        except (ImportError, AttributeError, RuntimeError):
            continue
        if isinstance(cls, type) and issubclass(cls, CacheMixin) and cls is not CacheMixin:
            found[name] = has_block_metadata(cls)
    assert CACHE_TRANSFORMERS == found
