"""Checks for names and paths that come from outside: a form, an API call, a CLI argument, a database row.

Each check raises :class:`UnsafePath` (a ``ValueError``) whose message names the value, what it was for
and why it is refused. Only ``inside`` and ``file_target`` look at the file system, with ``lstat``: they
never follow a link. The checks hold at the moment they run; a hostile process writing into the same
folder at the same time is out of scope.
"""

from __future__ import annotations

import os
import secrets
import stat
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn

from studio_core.errors import UnsafePath

__all__ = ["MAX_NAME_BYTES", "UnsafePath", "check_name", "check_path", "file_target", "inside",
           "replace_atomically"]

MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS file systems




def _refuse(what: str, value: object, why: str) -> NoReturn:
    shown = repr(value)
    raise UnsafePath(f"{what} {shown if len(shown) <= 80 else shown[:77] + '...'} is refused: {why}")


def _check_component(part: str, what: str, value: object) -> None:
    n = len(os.fsencode(part))
    if n > MAX_NAME_BYTES:
        _refuse(what, value, f"a name of {n} bytes is longer than the {MAX_NAME_BYTES} a file system allows")


def check_name(name: object, what: str) -> str:
    """``name`` if it is one plain file name: text, not empty, no NUL, separator or control character,
    not ``.``/``..``, no leading dot, at most 255 bytes of UTF-8."""
    if not isinstance(name, str):
        _refuse(what, name, f"a name must be text, not {type(name).__name__}")
    if not name:
        _refuse(what, name, "it is empty")
    if "\x00" in name:
        _refuse(what, name, "it contains a NUL byte")
    if "/" in name or "\\" in name:
        _refuse(what, name, "it contains a path separator ('/' or '\\')")
    if name in (".", ".."):
        _refuse(what, name, "'.' and '..' name folders, not files")
    if name.startswith("."):
        _refuse(what, name, "it starts with a dot (a hidden file)")
    control = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        _refuse(what, name, f"it contains the control character U+{ord(control):04X}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        _refuse(what, name, "it is not valid UTF-8 text")
    _check_component(name, what, name)
    return name


def check_path(path: object, what: str) -> Path:
    """``path`` as a Path if it is text (or path-like), not empty, without NUL, and no component is over
    255 bytes. Absolute and relative paths are both accepted."""
    raw = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(raw, str):
        _refuse(what, path, f"a path must be text, not {type(raw).__name__}")
    if not raw:
        _refuse(what, raw, "it is empty")
    if "\x00" in raw:
        _refuse(what, raw, "it contains a NUL byte")
    out = Path(raw)
    for part in out.parts:
        _check_component(part, what, raw)
    return out


def inside(root: str | os.PathLike, relative: object, what: str) -> Path:
    """``root/relative``, resolved and guaranteed to stay under ``root``: ``relative`` may not be absolute,
    contain ``..`` or NUL, or have an over-long component, and no existing component below ``root`` may
    be a symbolic link (each is ``lstat``-ed; the rest may not exist yet). ``root`` itself is trusted."""
    rel = check_path(relative, what)
    if rel.is_absolute():
        _refuse(what, relative, f"it is an absolute path; a path inside {root} is needed")
    if ".." in rel.parts:
        _refuse(what, relative, "it contains '..'")
    if not rel.parts:
        _refuse(what, relative, "it names the folder itself, not something in it")
    base = Path(root).resolve()
    target = base
    for part in rel.parts:
        target = target / part
        try:
            mode = os.lstat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            break
        if stat.S_ISLNK(mode):
            _refuse(what, relative, f"{target} is a symbolic link")
    return base.joinpath(*rel.parts)


def file_target(path: object, what: str) -> Path:
    """``path`` as a Path if a file may be written there: ``check_path``, and not an existing symbolic
    link or folder."""
    out = check_path(path, what)
    try:
        mode = os.lstat(out).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return out
    if stat.S_ISLNK(mode):
        _refuse(what, str(out), "it is a symbolic link")
    if stat.S_ISDIR(mode):
        _refuse(what, str(out), "it is a folder")
    return out


@contextmanager
def replace_atomically(target: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target``: write it in the block, and it is renamed onto ``target``
    when the block succeeds (a reader sees the old file or the whole new one) or removed when it fails."""
    tmp = target.with_name(f".{secrets.token_hex(8)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
