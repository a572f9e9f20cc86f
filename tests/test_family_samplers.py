"""Every model family's samplers: the list the studio offers, each one run with a golden slice, the refusals.

For each tiny family of ``tests/tiny_families.py`` (and an LCM-distilled SD, built here), the sampler
knob's ``samplers_for`` must equal ``OFFERED`` below; each offered sampler is swapped into the family's
tiny pipeline exactly as the engine does it (``KNOBS["sampler"].apply``, then ``undo``) and run for
``STEPS`` steps on CPU with torch on one thread, one seeded ``torch.Generator`` per image and torch's
global RNG seeded too (SD3, Flux and Sana do not pass the generator to ``scheduler.step``, so stochastic
samplers draw from it); the 3x3 bottom-right corner of the last channel is compared with ``GOLDEN``.
Each family also has a sampler ``check_model`` refuses, with its whole message in ``REFUSED``.

Why 3 steps: as in ``test_samplers_golden.py``, at 2 steps several samplers coincide (a 2-step multistep
solver takes only first-order steps), and DPM2 a's 2-step schedule on PixArt's linear betas is NaN in
diffusers 0.42.1 (its interpolated first sigma is the square root of a rounding error below zero).
PixArt and Sana run at 64 px with ``use_resolution_binning=False``: their bins start at 256 / 512 px.

Tolerance and pins as in ``test_samplers_golden.py`` (``ATOL = 1e-4``; torch 2.13.0+cpu, diffusers 0.42.1,
the builders' ``seed=0``). When those change, regenerate the literals and paste them over ``GOLDEN``::

    STUDIO_PRINT_GOLDEN=1 .venv/bin/python -m pytest -q -s tests/test_family_samplers.py -k golden
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from studio_core.knobs import KNOBS
from studio_core.knobs.sampler import SAMPLERS, SamplerSettings, _timestep_args, model_kind, samplers_for

STEPS, SEED, PROMPT, GUIDANCE = 3, 0, "grinning face", 2.0
ATOL = 1e-4
CALL = {  # pipeline arguments beyond the prompt, steps and guidance: the smallest size each family takes
    "sd15": {"height": 64, "width": 64},
    "sdxl": {"height": 64, "width": 64},
    "pixart": {"height": 64, "width": 64, "use_resolution_binning": False},
    "sd3": {"height": 64, "width": 64},
    "flux": {"height": 32, "width": 32},
    "sana_flow": {"height": 64, "width": 64, "use_resolution_binning": False},
    "sana_eps": {"height": 64, "width": 64, "use_resolution_binning": False},
    "lcm": {"height": 64, "width": 64},
}
FLOW = ("sd3", "flux", "sana_flow")
_NOISE_ALL = ["DDIM", "DDPM", "PNDM", "PLMS", "LMS", "LMS Karras", "Euler", "Euler a", "Heun", "DPM2", "DPM2 a",
              "DPM2 Karras", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ SDE",
              "DPM++ SDE Karras", "DEIS", "UniPC"]
_FLOW_ALL = ["Euler (flow)", "Heun (flow)", "DPM++ 2M (flow)", "UniPC (flow)", "DPM++ 2S (flow)"]
OFFERED = {
    "sd15": _NOISE_ALL,
    "sdxl": _NOISE_ALL,
    "pixart": _NOISE_ALL,
    "sd3": _FLOW_ALL,
    "flux": _FLOW_ALL,  # Heun (flow) too: the studio's FlowMatchHeunDynamicScheduler takes sigmas and mu
    "sana_flow": _FLOW_ALL,
    # SanaPipeline never calls scale_model_input: the Euler family is refused
    "sana_eps": ["DDIM", "DDPM", "PNDM", "PLMS", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
                 "DEIS", "UniPC"],
    "lcm": ["LCM", "TCD"],
}
_EPS = "epsilon-prediction, v-prediction and sample-prediction"
REFUSED = {
    "sd15": ("Euler (flow)", "Euler (flow) serves flow-matching models; this model is epsilon-prediction "
             f"(PNDMScheduler): choose one of {', '.join(_NOISE_ALL)}"),
    "sdxl": ("LCM", "LCM serves consistency-distilled models; this model is epsilon-prediction "
             f"(EulerDiscreteScheduler): choose one of {', '.join(_NOISE_ALL)}"),
    "pixart": ("UniPC (flow)", "UniPC (flow) serves flow-matching models; this model is epsilon-prediction "
               f"(DPMSolverMultistepScheduler): choose one of {', '.join(_NOISE_ALL)}"),
    "sd3": ("Euler", f"Euler serves {_EPS} models; this model is flow-matching (FlowMatchEulerDiscreteScheduler): "
            f"choose one of {', '.join(_FLOW_ALL)}"),
    "flux": ("LCM", "LCM serves consistency-distilled models; this model is flow-matching "
             f"(FlowMatchEulerDiscreteScheduler): choose one of {', '.join(_FLOW_ALL)}"),
    "sana_flow": ("DPM++ 2M Karras", f"DPM++ 2M Karras serves {_EPS} models; this model is flow-matching "
                  f"(DPMSolverMultistepScheduler): choose one of {', '.join(_FLOW_ALL)}"),
    "sana_eps": ("Euler", "SanaPipeline never calls scheduler.scale_model_input, so Euler would feed the denoiser "
                 "unscaled latents: choose one of " + ", ".join(OFFERED["sana_eps"])),
    "lcm": ("Euler", f"Euler serves {_EPS} models; this model is consistency-distilled (LCMScheduler): "
            "choose one of LCM, TCD"),
}
# the model's own scheduler is this sampler, so their slices coincide (a check that the swap is exact)
OWN = {"sd15": "PLMS", "sdxl": "Euler", "sd3": "Euler (flow)", "flux": "Euler (flow)", "sana_flow": "DPM++ 2M (flow)",
       "sana_eps": "DPM++ 2M", "pixart": "DPM++ 2M", "lcm": "LCM"}

GOLDEN: dict[str, dict[str, list[float]]] = {
    "sd15": {
        "DDIM": [0.423751, 0.444347, 0.578539, 0.551737, 0.560494, 0.598897, 0.540821, 0.517390, 0.497383],
        "DDPM": [0.491643, 0.488838, 0.610468, 0.623192, 0.591791, 0.657314, 0.621769, 0.573101, 0.513521],
        "PNDM": [0.459987, 0.472416, 0.580496, 0.533000, 0.505921, 0.554007, 0.446930, 0.448896, 0.465326],
        "PLMS": [0.453501, 0.471917, 0.586483, 0.538102, 0.513099, 0.560081, 0.454529, 0.456297, 0.468059],
        "LMS": [0.451694, 0.471700, 0.586227, 0.538260, 0.512771, 0.560009, 0.453560, 0.455552, 0.467322],
        "LMS Karras": [0.450793, 0.471714, 0.586322, 0.538402, 0.512879, 0.560209, 0.453177, 0.455264, 0.466919],
        "Euler": [0.451459, 0.471708, 0.586201, 0.538302, 0.512745, 0.560028, 0.453398, 0.455442, 0.467198],
        "Euler a": [0.409300, 0.449446, 0.579410, 0.515658, 0.501953, 0.565928, 0.475617, 0.469189, 0.475910],
        "Heun": [0.452692, 0.471890, 0.586624, 0.538182, 0.513370, 0.560366, 0.454439, 0.456236, 0.467885],
        "DPM2": [0.454098, 0.472764, 0.587285, 0.538629, 0.513360, 0.560747, 0.455157, 0.456522, 0.468072],
        "DPM2 a": [0.413794, 0.450558, 0.580900, 0.517571, 0.504348, 0.567083, 0.480421, 0.471944, 0.477104],
        "DPM2 Karras": [0.453541, 0.471369, 0.585678, 0.537898, 0.512951, 0.559647, 0.455818, 0.456848, 0.468412],
        "DPM++ 2M": [0.457894, 0.471672, 0.579751, 0.531736, 0.505225, 0.553864, 0.446143, 0.448619, 0.465221],
        "DPM++ 2M Karras": [0.462851, 0.469044, 0.556778, 0.506324, 0.480839, 0.538555, 0.434744, 0.437281, 0.458822],
        "DPM++ 2M SDE": [0.401383, 0.446016, 0.569270, 0.504354, 0.497133, 0.562187, 0.484434, 0.471086, 0.482374],
        "DPM++ 2M SDE Karras": [
            0.440788, 0.461155, 0.552588, 0.495227, 0.477324, 0.537405, 0.443099, 0.444183, 0.464852],
        "DPM++ SDE": [0.417235, 0.437642, 0.591731, 0.519966, 0.484249, 0.565657, 0.474523, 0.457757, 0.476777],
        "DPM++ SDE Karras": [0.429151, 0.448405, 0.582469, 0.523544, 0.492524, 0.558229, 0.472708, 0.460008, 0.475720],
        "DEIS": [0.457836, 0.471753, 0.579782, 0.531697, 0.505246, 0.553918, 0.446065, 0.448615, 0.465159],
        "UniPC": [0.458099, 0.471617, 0.579730, 0.531812, 0.505210, 0.553772, 0.446270, 0.448648, 0.465295],
    },
    "sdxl": {
        "DDIM": [0.566415, 0.565331, 0.464006, 0.668692, 0.581345, 0.440854, 0.515533, 0.534855, 0.417054],
        "DDPM": [0.515025, 0.535435, 0.449418, 0.535490, 0.429034, 0.399537, 0.400578, 0.432376, 0.408513],
        "PNDM": [0.517744, 0.439919, 0.443908, 0.543063, 0.482466, 0.455197, 0.507629, 0.489742, 0.438888],
        "PLMS": [0.529024, 0.451622, 0.450475, 0.548282, 0.490911, 0.456979, 0.499494, 0.491445, 0.435356],
        "LMS": [0.532777, 0.451303, 0.449427, 0.555785, 0.493005, 0.456447, 0.502384, 0.494114, 0.434331],
        "LMS Karras": [0.534652, 0.450862, 0.448986, 0.560182, 0.494025, 0.456366, 0.504534, 0.495807, 0.434078],
        "Euler": [0.533350, 0.451141, 0.449243, 0.557168, 0.493228, 0.456353, 0.503038, 0.494615, 0.434219],
        "Euler a": [0.591081, 0.440290, 0.435579, 0.576584, 0.458493, 0.444019, 0.503296, 0.479435, 0.432572],
        "Heun": [0.531285, 0.451638, 0.450405, 0.551437, 0.491783, 0.456941, 0.500702, 0.492287, 0.434995],
        "DPM2": [0.526269, 0.451964, 0.450038, 0.546542, 0.492142, 0.456803, 0.499282, 0.491742, 0.434948],
        "DPM2 a": [0.579883, 0.439188, 0.439299, 0.559691, 0.456658, 0.447262, 0.496607, 0.474280, 0.434492],
        "DPM2 Karras": [0.523353, 0.450365, 0.450316, 0.542541, 0.489886, 0.457241, 0.496455, 0.489488, 0.435565],
        "DPM++ 2M": [0.522034, 0.440705, 0.443929, 0.548575, 0.484137, 0.455458, 0.510131, 0.492050, 0.438696],
        "DPM++ 2M Karras": [0.505333, 0.424237, 0.428226, 0.531267, 0.461884, 0.443883, 0.524261, 0.491488, 0.448193],
        "DPM++ 2M SDE": [0.582397, 0.426318, 0.430614, 0.564827, 0.435502, 0.444698, 0.510192, 0.476188, 0.439441],
        "DPM++ 2M SDE Karras": [
            0.523931, 0.423993, 0.424391, 0.538908, 0.452280, 0.440786, 0.526126, 0.488494, 0.447179],
        "DPM++ SDE": [0.653811, 0.554342, 0.486670, 0.655944, 0.573595, 0.490277, 0.586759, 0.573382, 0.459231],
        "DPM++ SDE Karras": [0.616616, 0.515221, 0.476235, 0.627438, 0.544693, 0.481402, 0.558910, 0.552015, 0.456101],
        "DEIS": [0.522446, 0.440712, 0.443887, 0.549189, 0.484228, 0.455447, 0.510525, 0.492297, 0.438661],
        "UniPC": [0.521363, 0.440715, 0.443937, 0.547574, 0.484016, 0.455473, 0.509617, 0.491685, 0.438754],
    },
    "pixart": {
        "DDIM": [0.600370, 0.594844, 0.503309, 0.489924, 0.586835, 0.511090, 0.505911, 0.541822, 0.545034],
        "DDPM": [0.501095, 0.531717, 0.502287, 0.493606, 0.550339, 0.537744, 0.533097, 0.559819, 0.552984],
        "PNDM": [0.420647, 0.364990, 0.497270, 0.458226, 0.475548, 0.541147, 0.499068, 0.519924, 0.527530],
        "PLMS": [0.429255, 0.385536, 0.507874, 0.465353, 0.495380, 0.542506, 0.514267, 0.531664, 0.532651],
        "LMS": [0.450479, 0.413842, 0.521356, 0.501527, 0.508022, 0.546388, 0.529544, 0.542192, 0.545250],
        "LMS Karras": [0.449300, 0.412252, 0.520650, 0.500352, 0.507136, 0.546068, 0.529017, 0.541881, 0.544940],
        "Euler": [0.450494, 0.413862, 0.521365, 0.501545, 0.508032, 0.546392, 0.529554, 0.542199, 0.545258],
        "Euler a": [0.451164, 0.414615, 0.522322, 0.502500, 0.508292, 0.548024, 0.529770, 0.542155, 0.545497],
        "Heun": [0.424818, 0.379254, 0.503149, 0.467104, 0.488868, 0.538561, 0.510065, 0.527681, 0.531405],
        "DPM2": [0.408472, 0.354495, 0.488325, 0.445426, 0.465023, 0.532379, 0.498868, 0.523359, 0.528909],
        "DPM2 a": [0.411576, 0.359135, 0.488056, 0.440109, 0.473554, 0.532423, 0.493508, 0.514597, 0.518995],
        "DPM2 Karras": [0.413314, 0.370313, 0.492873, 0.455040, 0.478226, 0.534354, 0.504645, 0.527160, 0.531035],
        "DPM++ 2M": [0.447138, 0.409332, 0.519204, 0.497772, 0.505453, 0.545492, 0.527716, 0.541002, 0.544158],
        "DPM++ 2M Karras": [0.446920, 0.409079, 0.519196, 0.497727, 0.505472, 0.545443, 0.527679, 0.540972, 0.544047],
        "DPM++ 2M SDE": [0.449522, 0.411692, 0.522381, 0.500753, 0.505872, 0.551452, 0.528005, 0.540441, 0.544716],
        "DPM++ 2M SDE Karras": [
            0.449592, 0.412035, 0.522441, 0.501218, 0.506543, 0.550856, 0.528410, 0.540789, 0.544732],
        "DPM++ SDE": [0.432110, 0.392788, 0.513690, 0.479149, 0.493507, 0.548798, 0.518234, 0.534328, 0.539520],
        "DPM++ SDE Karras": [0.426360, 0.387134, 0.509428, 0.469992, 0.489359, 0.547004, 0.513118, 0.530564, 0.536010],
        "DEIS": [0.447446, 0.409750, 0.519403, 0.498130, 0.505685, 0.545573, 0.527898, 0.541125, 0.544273],
        "UniPC": [0.446873, 0.408973, 0.519032, 0.497462, 0.505253, 0.545420, 0.527559, 0.540896, 0.544058],
    },
    "sd3": {
        "Euler (flow)": [0.490108, 0.457062, 0.488586, 0.515476, 0.480827, 0.488406, 0.527526, 0.522252, 0.503511],
        "Heun (flow)": [0.487842, 0.458559, 0.484633, 0.513516, 0.481522, 0.485853, 0.525300, 0.522122, 0.504800],
        "DPM++ 2M (flow)": [0.488765, 0.458072, 0.487677, 0.514281, 0.480884, 0.487734, 0.527357, 0.522119, 0.504369],
        "UniPC (flow)": [0.488755, 0.458441, 0.487674, 0.514029, 0.481009, 0.487591, 0.527146, 0.522182, 0.504368],
        "DPM++ 2S (flow)": [0.488961, 0.457854, 0.487816, 0.514457, 0.480865, 0.487814, 0.527365, 0.522149, 0.504281],
    },
    "flux": {
        "Euler (flow)": [0.548361, 0.617506, 0.547123, 0.607046, 0.607631, 0.503068, 0.548072, 0.575323, 0.476914],
        "Heun (flow)": [0.548110, 0.618863, 0.545217, 0.607837, 0.608509, 0.502116, 0.549977, 0.577844, 0.476003],
        "DPM++ 2M (flow)": [0.548143, 0.618269, 0.547228, 0.606891, 0.608047, 0.502919, 0.548609, 0.575792, 0.476752],
        "UniPC (flow)": [0.548235, 0.617588, 0.546592, 0.607270, 0.607898, 0.502724, 0.548705, 0.576047, 0.476731],
        "DPM++ 2S (flow)": [0.548109, 0.617958, 0.547840, 0.606092, 0.607724, 0.503326, 0.547885, 0.575171, 0.477109],
    },
    "sana_flow": {
        "Euler (flow)": [0.313839, 0.295938, 0.605886, 0.349127, 0.340999, 0.604086, 0.343529, 0.316106, 0.526349],
        "Heun (flow)": [0.323193, 0.301848, 0.602847, 0.364907, 0.343651, 0.599135, 0.346260, 0.312010, 0.522715],
        "DPM++ 2M (flow)": [0.314992, 0.297159, 0.602005, 0.352689, 0.337842, 0.596938, 0.339015, 0.308246, 0.522874],
        "UniPC (flow)": [0.313868, 0.296545, 0.601326, 0.351475, 0.337252, 0.595878, 0.337055, 0.306681, 0.522171],
        "DPM++ 2S (flow)": [0.315697, 0.297251, 0.602651, 0.353099, 0.337739, 0.597719, 0.339377, 0.308471, 0.523030],
    },
    "sana_eps": {
        "DDIM": [0.711407, 0.666376, 0.764013, 0.745961, 0.695731, 0.801157, 0.518587, 0.476980, 0.587792],
        "DDPM": [0.612999, 0.547342, 0.609886, 0.620644, 0.560502, 0.624447, 0.511178, 0.484344, 0.583428],
        "PNDM": [0.330368, 0.328154, 0.493528, 0.390075, 0.354331, 0.530482, 0.358006, 0.352062, 0.567847],
        "PLMS": [0.304033, 0.297144, 0.499617, 0.356443, 0.329723, 0.526995, 0.365150, 0.358297, 0.583523],
        "DPM++ 2M": [0.304403, 0.294009, 0.544409, 0.354233, 0.328507, 0.557017, 0.397468, 0.388598, 0.642352],
        "DPM++ 2M Karras": [0.304606, 0.294017, 0.544587, 0.354327, 0.328523, 0.556849, 0.396975, 0.388166, 0.641865],
        "DPM++ 2M SDE": [0.300297, 0.293299, 0.541228, 0.349510, 0.321921, 0.561523, 0.383644, 0.377274, 0.637879],
        "DPM++ 2M SDE Karras": [
            0.301688, 0.293993, 0.542644, 0.350488, 0.323379, 0.560544, 0.384035, 0.377708, 0.637363],
        "DEIS": [0.304608, 0.294357, 0.544626, 0.354449, 0.328858, 0.557234, 0.397758, 0.389047, 0.642611],
        "UniPC": [0.304232, 0.293713, 0.544222, 0.354049, 0.328206, 0.556826, 0.397219, 0.388211, 0.642122],
    },
    "lcm": {
        "LCM": [0.439291, 0.471035, 0.570231, 0.489943, 0.474415, 0.560170, 0.447415, 0.445839, 0.453508],
        "TCD": [0.471996, 0.479095, 0.569836, 0.506578, 0.478370, 0.555000, 0.437361, 0.437243, 0.448257],
    },
}


def _build_lcm(folder: Path) -> Path:
    """SD 1.5's tiny shape with an LCM-distilled UNet's guidance embedding (``time_cond_proj_dim``) and LCM."""
    import torch
    from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_families import build_sd15

    build_sd15(folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(1)
    pipe.unet = UNet2DConditionModel.from_config(pipe.unet.config, time_cond_proj_dim=32)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory, one_torch_thread):
    """``family(name) -> (pipe, info)``: each tiny family built, loaded and read once per module."""
    from tiny_families import FAMILIES

    from studio_core.models import load_pipeline
    from studio_core.spec import model_info

    root, loaded = tmp_path_factory.mktemp("families"), {}

    def get(name: str):
        if name not in loaded:
            folder = _build_lcm(root / name) if name == "lcm" else FAMILIES[name](root / name)
            loaded[name] = load_pipeline(folder), model_info(str(folder))
        return loaded[name]

    return get


def _slice(pipe, name: str, steps: int) -> np.ndarray:
    import torch

    torch.manual_seed(SEED)
    image = pipe([PROMPT], generator=[torch.Generator().manual_seed(SEED)], num_inference_steps=steps,
                 guidance_scale=GUIDANCE, output_type="np", **CALL[name]).images
    assert np.isfinite(image).all()
    return image[0, -3:, -3:, -1].astype(np.float64)


@pytest.fixture(scope="module")
def slices(family) -> dict[str, dict[str, np.ndarray]]:
    """family -> sampler -> its slice, each offered sampler run once; ``"(model's own)"`` is the run without it.

    On the way, every flow run checks that the pipeline passed ``set_timesteps`` exactly the arguments the
    knob's table says (``sigmas`` / ``mu``): the facts behind the refusals of Heun (flow) and friends."""
    knob, out = KNOBS["sampler"], {}
    for name in CALL:
        pipe, info = family(name)
        original = pipe.scheduler
        out[name] = {"(model's own)": _slice(pipe, name, STEPS)}
        for sampler in samplers_for(info):
            definition = SAMPLERS[sampler]
            applied = knob.apply(pipe, SamplerSettings(sampler))
            passed: list[set[str]] = []
            set_timesteps = pipe.scheduler.set_timesteps

            def spy(*args, _inner=set_timesteps, **kwargs):
                passed.append({k for k, v in kwargs.items() if k in ("sigmas", "mu") and v is not None})
                return _inner(*args, **kwargs)

            spy.__signature__ = inspect.signature(set_timesteps)  # retrieve_timesteps reads it
            pipe.scheduler.set_timesteps = spy
            try:
                assert type(pipe.scheduler).__name__ == definition.cls
                out[name][sampler] = _slice(pipe, name, max(STEPS, definition.min_steps))
            finally:
                applied.undo()
            assert pipe.scheduler is original, f"undo of {sampler} did not restore {name}'s scheduler"
            config = dict(original.config)
            assert passed == [_timestep_args(info.pipeline_class, definition, config)], (name, sampler, passed)
    return out


@pytest.mark.parametrize("config, time_cond_proj_dim, kind", [
    ({"_class_name": "DDIMScheduler"}, None, "epsilon"),
    ({"_class_name": "EulerDiscreteScheduler", "prediction_type": "v_prediction"}, None, "v_prediction"),
    ({"_class_name": "DDPMScheduler", "prediction_type": "sample"}, None, "sample"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, None, "flow"),
    ({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True},
     None, "flow"),
    ({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True}, None, "flow"),
    ({"_class_name": "LCMScheduler"}, None, "consistency"),
    ({"_class_name": "TCDScheduler"}, None, "consistency"),
    ({"_class_name": "DDIMScheduler"}, 256, "consistency"),  # an LCM UNet left with its base scheduler
])
def test_model_kind_reads_the_scheduler_config(config, time_cond_proj_dim, kind):
    assert model_kind(config, time_cond_proj_dim) == kind


@pytest.mark.parametrize("name", list(CALL))
def test_each_family_is_offered_the_samplers_of_its_kind(name, family):
    _, info = family(name)
    assert samplers_for(info) == OFFERED[name]


@pytest.mark.parametrize("name, sampler", [(n, s) for n, names in OFFERED.items() for s in names])
def test_each_offered_sampler_matches_its_golden_slice(name, sampler, family, slices):
    _, info = family(name)
    assert KNOBS["sampler"].check_model(info, SamplerSettings(sampler)) is None
    got = slices[name][sampler]
    literal = "[" + ", ".join(f"{v:.6f}" for v in got.flatten()) + "]"
    assert sampler in GOLDEN.get(name, {}), f"no golden slice for {name} {sampler!r}: {literal}"
    np.testing.assert_allclose(got.flatten(), GOLDEN[name][sampler], rtol=0, atol=ATOL,
                               err_msg=f"{name} {sampler}: slice is now {literal}")


def test_golden_slices_differ_between_samplers_and_match_the_models_own(slices):
    """Flow models get at least four samplers whose images differ; every family's own scheduler, asked for by
    name, gives exactly the model's own image."""
    if os.environ.get("STUDIO_PRINT_GOLDEN"):
        print("\nGOLDEN: dict[str, dict[str, list[float]]] = {")
        for name, by_sampler in slices.items():
            print(f'    "{name}": {{')
            for sampler, values in by_sampler.items():
                if sampler in SAMPLERS:
                    numbers = [f"{v:.6f}" for v in values.flatten()]
                    line = f'        "{sampler}": [' + ", ".join(numbers) + "],"
                    if len(line) > 120:  # the longest names: the list goes on the next line
                        line = f'        "{sampler}": [\n            ' + ", ".join(numbers) + "],"
                    print(line)
            print("    },")
        print("}")
    for name, by_sampler in slices.items():
        assert np.abs(by_sampler["(model's own)"] - by_sampler[OWN[name]]).max() <= ATOL, name
    for name in FLOW:
        runs = {s: v for s, v in slices[name].items() if s in SAMPLERS}
        assert len(runs) >= 4, name
        same = [(a, b) for a, b in itertools.combinations(runs, 2) if np.abs(runs[a] - runs[b]).max() <= ATOL]
        assert same == [], (name, same)


@pytest.mark.parametrize("name", list(REFUSED))
def test_an_incompatible_sampler_is_refused_with_the_reason_and_the_list(name, family):
    _, info = family(name)
    sampler, message = REFUSED[name]
    assert KNOBS["sampler"].check_model(info, SamplerSettings(sampler)) == message


def test_validation_refuses_before_loading(family):
    """``resolve`` (no weights read) raises the knob's refusal on the field ``sampler``."""
    from studio_core.errors import SpecError
    from studio_core.spec import RunSpec, resolve

    _, info = family("sd3")
    with pytest.raises(SpecError, match=r"Euler serves .* this model is flow-matching .* choose one of Euler \(flow\)"):
        resolve(RunSpec(model=info.path, prompts=(PROMPT,), sampler="Euler", steps=2), info)


def test_what_the_refusals_prevent(family):
    """Forced past the check, the refused choices fail as the reasons say: Flux passes sigmas and mu that
    diffusers' own flow Heun cannot take (why Heun (flow) is the studio's subclass), and Karras sigmas on flow
    Sana give no image (NaN)."""
    import diffusers

    pipe, _ = family("flux")
    original = pipe.scheduler
    pipe.scheduler = diffusers.FlowMatchHeunDiscreteScheduler.from_config(original.config)
    try:
        with pytest.raises(ValueError, match="does not support custom sigmas"):
            _slice(pipe, "flux", STEPS)
    finally:
        pipe.scheduler = original
    pipe, _ = family("sana_flow")
    original = pipe.scheduler
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(original.config, use_karras_sigmas=True)
    try:
        with pytest.raises(AssertionError):  # _slice asserts a finite image
            _slice(pipe, "sana_flow", STEPS)
    finally:
        pipe.scheduler = original


def test_a_flux_without_dynamic_shifting_is_refused_what_fluxpipeline_cannot_pass(family, tmp_path):
    """FLUX.1-schnell's schedule (static shift 1, no dynamic shifting): FluxPipeline still passes ``mu`` (and
    ``sigmas`` unless the scheduler makes flow sigmas), which DPM-Solver++ takes only with dynamic shifting (it
    asserts it); FlowMatch Euler and the studio's Heun take both, and use ``mu`` only with dynamic shifting."""
    pipe, info = family("flux")
    (tmp_path / "scheduler").mkdir()
    config = {**dict(pipe.scheduler.config), "_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0,
              "use_dynamic_shifting": False}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    schnell = dataclasses.replace(info, path=str(tmp_path))
    offered = ["Euler (flow)", "Heun (flow)", "UniPC (flow)"]
    assert samplers_for(schnell) == offered
    knob, choose = KNOBS["sampler"], f": choose one of {', '.join(offered)}"
    assert knob.check_model(schnell, SamplerSettings("DPM++ 2M (flow)")) == (
        "FluxPipeline passes mu (a dynamic shift) to set_timesteps, which DPMSolverMultistepScheduler "
        "(DPM++ 2M (flow)) takes only with dynamic shifting; this model's schedule has none" + choose)


@pytest.mark.parametrize("name, sampler, expected", [
    ("sd3", "DPM++ 2M (flow)", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}),
    ("sd3", "Heun (flow)", {"shift": 3.0}),
    ("flux", "Heun (flow)", {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}),
    ("sana_flow", "Euler (flow)", {"shift": 3.0}),
    ("flux", "UniPC (flow)", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                              "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}),
])
def test_flow_samplers_carry_the_models_shift(name, sampler, expected, family):
    """The model's ``shift`` becomes the flow solvers' ``flow_shift``; dynamic shifting and its bounds (read
    by the pipeline to compute ``mu``) carry over; the report says so."""
    pipe, _ = family(name)
    applied = KNOBS["sampler"].apply(pipe, SamplerSettings(sampler))
    try:
        config = pipe.scheduler.config
        assert {k: config.get(k) for k in expected} == expected
        report = applied.report()
        assert report.active and report.details["dynamic_shifting"] == (name == "flux")
        assert ("dynamic shifting" in report.summary) == (name == "flux")
    finally:
        applied.undo()
