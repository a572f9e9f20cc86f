"""Every error type the studio raises on purpose, in one module that any other may import.

The messages are meant for the person at the page or the command line: each names what was wrong
and what is allowed. Keeping them here (and nothing else) means no module has to import another
one's internals, or hide an import inside a function, just to raise or catch its error.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadOutput",
    "DeviceWaitStopped",
    "KnobUnsupported",
    "ModelLoadError",
    "NoSpace",
    "SpecError",
    "StoreError",
    "StoreReadOnly",
    "StudioBusy",
    "SweepBusy",
    "UnsafePath",
]


class SpecError(ValueError):
    """An invalid run specification: names the field, the value given and what is allowed."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field_name, value, allowed
        super().__init__(f"{field_name}={value!r} is not allowed: {allowed}")


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message names the path and the reason."""


class KnobUnsupported(RuntimeError):
    """A knob cannot run on the loaded pipeline; the message says why."""


class StoreError(RuntimeError):
    """A store operation that would lose or overwrite data, or a missing row/file."""


class StoreReadOnly(StoreError):
    """A write to a study opened with ``read_only=True``."""


class UnsafePath(ValueError):
    """A name or path refused: it could leave its folder, follow a link, or is not a usable file name."""


class SweepBusy(RuntimeError):
    """The same sweep is being run by another live process."""


class StudioBusy(RuntimeError):
    """More generations or sweeps than the studio admits at once are already running or waiting."""


class BadOutput(RuntimeError):
    """A pipeline returned something that is not a picture: NaN or infinite values, or images that are
    constant or (nearly) all black. The message says which images and what to try."""


class DeviceWaitStopped(RuntimeError):
    """A sweep was cancelled while it still waited for the device: nothing ran."""



class RunCancelled(RuntimeError):
    """A run stopped between denoiser steps because its client went away or someone pressed Cancel; the
    message is the reason recorded with its ``cancelled`` row."""


class NoSpace(StoreError):
    """The study folder's disk has too little free space for a run; refused before any row is written. The
    message names the folder, what is free, what the run needs, and what to do."""
