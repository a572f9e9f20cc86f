"""Load test: many browser-like clients against one studio, from a second process.

Starts ``python app.py`` on a fresh study folder (the embedded model, CPU) in a subprocess, then
``--clients`` threads, each with its own ``gradio_client.Client``, send ``--requests`` requests in all,
a fixed seeded mix of generate, frontier, compare, runs table, run details and CSV export. Afterwards
it checks the store from outside the server: every accepted generate left exactly one ``ok`` run
(matched by the run id in its card), no run is duplicated or lost, ``PRAGMA integrity_check`` is ok.

With ``--abandon F`` a fraction F of the generate requests give up after ``--abandon-after`` seconds when
they have no answer yet, as people and scripts do: half close their event stream (a closed tab), half
cancel through gradio_client (``job.cancel()``). They ask for warm-up 2 and 20 repeats (the others: 1
and 1), so their rows are known and they are still at work when their clients give up. Checked: no abandoned request ran to the end (its row, if any, is
``cancelled``), and afterwards every place in line is free: ``--max-waiting`` generations sent at once
are all admitted.

Reported: counts by request kind and outcome (ok / refused as overloaded / error / abandoned), and the
latency of the read requests split by whether a generation was in flight on the server when they started.
Run: ``python benchmarks/load_test.py`` (``--help`` for sizes). Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READS = ("frontier", "compare", "runs", "details", "export")
OVERLOAD = re.compile(r"busy|queue is full|too many", re.I)


@dataclass
class Result:
    kind: str
    start: float
    end: float
    outcome: str  # ok | refused | error
    message: str = ""
    run_id: int | None = None
    in_flight: bool = False  # a generate was in flight (another client's) when this request started


@dataclass
class Shared:
    results: list[Result] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    generating: int = 0  # generate requests in flight (client side)
    seen_ids: list[int] = field(default_factory=list)
    url: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the studio exited with {proc.returncode} before serving")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"the studio did not listen on port {port} within {timeout:.0f} s")


def gen_spec(args, i: int, abandoning: bool = False) -> dict:
    # seeds 0 and 1 only: the two untimed generates made their references, so no request pays for one
    return {"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [i % 2], "steps": args.steps,
            "sampler": "DDIM", "warmup": 2 if abandoning else 1, "repeats": 20 if abandoning else 1, "device": "cpu"}


def abandon(client, url: str, args, i: int) -> str:
    """A generate given up after ``args.abandon_after`` s: "finished" when it was answered (or refused) before that, else
    "abandoned" (odd ``i``: its event stream closed, like a closed tab; even: ``job.cancel()``)."""
    import httpx

    spec = gen_spec(args, i, abandoning=True)
    if i % 2 == 0:
        job = client.submit(spec, None, api_name="/generate")
        deadline = time.monotonic() + args.abandon_after
        while time.monotonic() < deadline and not job.done():
            time.sleep(0.05)
        if job.done():
            return "finished"
        job.cancel()
        return "abandoned"
    config = httpx.get(url + "config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
    session = f"abandon-{i}"
    httpx.post(url + "gradio_api/queue/join", json={"data": [spec, None], "fn_index": fn_index,
                                                    "session_hash": session}, timeout=30).raise_for_status()
    deadline = time.monotonic() + args.abandon_after
    with httpx.Client(timeout=httpx.Timeout(30, read=0.5)) as http:
        with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session}) as events:
            lines = events.iter_lines()
            while time.monotonic() < deadline:
                try:
                    line = next(lines)
                except httpx.ReadTimeout:
                    continue
                except StopIteration:
                    return "finished"
                if "process_completed" in line:
                    return "finished"
    return "abandoned"  # the stream is closed here


def one_request(client, kind: str, i: int, args, shared: Shared) -> Result:
    from gradio_client.exceptions import AppError

    t0 = time.perf_counter()
    run_id = None
    try:
        if kind == "abandon":
            return Result(kind, t0, time.perf_counter(), abandon(client, shared.url, args, i))
        if kind == "generate":
            with shared.lock:
                shared.generating += 1
            try:
                _gallery, card = client.predict(gen_spec(args, i), None, api_name="/generate")
            finally:
                with shared.lock:
                    shared.generating -= 1
            m = re.search(r"Run (\d+): ok", card)
            run_id = int(m.group(1)) if m else None
            if run_id is None:
                return Result(kind, t0, time.perf_counter(), "error", f"no run id in card: {card[:120]}")
        elif kind == "frontier":
            client.predict("psnr", "latency_median_ms", "sampler", "precision", "(all)", "(all)", "(all)", [], False,
                           api_name="/plot_frontier")
        elif kind == "compare":
            ids = shared.seen_ids[:1] + shared.seen_ids[-1:]
            client.predict([str(x) for x in ids], api_name="/compare_runs")
        elif kind == "runs":
            client.predict("(all)", "(all)", "(all)", api_name="/runs")
        elif kind == "details":
            client.predict(random.Random(i).choice(shared.seen_ids), api_name="/run_details")
        elif kind == "export":
            path = client.predict("(all)", "(all)", "(all)", api_name="/export_csv")
            if not (isinstance(path, str) and os.path.getsize(path) > 0):
                return Result(kind, t0, time.perf_counter(), "error", f"empty CSV: {path!r}")
    except AppError as exc:
        msg = str(exc)
        outcome = "refused" if OVERLOAD.search(msg) else "error"
        return Result(kind, t0, time.perf_counter(), outcome, msg[:200])
    except Exception as exc:  # noqa: BLE001 - everything else is an error of the studio
        msg = f"{type(exc).__name__}: {exc}"
        outcome = "refused" if OVERLOAD.search(msg) else "error"
        return Result(kind, t0, time.perf_counter(), outcome, msg[:200])
    return Result(kind, t0, time.perf_counter(), "ok", run_id=run_id)


def client_loop(url: str, plan: list[tuple[int, str]], args, shared: Shared, download_dir: str) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=download_dir)
    for i, kind in plan:
        in_flight = shared.generating > 0
        r = one_request(client, kind, i, args, shared)
        r.in_flight = in_flight
        with shared.lock:
            shared.results.append(r)
            if r.run_id is not None:
                shared.seen_ids.append(r.run_id)


def free_slots(url: str, downloads: str, data_dir: Path, args) -> str:
    """After the load: once no run is left running, ``--max-waiting`` generations sent at once must all be
    admitted (a place held by a gone client would refuse one). Returns "" or what went wrong."""
    from gradio_client import Client

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        db = sqlite3.connect(data_dir / "studio.db")
        running = db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
        db.close()
        if not running:
            break
        time.sleep(0.5)
    clients = [Client(url, verbose=False, download_files=downloads) for _ in range(args.max_waiting)]
    jobs = [c.submit(gen_spec(args, i), None, api_name="/generate") for i, c in enumerate(clients)]
    problems = []
    for job in jobs:
        try:
            job.result(timeout=600)
        except Exception as exc:  # noqa: BLE001 - a refusal here is the failure being checked
            problems.append(str(exc)[:120])
    return "; ".join(problems)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=240, help="requests in all, spread over the clients")
    p.add_argument("--generate-share", type=float, default=0.2, help="fraction of requests that generate")
    p.add_argument("--steps", type=int, default=8, help="denoising steps of each generate")
    p.add_argument("--abandon", type=float, default=0.0, help="fraction of generate requests that give up")
    p.add_argument("--abandon-after", type=float, default=2.0, help="seconds before they give up")
    p.add_argument("--max-waiting", type=int, default=4, help="app.py --max-waiting")
    p.add_argument("--data-dir", help="study folder (default: a fresh temporary one)")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for app.py (repeatable)")
    args = p.parse_args()

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="studio-load-"))
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(data_dir.parent / f"{data_dir.name}-server.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(data_dir), "--port", str(port),
                               "--max-waiting", str(args.max_waiting), *args.server_arg], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    shared = Shared()
    try:
        wait_for(port, server)
        url = shared.url = f"http://127.0.0.1:{port}/"
        downloads = tempfile.mkdtemp(prefix="studio-load-dl-")
        # two runs first, so compare and details have something to read (not counted)
        from gradio_client import Client

        warm = Client(url, verbose=False, download_files=downloads)
        for i in range(2):
            r = one_request(warm, "generate", i, args, shared)
            if r.outcome != "ok":
                raise SystemExit(f"the first generate failed: {r.message}")
            shared.seen_ids.append(r.run_id)
        preload = list(shared.seen_ids)

        rng = random.Random(0)
        kinds = [("generate" if rng.random() < args.generate_share else rng.choice(READS)) for _ in range(args.requests)]
        kinds = [("abandon" if k == "generate" and rng.random() < args.abandon else k) for k in kinds]
        plans = [[(i, k) for i, k in enumerate(kinds) if i % args.clients == c] for c in range(args.clients)]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(url, plan, args, shared, downloads)) for plan in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        slots = free_slots(url, downloads, data_dir, args)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    # ---- checks, from outside the server
    db = sqlite3.connect(data_dir / "studio.db")
    abandoned_rows = db.execute("SELECT id, status, error FROM runs WHERE warmup = 2 ORDER BY id").fetchall()
    rows = db.execute("SELECT id, status, error FROM runs WHERE warmup = 1 ORDER BY id").fetchall()
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    res = shared.results
    gen_ok = [r for r in res if r.kind == "generate" and r.outcome == "ok"]
    ids = preload + [r.run_id for r in gen_ok]
    by_id = {rid: (status, err) for rid, status, err in rows}
    problems = []
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    if len(set(ids)) != len(ids):
        problems.append(f"duplicated run ids in replies: {sorted(i for i in ids if ids.count(i) > 1)}")
    if slots:
        problems.append(f"after the load, {args.max_waiting} generations at once were not all admitted: {slots}")
    ids += [rid for rid, status, _ in rows[-args.max_waiting:] if status == "ok"] if not slots else []
    n_finished = sum(r.outcome == "finished" for r in res if r.kind == "abandon")
    ran = [(i, s) for i, s, _ in abandoned_rows if s != "cancelled"]
    if len(ran) > n_finished:
        problems.append(f"abandoned generates that ran to the end: {len(ran) - n_finished} ({ran})")
    missing = [i for i in ids if by_id.get(i, ("missing",))[0] != "ok"]
    if missing:
        problems.append(f"accepted generates without an ok row: {missing}")
    extra = sorted(set(by_id) - set(ids))
    if extra:
        problems.append(f"rows no accepted request accounts for: {[(i, by_id[i]) for i in extra]}")
    errors = [r for r in res if r.outcome == "error"]
    for r in errors:
        problems.append(f"{r.kind} error: {r.message}")

    # ---- report
    print("# load test")
    print(f"setup: app.py on the embedded model (CPU, {os.cpu_count()} logical cores, {platform.processor() or platform.machine()}), "
          f"--max-waiting {args.max_waiting}, server args {args.server_arg or 'none'}; {args.clients} gradio_client clients in one second process, "
          f"{len(res)} requests ({args.generate_share:.0%} generate: 1 image x {args.steps} DDIM steps, the model's default guidance, "
          f"warm-up 1, 1 timed repeat) after 2 untimed generates; wall {wall:.1f} s")
    print()
    print("| request | n | ok | refused (overload) | error | p50 s | p95 s | max s |")
    print("|---|---|---|---|---|---|---|---|")
    ab = [r for r in res if r.kind == "abandon"]
    if ab:
        print(f"| generate, abandoned after {args.abandon_after:g} s | {len(ab)} | "
              f"{sum(r.outcome == 'finished' for r in ab)} answered or refused first | - | - | - | - | - |")
    for kind in ("generate", *READS):
        rs = [r for r in res if r.kind == kind]
        lat = [r.end - r.start for r in rs if r.outcome == "ok"]
        print(f"| {kind} | {len(rs)} | {sum(r.outcome == 'ok' for r in rs)} | {sum(r.outcome == 'refused' for r in rs)} | "
              f"{sum(r.outcome == 'error' for r in rs)} | {pct(lat, .5):.3f} | {pct(lat, .95):.3f} | "
              f"{max(lat, default=float('nan')):.3f} |")
    print()
    reads = [r for r in res if r.kind in READS and r.outcome == "ok"]
    during = [r.end - r.start for r in reads if r.in_flight]
    idle = [r.end - r.start for r in reads if not r.in_flight]
    print("| read requests | n | p50 s | p95 s |")
    print("|---|---|---|---|")
    print(f"| while a generate was in flight | {len(during)} | {pct(during, .5):.3f} | {pct(during, .95):.3f} |")
    print(f"| with no generate in flight | {len(idle)} | {pct(idle, .5):.3f} | {pct(idle, .95):.3f} |")
    print()
    refusals = sorted({r.message for r in res if r.outcome == "refused"})
    if refusals:
        print("overload messages seen:")
        for m in refusals[:5]:
            print(f"- {m}")
    print(f"store: {len(rows)} runs of non-abandoned generates ({sum(s == 'ok' for _, s, _ in rows)} ok), accepted "
          f"generates {len(gen_ok)} + 2 untimed + {args.max_waiting} final; integrity_check {integrity}; "
          f"server log {log.name}")
    if ab:
        print(f"abandoned: {len(ab)} requests, {len(ab) - n_finished} left unanswered; their rows: "
              f"{len(abandoned_rows)} ({sum(s == 'cancelled' for _, s, _ in abandoned_rows)} cancelled mid-run, "
              f"{len(ran)} ran to the end, while {n_finished} were answered or refused before their clients gave up); "
              f"every place in line free afterwards: {'yes' if not slots else 'NO'}")
    if problems:
        print("\nPROBLEMS:")
        for m in problems:
            print(f"- {m}")
        return 1
    print("checks: zero errors, zero lost or duplicated runs, integrity ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
