"""Seeded generation: the one function that turns (prompt, seed) pairs into uint8 images.

The engine's timed passes, the reference, training's evaluation and gallery, and the benchmarks all
call ``generate``, so an image of a given (prompt, seed) is made the same way everywhere: one
``torch.Generator`` per image, seeded by its seed, whatever the batch it is generated in.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence

import numpy as np

from studio_core.errors import RunCancelled
from studio_core.measure.sanity import check_finite

__all__ = ["generate", "pipeline_call_kwargs", "stopping_callback", "to_uint8"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline ``output_type="np"`` images in [0, 1] -> uint8, rounded."""
    return (np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _takes(pipe_class: type, argument: str) -> bool:
    return argument in inspect.signature(pipe_class.__call__).parameters


def stopping_callback(stop: Callable[[], str | None], callback: Callable | None = None) -> Callable:
    """A ``callback_on_step_end`` that raises ``RunCancelled`` with ``stop()``'s reason when it gives one (checked
    after every denoiser step), and otherwise hands over to ``callback`` (the knobs' chained callback)."""
    def check(pipe, i, t, callback_kwargs):
        reason = stop()
        if reason:
            raise RunCancelled(f"{reason} (after denoiser step {i + 1})")
        return callback(pipe, i, t, callback_kwargs) if callback is not None else {}
    return check


def pipeline_call_kwargs(pipe, call_kwargs: dict) -> dict:
    """What the pipeline needs beyond the studio's common arguments, so every family means the same by them:

    - ``guidance_scale`` of a FluxPipeline whose transformer has no guidance embedding (a model trained with
      caption dropout, like emoji-flux, rather than FLUX.1-dev's guidance-distilled one) is true
      classifier-free guidance: ``true_cfg_scale`` with an empty negative prompt. FluxPipeline itself would
      ignore ``guidance_scale`` there, so the figure would claim a guidance that never happened.
    - The T5 sequence is padded to its tokenizer's ``model_max_length`` when that is below the pipeline's
      ``max_sequence_length`` default (512 for Flux, 256 for SD3): padding beyond what the encoder was built
      for costs attention work on every step and changes nothing the model was trained on."""
    cls = type(pipe)
    kwargs = dict(call_kwargs)
    transformer = getattr(pipe, "transformer", None)
    if (_takes(cls, "true_cfg_scale") and transformer is not None
            and not getattr(transformer.config, "guidance_embeds", True) and "guidance_scale" in kwargs):
        g = float(kwargs["guidance_scale"])
        if g > 1 and "true_cfg_scale" not in kwargs:
            kwargs["true_cfg_scale"] = g
            kwargs.setdefault("negative_prompt", "")
    if _takes(cls, "max_sequence_length") and "max_sequence_length" not in kwargs:
        tok = next((t for t in (getattr(pipe, "tokenizer_2", None), getattr(pipe, "tokenizer_3", None))
                    if type(t).__name__.startswith("T5")), None)
        default = inspect.signature(cls.__call__).parameters["max_sequence_length"].default
        limit = getattr(tok, "model_max_length", None)
        if isinstance(limit, int) and isinstance(default, int) and 0 < limit < default:
            kwargs["max_sequence_length"] = limit
    return kwargs


def generate(pipe, pairs: Sequence[tuple[str, int]], *, batch: int | None = None,
             on_call: Callable[[], None] | None = None, stop: Callable[[], str | None] | None = None,
             **call_kwargs) -> np.ndarray:
    """(N, H, W, 3) uint8 images of ``pairs`` in order, ``batch`` per pipeline call (default: all in one).
    Each image has its own seeded generator; torch's global RNG is seeded with the call's first seed, so
    samplers that ignore the generators are reproducible too (for the same batching).

    ``call_kwargs`` go to every pipeline call (steps, guidance, knobs' arguments); ``on_call`` runs
    before each call (the engine's probe starts a new call record there). NaN or infinite output is a
    ``BadOutput`` error (``studio_core.measure.sanity``).

    ``stop`` returns why to stop (the client went away, Cancel was pressed) or None: it is checked before
    every pipeline call and, where the pipeline takes ``callback_on_step_end``, after every denoiser step;
    a reason raises ``RunCancelled``."""
    import torch

    pairs = list(pairs)
    if not pairs:
        raise ValueError("no (prompt, seed) pairs to generate")
    batch = batch or len(pairs)
    call_kwargs = pipeline_call_kwargs(pipe, call_kwargs)
    if _takes(type(pipe), "clean_caption"):  # PixArt/Sana: prompts go in as given (cleaning needs bs4 and ftfy,
        call_kwargs.setdefault("clean_caption", False)  # and without them diffusers warns on every call)
    if stop is not None and _takes(type(pipe), "callback_on_step_end"):
        call_kwargs["callback_on_step_end"] = stopping_callback(stop, call_kwargs.get("callback_on_step_end"))
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            chunk = pairs[i:i + batch]
            if stop is not None and (reason := stop()):
                raise RunCancelled(f"{reason} (before a pipeline call)")
            if on_call is not None:
                on_call()
            gens = [torch.Generator().manual_seed(int(s)) for _, s in chunk]
            # samplers that draw from torch's global RNG instead of the generators (DPM++ SDE's Brownian tree;
            # the stochastic samplers of pipelines that never pass the generator to ``scheduler.step``)
            torch.manual_seed(int(chunk[0][1]))
            res = pipe([p for p, _ in chunk], generator=gens, output_type="np", **call_kwargs)
            check_finite(res.images)  # NaN would turn into black uint8 pixels unnoticed
            out.append(to_uint8(res.images))
    return np.concatenate(out)
