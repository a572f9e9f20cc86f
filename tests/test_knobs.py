"""The knob protocol: every sampler swaps in and out of a tiny pipeline; a new knob registers like a built-in."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from studio_core.errors import SpecError
from studio_core.knobs import KNOBS, Applied, Knob, KnobReport, register
from studio_core.knobs.sampler import SAMPLERS, SamplerSettings
from studio_core.spec import RunSpec, validate


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir):
    from studio_core.models import load_pipeline

    return load_pipeline(tiny_pipeline_dir)


def _image(pipe, steps=4):
    out = pipe(["grinning face"], num_inference_steps=steps, guidance_scale=2.0, output_type="np",
               generator=[torch.Generator().manual_seed(0)])
    return out.images


@pytest.mark.parametrize("name", [n for n, d in SAMPLERS.items() if "epsilon" in d.kinds])  # the tiny model's kind
def test_every_sampler_runs_reports_and_undoes(tiny_pipe, name):
    knob = KNOBS["sampler"]
    before = _image(tiny_pipe)
    original = tiny_pipe.scheduler
    applied = knob.apply(tiny_pipe, SamplerSettings(name))
    assert type(tiny_pipe.scheduler).__name__ == SAMPLERS[name].cls
    img = _image(tiny_pipe)
    assert np.isfinite(img).all()
    report = applied.report()
    assert report.details["scheduler"] == SAMPLERS[name].cls
    assert report.details["stochastic"] == SAMPLERS[name].stochastic
    applied.undo()
    assert tiny_pipe.scheduler is original
    assert np.array_equal(_image(tiny_pipe), before)  # undo restores the output exactly


def test_karras_and_spacing_overrides_reach_the_scheduler(tiny_pipe):
    knob = KNOBS["sampler"]
    applied = knob.apply(tiny_pipe, SamplerSettings("DPM++ 2M Karras", "trailing"))
    cfg = tiny_pipe.scheduler.config
    assert cfg.use_karras_sigmas is True and cfg.timestep_spacing == "trailing"
    applied.undo()


def test_a_new_knob_registers_validates_and_is_listed(capsys):
    @dataclass(frozen=True)
    class DummySettings:
        strength: float = 0.5

    @register
    class DummyKnob(Knob):
        name = "dummy"
        title = "Dummy"
        description = "a test knob"
        Settings = DummySettings

        def validate(self, settings):
            if not 0 <= settings.strength <= 1:
                raise SpecError("knobs.dummy.strength", settings.strength, "a number from 0 to 1")

        def apply(self, pipe, settings):
            return Applied(self.name, report=lambda: KnobReport(self.name, False, "nothing to do"))

    try:
        validate(RunSpec(prompts=("x",), knobs={"dummy": {"strength": 0.2}}))
        with pytest.raises(SpecError, match=r"knobs.dummy.strength=2"):
            validate(RunSpec(prompts=("x",), knobs={"dummy": {"strength": 2}}))
        with pytest.raises(SpecError, match=r"knobs.dummy.colour='red' is not allowed: settings of dummy are strength"):
            validate(RunSpec(prompts=("x",), knobs={"dummy": {"colour": "red"}}))
        with pytest.raises(ValueError, match="already registered"):
            register(type("Other", (DummyKnob,), {}))
        from studio_core.cli import main

        assert main(["knobs"]) == 0 and "dummy" in capsys.readouterr().out
    finally:
        KNOBS.pop("dummy", None)
