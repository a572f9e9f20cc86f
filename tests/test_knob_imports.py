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
    CALLS_SCALE_MODEL_INPUT,
    DYNAMIC_SHIFTING_SCHEDULERS,
    INPUT_SCALING_SCHEDULERS,
    MU_NEEDS_DYNAMIC_SHIFTING,
    NOISE_KINDS,
    SAMPLERS,
    SCHEDULER_COMPATIBLES,
    SET_TIMESTEPS_TAKES,
    STUDIO_SCHEDULERS,
    TIMESTEP_SPACING_SCHEDULERS,
    compatible_names,
    scheduler_class,
)
from studio_core.knobs.transformer_cache import CACHE_TRANSFORMERS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "torchao")

# what the page does when it loads: resolve a plain spec, check every knob's default settings on the model
_PAGE_LOAD = f"""
import json, sys
from studio_core.knobs import KNOBS
from studio_core.knobs.sampler import SamplerSettings, samplers_for
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
for name in samplers_for(info) + ["Euler", "Euler (flow)"]:
    KNOBS["sampler"].check_model(info, SamplerSettings(name))
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
    """diffusers' own scheduler classes by name (the studio's ``STUDIO_SCHEDULERS`` are not among them)."""
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
    for sampler in SAMPLERS.values():  # every named sampler is a scheduler the table can answer for: diffusers'
        cls = scheduler_class(sampler.cls)  # own, or the studio's, which declares what its diffusers base does
        assert sampler.cls in schedulers or sampler.cls in STUDIO_SCHEDULERS
        assert compatible_names(sampler.cls) == tuple(sorted(set(getattr(cls, "_compatibles", None) or [])
                                                             | {sampler.cls}))


def test_timestep_spacing_table_is_diffusers_own():
    schedulers = _diffusers_schedulers()
    takes = {name for name, cls in schedulers.items()
             if "timestep_spacing" in inspect.signature(cls.__init__).parameters}
    assert TIMESTEP_SPACING_SCHEDULERS == takes


def _steps_with(cls, config: dict) -> bool:
    """Whether a scheduler built from ``config`` sets 4 timesteps and takes one step (False where it refuses the
    prediction type: a ValueError, or NotImplementedError for ``sample`` in the k-diffusion ports)."""
    import torch

    scheduler = cls.from_config(config)
    sample = torch.ones(1, 4, 2, 2)
    try:
        scheduler.set_timesteps(4)
        t = scheduler.timesteps[0]
        scheduler.step(torch.zeros_like(sample), t, scheduler.scale_model_input(sample, t)
                       if hasattr(scheduler, "scale_model_input") else sample)
    except (ValueError, NotImplementedError):
        return False
    return True


@pytest.mark.parametrize("name", [n for n, d in SAMPLERS.items() if d.kinds <= NOISE_KINDS])
def test_noise_sampler_kinds_are_the_prediction_types_each_scheduler_steps(name):
    schedulers, sd = _diffusers_schedulers(), SAMPLERS[name]
    if sd.cls == "DPMSolverSDEScheduler":
        pytest.importorskip("torchsde")
    for kind in sorted(NOISE_KINDS):
        assert _steps_with(schedulers[sd.cls], {**dict(sd.overrides), "prediction_type": kind}) == (kind in sd.kinds), (
            name, kind)


@pytest.mark.parametrize("name", [n for n, d in SAMPLERS.items() if "flow" in d.kinds])
def test_flow_samplers_step_a_flow_schedule(name):
    """Each flow sampler's overrides are its class's own settings (``from_config`` would drop unknown ones
    silently), and its scheduler steps a flow model's schedule (an SD3-style FlowMatch config)."""
    schedulers, sd = _diffusers_schedulers(), SAMPLERS[name]
    cls = scheduler_class(sd.cls)
    assert set(dict(sd.overrides)) <= set(inspect.signature(cls.__init__).parameters)
    flow_config = {**schedulers["FlowMatchEulerDiscreteScheduler"](shift=3.0).config, **dict(sd.overrides)}
    assert _steps_with(cls, flow_config)


def test_input_scaling_table_is_diffusers_own():
    """The named samplers whose ``scale_model_input`` changes the latents are the table's."""
    import torch

    scaling = set()
    for sd in SAMPLERS.values():
        scheduler = scheduler_class(sd.cls).from_config(dict(sd.overrides))
        if not hasattr(scheduler, "scale_model_input"):
            continue
        scheduler.set_timesteps(4)
        sample = torch.ones(1, 4, 2, 2)
        if not torch.equal(scheduler.scale_model_input(sample, scheduler.timesteps[0]), sample):
            scaling.add(sd.cls)
    assert INPUT_SCALING_SCHEDULERS == scaling


@pytest.mark.parametrize("pipeline, calls", [
    *[(name, True) for name in sorted(CALLS_SCALE_MODEL_INPUT)],
    ("SanaPipeline", False), ("StableDiffusion3Pipeline", False), ("FluxPipeline", False)])
def test_which_pipelines_call_scale_model_input(pipeline, calls):
    diffusers = pytest.importorskip("diffusers")
    assert ("scale_model_input" in inspect.getsource(getattr(diffusers, pipeline).__call__)) == calls


def test_flow_scheduler_tables_are_diffusers_own():
    """What the flow samplers' ``set_timesteps`` take (``sigmas``, ``mu``), which have dynamic shifting, and
    which assert dynamic shifting when given ``mu``: read off each class, diffusers' own and the studio's; the
    diffusers class a studio scheduler extends is in the tables too, read off diffusers, so the reason for the
    subclass (diffusers' flow Heun takes neither and has none) is checked as well."""
    schedulers = _diffusers_schedulers()
    flow_classes = {d.cls for d in SAMPLERS.values() if "flow" in d.kinds}
    bases = {base for name, (_, base) in STUDIO_SCHEDULERS.items() if name in flow_classes}
    assert bases <= set(schedulers) and not set(STUDIO_SCHEDULERS) & set(schedulers)
    assert set(SET_TIMESTEPS_TAKES) == flow_classes | bases
    for name in flow_classes | bases:
        cls = schedulers[name] if name in schedulers else scheduler_class(name)
        assert SET_TIMESTEPS_TAKES[name] == set(inspect.signature(cls.set_timesteps).parameters) & {"sigmas", "mu"}
        assert (name in DYNAMIC_SHIFTING_SCHEDULERS) == ("use_dynamic_shifting" in inspect.signature(cls.__init__)
                                                          .parameters), name
    assert DYNAMIC_SHIFTING_SCHEDULERS <= flow_classes
    for d in {d.cls: d for d in SAMPLERS.values() if "flow" in d.kinds}.values():
        if "mu" not in SET_TIMESTEPS_TAKES[d.cls]:
            continue
        scheduler = scheduler_class(d.cls).from_config({**dict(d.overrides), "use_dynamic_shifting": False})
        try:
            scheduler.set_timesteps(2, mu=0.5)
            asserted = False
        except AssertionError:
            asserted = True
        assert asserted == (d.cls in MU_NEEDS_DYNAMIC_SHIFTING), d.cls


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
