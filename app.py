"""Start the Diffusion Efficiency Studio.

    python app.py [--model M] [--data-dir D] [--host H] [--port P] [--max-waiting N] [--auth | --auth-file F]
    python app.py --demo STUDY_DIR [--host H] [--port P] [--auth | --auth-file F]

The first form is the studio: generate, sweep and browse one study folder. ``--demo`` serves an
existing study (a data folder, or one packed by ``python -m studio_core --data-dir SRC bundle OUT``)
read-only: frontier, sweep grids, compare, runs, details and CSV, with generation and sweeps off
and nothing in the folder ever written.

Before it serves, it checks, in this order: the login (``--auth`` takes its users from
``$STUDIO_AUTH``, ``--auth-file`` from a private file; a password given on the command line is
refused, and never echoed), the address (loopback by default; a warning when another address has no
login) and the files it serves (gradio's folder settings pinned to a private cache; an inherited
``GRADIO_ALLOWED_PATHS`` is refused), and the study (its write-ahead log read frame by frame, then
``PRAGMA integrity_check`` of ``studio.db``: a damaged log or database is refused by name, a damaged log
copied aside first; a folder this user cannot write is told apart from damage; rows whose text will not
decode are moved to the quarantine table and named). Once serving, it prints exactly what
``/gradio_api/file=`` may hand out. See ``app/serve.py`` for the size caps, the login throttle and the
cleanup on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from app import serve
from studio_core.errors import StoreError
from studio_core.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODELS  # none imports gradio or torch: bad flags fail fast
from studio_core.store.store import DEFAULT_DATA_DIR, RunStore


class _Help(argparse.HelpFormatter):
    """``--auth`` reads as the flag it is; it takes a value only so that a password given to it is
    caught and refused instead of being echoed back by argparse."""

    def _format_args(self, action, default_metavar):
        return "" if action.dest == "auth" else super()._format_args(action, default_metavar)

    def _format_action_invocation(self, action):
        return "--auth" if action.dest == "auth" else super()._format_action_invocation(action)


def unrecognized(extra: list[str]) -> str:
    """argparse's "unrecognized arguments" without the values: an option's name is shown (up to any ``=``),
    anything else only counted, since it may be a password typed in the wrong place."""
    names = [m.group(0) for e in extra if (m := re.match(r"--[A-Za-z][\w-]*", e))]
    hidden = len(extra) - len(names) + sum("=" in e for e in extra if re.match(r"--[A-Za-z]", e))
    shown = ", ".join(names) + (" and " if names and hidden else "")
    return (f"unrecognized arguments: {shown}" + (f"{hidden} value(s) not repeated here (one may be a password)"
                                                  if hidden else ""))


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    # no abbreviations: argparse would echo an ambiguous '--au=alice:secret' whole
    p = argparse.ArgumentParser(description="Diffusion Efficiency Studio", formatter_class=_Help, allow_abbrev=False)
    p.add_argument("--model", default=EMBEDDED_MODEL_NAME,
                   help=f"an embedded model ({', '.join(EMBEDDED_MODELS)}), a diffusers folder or a cached repo id "
                        f"(default: {EMBEDDED_MODEL_NAME})")
    p.add_argument("--data-dir", help="study folder with studio.db and images/ "
                                      "(default: $STUDIO_DATA_DIR or <project>/data)")
    env = os.environ
    p.add_argument("--demo", metavar="STUDY_DIR", default=env.get("STUDIO_DEMO") or None,
                   help="serve this existing study read-only: no generation, no sweeps, no writes "
                        "(default: $STUDIO_DEMO, how a hosted Space names its study)")
    p.add_argument("--host", default=env.get("STUDIO_HOST") or env.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                   help="address to bind (default: $STUDIO_HOST, else $GRADIO_SERVER_NAME, which Hugging Face "
                        "Spaces set, else 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT") or 7860))
    p.add_argument("--root-path", default=None, metavar="/PREFIX",
                   help="the path prefix a reverse proxy serves the studio under (e.g. /studio)")
    p.add_argument("--auth", nargs="?", const=True, default=None,
                   help=f"require a login; users from ${serve.AUTH_ENV} ('user:password', several separated by "
                        "newlines or commas). Takes no value: never put a password on the command line")
    p.add_argument("--auth-file", metavar="PATH", help="require a login; users from this file, one "
                                                       "'user:password' a line, '#' comments (chmod 600)")
    p.add_argument("--max-waiting", type=int, default=4, metavar="N",
                   help="generations and sweeps admitted at once (one runs, the rest wait); more are "
                        "refused with a 'busy' message (default 4)")
    p.add_argument("--metric-weights", metavar="DIR", default=env.get("STUDIO_METRIC_WEIGHTS") or None,
                   help="a folder of locally stored backbones for LPIPS, FID/KID and CLIP-score (alexnet*.pth, "
                        "vgg16*.pth, inception_v3*.pth, clip/; $STUDIO_METRIC_WEIGHTS); nothing is downloaded")
    args, extra = p.parse_known_args(argv)
    if extra:
        p.error(unrecognized(extra))
    if args.auth is None and args.auth_file is None and env.get(serve.AUTH_ENV):
        args.auth = True  # users in the environment (a Space secret) turn the login on by themselves
    if args.demo and args.data_dir:
        p.error("--demo STUDY_DIR names the study to show; leave out --data-dir")
    if args.max_waiting < 1:
        p.error(f"--max-waiting {args.max_waiting}: at least 1 (the run on the device counts)")
    if args.metric_weights is not None:
        if not Path(args.metric_weights).expanduser().is_dir():
            p.error(f"--metric-weights {args.metric_weights}: no such folder")
        os.environ["STUDIO_METRIC_WEIGHTS"] = args.metric_weights  # the engine reads it (standard_metrics)
    return p, args


def main(argv: list[str] | None = None, *, block: bool = True):
    """Check, build and serve; with ``block=False`` return the launched Blocks (tests close it)."""
    p, args = parse_args(argv)

    # 1. who may log in (before anything heavy is imported)
    try:
        users = serve.read_users(args.auth, args.auth_file)
    except serve.AuthError as exc:
        p.error(str(exc))

    # 2. where it listens, and the files it serves: gradio's folder settings pinned to a private cache
    try:
        temp, notes = serve.pin_gradio_folders()
    except serve.ServingError as exc:
        p.error(str(exc))
    for note in notes:
        print(note, file=sys.stderr)
    if users is None and not serve.is_loopback(args.host):
        reach = "browse this study" if args.demo else "run generations and sweeps on this machine"
        print(f"warning: listening on {args.host} without --auth: anyone who can reach this address can {reach}. "
              f"Set ${serve.AUTH_ENV} and add --auth, or give --auth-file PATH.", file=sys.stderr)

    # 3. the study: it must exist for a demo, and its database must be sound
    data_dir = Path(args.demo or args.data_dir or os.environ.get("STUDIO_DATA_DIR") or DEFAULT_DATA_DIR)
    data_dir = data_dir.expanduser().resolve()
    db_path = data_dir / "studio.db"
    if args.demo and not db_path.is_file():
        p.error(f"--demo {args.demo}: no study there ({db_path} does not exist)")
    if not args.demo:
        try:
            result = RunStore.check_integrity(db_path)
        except StoreError as exc:  # a damaged write-ahead log (kept beside it), or a study this user cannot write
            p.error(str(exc))
        if result not in ("ok", "new study"):
            p.error(f"{db_path} failed SQLite's integrity check ({result}). Refusing to start on a damaged study: "
                    "restore it from a copy, or start with another --data-dir")
        print(f"study {data_dir}: integrity check {result}", file=sys.stderr)

    # 4. the page, over the private gradio cache (removed at exit, and at once on SIGTERM or SIGINT)
    if block:
        serve.remove_on_signals(temp)
    from app.layout import build_demo

    try:
        demo = build_demo(args.model, data_dir, read_only=bool(args.demo), max_waiting=args.max_waiting)
    except StoreError as exc:  # no study for a demo, or a file that is not a database ("cannot open ...")
        p.error(str(exc))
    store = demo.studio.store
    for note in store.start_notes:  # rows whose text will not decode (studio_core/store/quarantine.py)
        print(f"note: {note}", file=sys.stderr)
    if args.demo:
        result = store.integrity_check()
        if result != "ok":
            store.close()
            p.error(f"{db_path} failed SQLite's integrity check ({result}); refusing to serve it")
        print(f"demo of study {data_dir.name} ({data_dir}), read-only: integrity check ok, "
              f"{store.run_count()} runs", file=sys.stderr)

    # 5. serve, and say exactly what is served (as the launched gradio reads its settings)
    demo.launch(**serve.launch_options(host=args.host, port=args.port, users=users, data_dir=data_dir,
                                       demo=bool(args.demo)),
                root_path=args.root_path, prevent_thread_lock=True)
    print(f"{serve.what_is_served(demo)}; login: {f'{len(users)} user(s)' if users else 'none'}", file=sys.stderr)
    if block:
        demo.block_thread()  # returns on SIGTERM or Ctrl-C (remove_on_signals), with the server closed
        stop_work(demo)
    return demo


def stop_work(demo, wait_s: float = 60.0) -> None:
    """The server is stopping: every generation stops after its denoiser step in progress and is recorded
    ``cancelled``, sweeps stop between runs, and those waiting leave; wait (up to ``wait_s``) until they have."""
    import time

    service = getattr(getattr(demo, "studio", None), "service", None)
    if service is None or service.read_only:
        return
    service.stop_all("the server stopped (SIGTERM or Ctrl-C)")
    deadline = time.monotonic() + wait_s
    while service.device.admitted and time.monotonic() < deadline:
        time.sleep(0.1)
    if service.device.admitted:
        print(f"{service.device.admitted} generation(s) or sweep(s) still running after {wait_s:g} s; they are "
              "marked interrupted at the next start", file=sys.stderr)


if __name__ == "__main__":
    main()
