"""Serving the studio: who may log in, where it listens, which files it hands out, what it accepts.

* **Login** (``--auth``): users come from ``$STUDIO_AUTH`` (``user:password``, several separated by
  newlines or commas) or from ``--auth-file`` (one ``user:password`` a line, ``#`` comments), never
  from the command line, where any user of the machine can read them (``ps``, shell history). A
  file open to group or others is refused (``chmod 600``); an empty or malformed entry is refused
  with its line number, and no message ever repeats a password (nor an ``--auth-file`` value that
  names no file: it may be a password typed in the wrong place).
* **Login throttling**: after ``LoginThrottle.FREE_FAILURES`` failed logins in a row from one client
  address, the next try waits 1 s, then 2 s, 4 s ... at most 60 s; a login during the wait (even a
  right one) is answered 429 with ``Retry-After``. Each failure is logged (``studio.login``) with the
  address, never the password. Behind a reverse proxy every client has the proxy's address.
* **Address**: loopback unless ``--host`` says otherwise; a non-loopback address without a login
  gets a warning.
* **Files**: gradio serves ``/gradio_api/file=...`` from its upload/cache folder
  (``GRADIO_TEMP_DIR``), its examples cache (``GRADIO_EXAMPLES_CACHE``, else
  ``.gradio/cached_examples`` under the working directory) and ``allowed_paths``
  (``GRADIO_ALLOWED_PATHS``). The studio pins all of them whatever the environment says: a fresh
  private cache folder (mode 0700; made inside ``$GRADIO_TEMP_DIR`` when that is set, so only the new
  folder is served), the examples cache inside it, no allowed paths (``GRADIO_ALLOWED_PATHS`` stops
  the start), and the study folder (plus any ``GRADIO_BLOCKED_PATHS``) blocked. Images reach the page
  as arrays that gradio writes into that cache, so nothing in the study, and no file the studio did
  not produce, is ever served. The cache is removed at exit, and on SIGTERM (how systemd stops a
  service) and SIGINT.
* **Size**: a request body is capped at ``MAX_REQUEST_BYTES`` (2 MiB) in all, whatever it carries
  (files, form fields, JSON), and each uploaded file at ``MAX_UPLOAD`` (1 MiB; the studio has no upload
  widget, gradio's ``/upload`` route exists anyway). A declared ``Content-Length`` over the cap is
  refused (413) before any of the body is read; a body without one is counted as it arrives and
  refused once it passes the cap. gradio's run history (which can reach out to the Hub) is off.

Nothing here imports gradio or torch at module level, so a bad flag is reported before anything heavy loads.
"""

from __future__ import annotations

import atexit
import hmac
import ipaddress
import logging
import math
import os
import shutil
import signal
import stat
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping, MutableMapping

__all__ = ["AUTH_ENV", "MAX_REQUEST_BYTES", "MAX_UPLOAD", "AuthError", "LoginThrottle", "RequestGuard",
           "ServingError", "auth_checker", "is_loopback", "launch_options", "parse_users", "pin_gradio_folders",
           "read_users", "remove_on_signals", "what_is_served"]

AUTH_ENV = "STUDIO_AUTH"
MAX_UPLOAD = "1mb"
MAX_REQUEST_BYTES = 2 * 1024 * 1024
Users = list[tuple[str, str]]
log = logging.getLogger("studio.login")


class AuthError(ValueError):
    """The login settings cannot be used; the message says why (and never shows a password)."""


class ServingError(ValueError):
    """An inherited gradio setting would serve more than the studio's own files; the message names it."""


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
        except FileNotFoundError:  # the value names no file: it may be a password, so it is not repeated
            raise AuthError("--auth-file names no file (the value is not repeated here, in case it is a password: "
                            "if it is, change it, it is now in your shell history). Give the path of a file of "
                            "'user:password' lines (chmod 600)") from None
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


def _short(text: str, limit: int = 120) -> str:
    """An inherited setting as echoed in a message: at most ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def pin_gradio_folders(environ: MutableMapping[str, str] = os.environ) -> tuple[Path, list[str]]:
    """Set gradio's folder settings to the studio's own before the page is built (gradio's components and
    server read them when they are made): a fresh private cache (0700, removed at exit; inside
    ``$GRADIO_TEMP_DIR`` when set, so only the new folder is served) with the examples cache inside it.
    Returns the cache and a line for each inherited setting replaced. ``ServingError`` when
    ``GRADIO_ALLOWED_PATHS`` is set (gradio would serve every file under it) or the cache cannot be made."""
    allowed = environ.get("GRADIO_ALLOWED_PATHS", "").strip()
    if allowed:
        raise ServingError(f"GRADIO_ALLOWED_PATHS is set ({_short(allowed)}): gradio would serve every file under "
                           "it. The studio serves only the files it made itself; unset GRADIO_ALLOWED_PATHS")
    parent = environ.get("GRADIO_TEMP_DIR") or None
    try:
        if parent:  # made when missing, as gradio would
            Path(parent).mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="studio-gradio-", dir=parent)).resolve()
    except OSError as exc:
        where = f"GRADIO_TEMP_DIR={_short(parent)}" if parent else tempfile.gettempdir()
        raise ServingError(f"cannot make the private gradio cache in {where}: {exc.strerror}") from None
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    examples = path / "examples"
    notes = [f"GRADIO_TEMP_DIR={_short(parent)}: the private gradio cache is made inside it, and only that "
             "folder is served"] if parent else []
    inherited = environ.get("GRADIO_EXAMPLES_CACHE")
    if inherited:
        notes.append(f"GRADIO_EXAMPLES_CACHE={_short(inherited)} is replaced: the examples cache is {examples}")
    environ["GRADIO_TEMP_DIR"] = str(path)
    environ["GRADIO_EXAMPLES_CACHE"] = str(examples)
    return path, notes


def remove_on_signals(cache: Path) -> None:
    """On SIGTERM (how systemd and docker stop a service) and SIGINT, remove the private cache at once, then
    stop as Ctrl-C does (gradio closes its server, exit handlers run): a run still finishing cannot keep the
    uploads on disk. Call from the main thread."""

    def stop(_signum, _frame):
        shutil.rmtree(cache, ignore_errors=True)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


class LoginThrottle:
    """Exponential back-off per client address after failed logins: the first ``FREE_FAILURES - 1`` cost
    nothing, then each failure doubles the wait before the next try (1 s, 2 s, 4 s ... ``MAX_WAIT_S``). A
    success clears the address; the ``MAX_ADDRESSES`` most recent addresses are remembered."""

    FREE_FAILURES = 3
    FIRST_WAIT_S = 1.0
    MAX_WAIT_S = 60.0
    MAX_ADDRESSES = 10_000
    clock = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self._failed: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (failures in a row, next try)

    def wait_s(self, address: str) -> float:
        """Seconds ``address`` must still wait before its next login; 0 when it may try now."""
        return max(0.0, self._failed.get(address, (0, 0.0))[1] - self.clock())

    def failed(self, address: str) -> tuple[int, float]:
        """Count a failed login from ``address``: its failures in a row, and the wait that starts now."""
        n = self._failed.pop(address, (0, 0.0))[0] + 1
        over = n - self.FREE_FAILURES
        wait = 0.0 if over < 0 else min(self.FIRST_WAIT_S * 2 ** min(over, 16), self.MAX_WAIT_S)
        self._failed[address] = (n, self.clock() + wait)
        while len(self._failed) > self.MAX_ADDRESSES:
            self._failed.popitem(last=False)
        return n, wait

    def succeeded(self, address: str) -> None:
        self._failed.pop(address, None)


class _BodyTooLarge(Exception):
    """Raised into the app when the body it reads passes the request cap."""


async def _answer(send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A plain-text response that closes the connection (the rest of an unread body is never read)."""
    body = text.encode()
    head = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware in front of every gradio route. It caps a request's body at ``max_body`` bytes in all
    (413: a larger ``Content-Length`` before anything is read, a body without one as soon as it passes the
    cap). With a ``throttle``, a login from an address still in its back-off gets 429 and ``Retry-After``, and
    every other login's outcome is counted (a failure logged with the address, never the password)."""

    def __init__(self, app, *, max_body: int = MAX_REQUEST_BYTES, throttle: LoginThrottle | None = None):
        self.app, self.max_body, self.throttle = app, max_body, throttle
        self.too_large = (f"Request too large: at most {max_body / 2**20:g} MiB per request in all, "
                          f"uploads at most {MAX_UPLOAD.removesuffix('mb')} MiB per file")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        address = (scope.get("client") or ("unknown",))[0]
        login = self.throttle is not None and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login")
        if login and (wait := self.throttle.wait_s(address)):
            return await _answer(send, 429, f"Too many failed logins from this address: try again in "
                                            f"{math.ceil(wait)} s", [(b"retry-after", str(math.ceil(wait)).encode())])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and not length.isdigit():
            return await _answer(send, 400, "Content-Length is not a number")
        if length is not None and int(length) > self.max_body:
            return await _answer(send, 413, self.too_large)

        seen, cut, started = 0, False, False

        async def counted():
            nonlocal seen, cut
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                cut = True
                raise _BodyTooLarge
            return message

        async def watched(message):
            nonlocal started
            if cut:  # whatever the app answers to a body cut short, the client gets the 413 below
                return
            if message["type"] == "http.response.start":
                started = True
                if login:
                    self._count_login(address, message["status"])
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not cut:
                raise
        if cut and not started:
            await _answer(send, 413, self.too_large)

    def _count_login(self, address: str, status: int) -> None:
        if status == 200:
            self.throttle.succeeded(address)
        elif status in (400, 401):
            n, wait = self.throttle.failed(address)
            log.warning("failed login from %s (%d in a row)%s", address, n,
                        f"; next try allowed in {wait:g} s" if wait else "")


def launch_options(*, host: str, port: int, users: Users | None, data_dir: Path, demo: bool = False,
                   environ: Mapping[str, str] = os.environ) -> dict:
    """Keyword arguments for ``Blocks.launch``: the login, the size caps and login throttle (``RequestGuard``),
    the study folder blocked (with any ``GRADIO_BLOCKED_PATHS``: blocking only narrows what is served). A demo
    shows only the studio's own messages (``gr.Error``), never the text of an unexpected exception."""
    from starlette.middleware import Middleware

    blocked = [str(Path(data_dir).resolve())]
    blocked += [p.strip() for p in environ.get("GRADIO_BLOCKED_PATHS", "").split(",") if p.strip()]
    guard = Middleware(RequestGuard, max_body=MAX_REQUEST_BYTES, throttle=LoginThrottle() if users else None)
    return {
        "server_name": host, "server_port": port, "show_error": not demo,
        "auth": auth_checker(users) if users else None,
        "auth_message": "Diffusion Efficiency Studio: log in with the user name and password you were given."
        if users else None,
        "max_file_size": MAX_UPLOAD, "app_kwargs": {"middleware": [guard]},
        "blocked_paths": blocked,  # never served, whatever allowed_paths say
        "run_history": False, "enable_monitoring": False, "mcp_server": False, "ssr_mode": False,
    }


def what_is_served(blocks) -> str:
    """The start line: every place ``/gradio_api/file=`` may hand files from, as the launched gradio reads its
    own settings (upload cache, examples cache, allowed and static paths), and what is blocked."""
    import gradio
    from gradio import utils
    from gradio.data_classes import _StaticFiles

    package = Path(gradio.__file__).parent  # the icons gradio's own buttons show
    icons = [p for p in _StaticFiles.all_paths if Path(p).is_relative_to(package)]
    extra = [str(p) for p in [*blocks.allowed_paths, *_StaticFiles.all_paths] if p not in icons]
    return (f"files served: only the studio's own, from its private gradio cache {utils.get_upload_folder()} "
            f"(examples cache {utils.get_cache_folder()}), and {len(icons)} icon file(s) of gradio's own; other "
            f"allowed and static paths: {', '.join(extra) or 'none'}; blocked: {', '.join(blocks.blocked_paths)}")
