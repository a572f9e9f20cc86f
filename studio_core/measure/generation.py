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

__all__ = ["generate", "stopping_callback", "to_uint8"]


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
