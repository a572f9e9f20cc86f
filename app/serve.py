"""Serving the studio: who may log in, where it listens, which files it hands out, what it accepts.

* **Login** (``--auth``): users come from ``$STUDIO_AUTH`` (``user:password``, several separated by
  newlines or commas) or from ``--auth-file`` (one ``user:password`` a line, ``#`` comments), never
  from the command line, where any user of the machine can read them (``ps``, shell history). A
  file open to group or others is refused (``chmod 600``); an empty or malformed entry is refused
  with its line number, and no message ever repeats a password.
* **Address**: loopback unless ``--host`` says otherwise; a non-loopback address without a login
  gets a warning.
* **Files**: gradio serves ``/gradio_api/file=...`` only from its upload/cache folder
  (``GRADIO_TEMP_DIR``, by default ``/tmp/gradio``, shared by every gradio app of the machine) and
  from ``allowed_paths``. The studio gives gradio a private cache folder of its own (mode 0700,
  removed at exit) unless the operator set one, passes no ``allowed_paths``, and blocks the study
  folder outright: images reach the page as arrays that gradio writes into that cache, so nothing
  in the study, and no file the studio did not produce, is ever served.
* **Size**: uploads are capped at ``MAX_UPLOAD`` (the studio has no upload widget; gradio's
  ``/upload`` route exists anyway); gradio's run history (which can reach out to the Hub) is off.

Nothing here imports gradio or torch, so a bad flag is reported before anything heavy loads.
"""

from __future__ import annotations

import atexit
import hmac
import ipaddress
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["AUTH_ENV", "MAX_UPLOAD", "AuthError", "auth_checker", "is_loopback",
           "launch_options", "parse_users", "private_temp_dir", "read_users"]

AUTH_ENV = "STUDIO_AUTH"
MAX_UPLOAD = "1mb"
Users = list[tuple[str, str]]


class AuthError(ValueError):
    """The login settings cannot be used; the message says why (and never shows a password)."""


def parse_users(text: str, source: str, *, commas: bool = False) -> Users:
    """``user:password`` entries, one a line (and, with ``commas``, several a line); blank lines and
    ``#`` comments are skipped. Every problem names its line (and entry) in ``source``."""
    users: Users = []
    seen: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entries = line.split(",") if commas else [line]
        for k, entry in enumerate(entries, 1):
            where = f"{source}, line {n}" + (f", entry {k}" if len(entries) > 1 else "")
            entry = entry.strip()
            if not entry:
                raise AuthError(f"{where} is empty: expected user:password")
            if ":" not in entry:
                raise AuthError(f"{where} is not user:password (no ':')")
            user, password = entry.split(":", 1)
            user = user.strip()
            if not user or not password:
                raise AuthError(f"{where} has an empty {'user name' if not user else 'password'}: "
                                "expected user:password")
            if user in seen:
                raise AuthError(f"{where}: user {user!r} is already given at {seen[user]}")
            seen[user] = where
            users.append((user, password))
    if not users:
        raise AuthError(f"{source} names no users: expected user:password entries")
    return users


def read_users(auth: bool | str | None, auth_file: str | os.PathLike | None,
               environ: Mapping[str, str] = os.environ) -> Users | None:
    """The users ``--auth`` / ``--auth-file`` ask for, or None when neither is given."""
    if isinstance(auth, str):
        raise AuthError("--auth takes no value: never put a password on the command line, where every user of this "
                        f"machine can read it (ps, /proc, shell history). Put the users in ${AUTH_ENV} "
                        "('user:password', several separated by newlines or commas) or in a file given with "
                        "--auth-file PATH (chmod 600)")
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise AuthError(f"auth file {path} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise AuthError(f"auth file {path} is not a regular file")
        if mode & 0o077:
            raise AuthError(f"auth file {path} is open to group or others (mode {stat.S_IMODE(mode):04o}); "
                            f"make it private first: chmod 600 {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"auth file {path} cannot be read: {exc}") from None
        return parse_users(text, f"auth file {path}")
    if auth:
        text = environ.get(AUTH_ENV)
        if text is None:
            raise AuthError(f"--auth reads its users from ${AUTH_ENV}, which is not set ('user:password', several "
                            "separated by newlines or commas); or give --auth-file PATH")
        return parse_users(text, f"${AUTH_ENV}", commas=True)
    return None


def auth_checker(users: Users) -> Callable[[str, str], bool]:
    """gradio's ``auth`` callable: a constant-time comparison against the configured passwords."""
    table = {u: p.encode() for u, p in users}

    def check(user: str, password: str) -> bool:
        expected = table.get(user)
        return expected is not None and hmac.compare_digest(expected, str(password).encode())

    return check


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def private_temp_dir() -> Path:
    """Gradio's upload/cache folder for this process: ``$GRADIO_TEMP_DIR`` when the operator set it,
    else a fresh private folder (0700) removed at exit. Set before the page is built: gradio's
    components and server read it when they are made."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return Path(os.environ["GRADIO_TEMP_DIR"])
    path = Path(tempfile.mkdtemp(prefix="studio-gradio-"))
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def launch_options(*, host: str, port: int, users: Users | None, data_dir: Path, demo: bool = False) -> dict:
    """Keyword arguments for ``Blocks.launch``: the login, the upload cap, the study folder blocked. A
    demo shows only the studio's own messages (``gr.Error``), never the text of an unexpected exception."""
    return {
        "server_name": host, "server_port": port, "show_error": not demo,
        "auth": auth_checker(users) if users else None,
        "auth_message": "Diffusion Efficiency Studio: log in with the user name and password you were given."
        if users else None,
        "max_file_size": MAX_UPLOAD,
        "blocked_paths": [str(Path(data_dir).resolve())],  # never served, whatever allowed_paths say
        "run_history": False, "enable_monitoring": False, "mcp_server": False, "ssr_mode": False,
    }
