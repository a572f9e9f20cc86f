"""Memory layout and VAE decode memory: channels-last weights, VAE slicing, VAE tiling.

* ``channels_last``: the 4-D convolution weights of the denoiser and the VAE are stored NHWC
  (``torch.channels_last``) instead of NCHW. Convolution kernels of oneDNN (CPU) and cuDNN (GPU) are
  faster in NHWC, and PyTorch propagates the layout: a convolution whose weight is channels-last
  returns a channels-last output, so the activations follow (PyTorch tutorial "Channels Last Memory
  Format"; diffusers docs, "Speed up inference": ``pipe.unet.to(memory_format=torch.channels_last)``).
  Only the strides change, never a value: undo makes the same weights contiguous again, exactly. 1x1
  kernels have the same strides in both layouts and are counted apart.
* ``vae_slicing``: ``vae.enable_slicing()`` decodes a batch one latent at a time: the peak memory of
  the decode is that of one image; it acts only when a pipeline call decodes more than one image.
* ``vae_tiling``: ``vae.enable_tiling()`` decodes overlapping tiles of ``tile_latent_min_size`` latent
  pixels (the VAE's ``sample_size`` in image pixels) and blends their seams, so decoder memory stops
  growing with resolution (at the cost of seams that blending hides); it acts only when the latent is
  larger than one tile. Undo calls ``disable_slicing()`` / ``disable_tiling()`` where the flag was off.

The report says what changed and whether slicing and tiling actually did anything in this run: the
latents' batch at the end of the denoising loop (through ``callback_on_step_end``) and instance-level
wrappers of ``vae._decode`` and ``vae.tiled_decode`` (the methods ``vae.decode`` dispatches to) count
the decodes, their latent sizes and the tiled ones. "Did nothing" is said plainly, e.g. when the image
is not larger than the VAE's tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from studio_core.knobs import register
from studio_core.knobs._hooks import denoiser_of
from studio_core.knobs._validate import check_bool
from studio_core.knobs.base import Applied, Knob, KnobReport

if TYPE_CHECKING:
    import torch

__all__ = ["MemoryKnob", "MemorySettings", "to_channels_last"]


@dataclass(frozen=True)
class MemorySettings:
    """Every setting is off by default: each one is something the user turns on (a layout change included)."""

    channels_last: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False


def to_channels_last(module: torch.nn.Module) -> tuple[list[torch.nn.Parameter], int, int]:
    """Make the 4-D weights of ``module`` channels-last in place; returns (changed parameters, 4-D
    parameters in all, those already channels-last such as 1x1 kernels)."""
    import torch

    changed, total, already = [], 0, 0
    for p in module.parameters():
        if p.dim() != 4:
            continue
        total += 1
        if p.is_contiguous(memory_format=torch.channels_last):
            already += 1
            continue
        p.data = p.data.contiguous(memory_format=torch.channels_last)
        changed.append(p)
    return changed, total, already


class _DecodeLog:
    """Counts what ``vae.decode`` did: latent batches at the end of the loop, ``_decode`` and tiled calls."""

    def __init__(self) -> None:
        self.loop_batches: list[int] = []  # latent batch at the last step of each pipeline call
        self.decode_shapes: list[tuple[int, ...]] = []  # z of each _decode call
        self.tiled = 0

    def callback(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        total = getattr(pipe, "_num_timesteps", None)
        latents = callback_kwargs.get("latents")
        if latents is not None and (total is None or int(i) + 1 >= int(total)):
            self.loop_batches.append(int(latents.shape[0]))
        return {}


@register
class MemoryKnob(Knob):
    name = "memory"
    title = "Memory layout / VAE slicing and tiling"
    description = ("Channels-last convolution weights for the denoiser and VAE; decode one image at a time (VAE "
                   "slicing) or in tiles (VAE tiling) to cap the decoder's memory.")
    Settings = MemorySettings
    order = 85
    group = "compile & memory"

    def validate(self, settings: MemorySettings) -> None:
        for name in ("channels_last", "vae_slicing", "vae_tiling"):
            check_bool(f"{self.field_name}.{name}", getattr(settings, name))

    def label(self, settings: MemorySettings) -> str:
        parts = [name for flag, name in (("channels_last", "channels-last"), ("vae_slicing", "VAE slicing"),
                                         ("vae_tiling", "VAE tiling")) if getattr(settings, flag)]
        return " · ".join(parts) if parts else "memory layout unchanged"

    def is_baseline(self, settings: MemorySettings) -> bool:
        return not (settings.channels_last or settings.vae_slicing or settings.vae_tiling)

    def supports(self, pipe, settings: MemorySettings) -> str | None:
        vae = getattr(pipe, "vae", None)
        for flag, method in (("vae_slicing", "enable_slicing"), ("vae_tiling", "enable_tiling")):
            if getattr(settings, flag) and not hasattr(vae, method):
                return f"this pipeline's VAE ({type(vae).__name__}) has no {method}()"
        if settings.channels_last and denoiser_of(pipe) is None:
            return "this pipeline has no denoiser"
        return None

    def apply(self, pipe, settings: MemorySettings) -> Applied:
        import torch

        vae = getattr(pipe, "vae", None)
        undo_steps: list = []
        layout: dict[str, dict] = {}
        log = _DecodeLog()
        call_kwargs: dict = {}
        try:
            if settings.channels_last:
                for label, module in (("denoiser", denoiser_of(pipe)), ("vae", vae)):
                    if isinstance(module, torch.nn.Module):
                        changed, total, already = to_channels_last(module)
                        layout[label] = {"weights_4d": total, "converted": len(changed),
                                         "already_channels_last": already}
                        undo_steps.append(lambda changed=changed: _contiguous(changed))
            flags = {}
            for flag, attr, on, off in (("vae_slicing", "use_slicing", "enable_slicing", "disable_slicing"),
                                        ("vae_tiling", "use_tiling", "enable_tiling", "disable_tiling")):
                if getattr(settings, flag):
                    before = bool(getattr(vae, attr, False))
                    getattr(vae, on)()
                    flags[flag] = {"before": before, "after": bool(getattr(vae, attr, False))}
                    if not before:
                        undo_steps.append(getattr(vae, off))
            if (settings.vae_slicing or settings.vae_tiling) and vae is not None:
                undo_steps.append(_wrap_decode(vae, log))
                if settings.vae_slicing:
                    call_kwargs["callback_on_step_end"] = log.callback
        except BaseException:
            _run(undo_steps)
            raise

        def undo() -> None:
            _run(undo_steps)

        def report() -> KnobReport:
            return self._report(settings, pipe, vae, layout, flags, log)

        return Applied(self.name, call_kwargs, undo=undo, report=report)

    def _report(self, settings: MemorySettings, pipe, vae, layout: dict, flags: dict, log: _DecodeLog) -> KnobReport:
        import torch

        parts, acted = [], False
        details: dict = {"channels_last": layout, "flags": flags}
        if settings.channels_last:
            now = {}
            for label, module in (("denoiser", denoiser_of(pipe)), ("vae", vae)):
                if isinstance(module, torch.nn.Module):
                    w = [p for p in module.parameters() if p.dim() == 4]
                    now[label] = sum(p.is_contiguous(memory_format=torch.channels_last) for p in w)
            details["channels_last_now"] = now
            converted = sum(v["converted"] for v in layout.values())
            if converted:
                acted = True
                def one(k: str, v: dict) -> str:
                    kept = v["already_channels_last"]
                    return (f"{k} {v['converted']} of {v['weights_4d']} converted"
                            + (f" ({kept} 1x1 or already channels-last)" if kept else ""))

                parts.append("channels-last conv weights: " + ", ".join(one(k, v) for k, v in layout.items()))
            else:
                parts.append("channels-last did nothing: no 4-D weight needed converting")
        shapes = log.decode_shapes
        details.update(decode_calls=len(shapes), decode_latent_shapes=sorted({tuple(s) for s in shapes}),
                       tiled_decodes=log.tiled, loop_batches=sorted(set(log.loop_batches)))
        if settings.vae_slicing:
            batches = log.loop_batches
            if any(b > 1 for b in batches):
                acted = True
                parts.append(f"VAE slicing decoded batches of {max(batches)} one image at a time "
                             f"({len(shapes)} single-image decodes)")
            elif batches:
                parts.append("VAE slicing did nothing: every pipeline call decodes one image")
            else:
                parts.append("VAE slicing on (no decode seen)")
        if settings.vae_tiling:
            tile = getattr(vae, "tile_latent_min_size", None)
            details["tile_latent_min_size"] = tile
            details["tile_sample_min_size"] = getattr(vae, "tile_sample_min_size", None)
            if log.tiled:
                acted = True
                parts.append(f"VAE tiling decoded {log.tiled} latent(s) in tiles of {tile} latent px")
            elif shapes:
                h, w = max(s[-2] for s in shapes), max(s[-1] for s in shapes)
                parts.append(f"VAE tiling did nothing: the latent ({h}x{w}) is not larger than the VAE's tile "
                             f"({tile} latent px = {details['tile_sample_min_size']} image px)")
            else:
                parts.append("VAE tiling on (no decode seen)")
        return KnobReport(self.name, acted, "; ".join(parts) or "nothing asked", details)


def _contiguous(params: list[torch.nn.Parameter]) -> None:
    for p in params:
        p.data = p.data.contiguous()


def _run(steps: list) -> None:
    for step in reversed(steps):
        step()
    steps.clear()


def _wrap_decode(vae, log: _DecodeLog):
    """Instance-level wrappers of ``vae._decode`` and ``vae.tiled_decode`` that log each call; returns
    the function that removes them."""
    names = [n for n in ("_decode", "tiled_decode") if callable(getattr(vae, n, None)) and n not in vae.__dict__]
    for name in names:
        original = getattr(vae, name)

        def wrapped(z, *args, _original=original, _name=name, **kwargs):
            if _name == "_decode":
                log.decode_shapes.append(tuple(z.shape))
            else:
                log.tiled += 1
            return _original(z, *args, **kwargs)

        object.__setattr__(vae, name, wrapped)

    def remove() -> None:
        for name in names:
            vae.__dict__.pop(name, None)

    return remove
