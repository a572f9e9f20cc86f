"""Serving the studio for real, started through ``app.py``'s own ``main``: what it refuses to hand out,
who may log in, how it stays up under load, and the checks it runs before it starts.

Live servers are driven with httpx (raw requests where the path must reach the server unnormalised)
and ``gradio_client``; flags that stop the start are run as ``python app.py`` in a subprocess.
"""

import contextlib
import hashlib
import http.client
import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from live import free_port, load_app_main, wait_until

from app import serve
from studio_core.errors import DeviceWaitStopped, StudioBusy
from studio_core.store.store import RunStore
from studio_core.study.service import BUSY_MESSAGE, DeviceQueue

ROOT = Path(__file__).resolve().parents[1]
REF = {"sampler": "DPM++ 2M", "steps": 6}
SECRET = "TOP-SECRET-" + hashlib.sha256(b"studio serving test").hexdigest()[:16]
MAX_WAITING = 2


PINNED = ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE", "GRADIO_ALLOWED_PATHS", "GRADIO_BLOCKED_PATHS")


@contextlib.contextmanager
def started(argv: list[str], env: dict[str, str] | None = None):
    """``app.py``'s ``main`` serving in this process (its stderr captured), with gradio's folder settings
    taken from ``env`` alone; closed after, and those settings (which main sets) put back."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    saved = {name: os.environ.pop(name, None) for name in PINNED}
    os.environ.update(env or {})
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            demo = load_app_main().main([*argv, "--port", str(port := free_port())], block=False)
        try:
            yield demo, f"http://127.0.0.1:{port}/", err.getvalue()
        finally:
            demo.close()
            demo.studio.store.close()
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def run_app(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})})


def _spec(model, **kw):
    return {"model": model, "prompts": ["grinning face"], "seeds": [0, 1], "steps": 2, "guidance": 2.0,
            "repeats": 1, **kw}


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_pipeline_dir):
    """The writable studio as ``python app.py --data-dir D --max-waiting 2`` would serve it, with one run made
    through the API; yields (demo, url, client, model, stderr of the start)."""
    from gradio_client import Client

    data_dir = tmp_path_factory.mktemp("study")
    with started(["--data-dir", str(data_dir), "--model", str(tiny_pipeline_dir),
                  "--max-waiting", str(MAX_WAITING)]) as (demo, url, err):
        demo.studio.service.reference = REF  # a cheap reference for the tiny model
        client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
        client.predict(_spec(str(tiny_pipeline_dir)), api_name="/generate")
        yield demo, url, client, str(tiny_pipeline_dir), err


# ------------------------------------------------------------------------------------------ files
def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (httpx would resolve ``..`` before sending)."""
    host, port = url.split("//")[1].strip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_start_checks_the_database_and_serves_from_a_private_cache(served):
    demo, _url, _client, _model, err = served
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    assert "integrity check new study" in err
    assert re.search(re.escape(f"files served: only the studio's own, from its private gradio cache {cache} (examples "
                               f"cache {cache / 'examples'}), and ") + r"\d+ icon file\(s\) of gradio's own; other "
                     + re.escape(f"allowed and static paths: none; blocked: {demo.studio.store.data_dir}"), err)
    assert cache.name.startswith("studio-gradio-") and (cache.stat().st_mode & 0o077) == 0
    assert demo.blocked_paths == [str(demo.studio.store.data_dir)] and not demo.allowed_paths
    assert demo.max_file_size == 1024 * 1024 and demo.run_history is False


def test_only_files_the_studio_produced_are_served(served, secret, tmp_path_factory):
    demo, url, _client, model, _err = served
    from gradio_client import Client

    # the control: a gallery image the studio made is served from its private cache
    raw_client = Client(url, verbose=False, download_files=False)
    gallery, _card = raw_client.predict(_spec(model, seeds=[3]), api_name="/generate")
    image = gallery[0]["image"]
    cache = Path(os.environ["GRADIO_TEMP_DIR"]).resolve()
    assert Path(image["path"]).resolve().is_relative_to(cache)
    ok = httpx.get(image["url"], timeout=30)
    assert ok.status_code == 200 and ok.content.startswith(b"\x89PNG")

    store = demo.studio.store
    images = store.images_dir
    (images / "ab").mkdir(parents=True, exist_ok=True)
    (images / "ab" / "planted.png").symlink_to(secret)  # a symlink planted in the study's images
    (cache / "planted.png").symlink_to(secret)  # and one in the served cache itself
    up = "../" * 12
    attempts = [
        "/gradio_api/file=/etc/passwd",
        f"/gradio_api/file={secret}",
        f"/gradio_api/file={store.path}",
        f"/gradio_api/file={images / 'ab' / 'planted.png'}",
        f"/gradio_api/file={cache / 'planted.png'}",
        f"/gradio_api/file={cache}/{up}{str(secret).lstrip('/')}",
        f"/gradio_api/file={cache}/{up.replace('..', '%2e%2e')}{str(secret).lstrip('/')}",
        f"/gradio_api/file={cache}/{up.replace('/', '%2f')}{str(secret).lstrip('/')}",
        f"/gradio_api/file={up}{str(secret).lstrip('/')}",
        f"/gradio_api/file={secret}%00.png",
        f"/gradio_api/file={cache}/{'a' * 5000}",
        f"/gradio_api/file=file://{secret}",
        f"/file={secret}",
    ]
    for target in attempts:
        status, body = raw_get(url, target)
        assert status in (400, 403, 404), (target[:120], status)
        assert SECRET.encode() not in body and b"root:" not in body, target[:120]
    for target in (f"/gradio_api/file={secret}", f"/gradio_api/file={store.path}"):  # and through httpx
        resp = httpx.get(url.rstrip("/") + target, timeout=30)
        assert resp.status_code == 403 and SECRET not in resp.text


def test_an_upload_over_the_size_cap_is_refused(served):
    _demo, url, _client, _model, _err = served
    big = httpx.post(url + "gradio_api/upload", files={"files": ("big.bin", b"\0" * (2 * 1024 * 1024))}, timeout=60)
    assert big.status_code == 413
    small = httpx.post(url + "gradio_api/upload", files={"files": ("small.txt", b"hello")}, timeout=60)
    assert small.status_code == 200


@pytest.mark.parametrize("inherited", ["environment", "working directory"])
def test_inherited_gradio_folders_never_widen_what_is_served(tmp_path, monkeypatch, tiny_pipeline_dir, inherited):
    """gradio serves its examples cache (``$GRADIO_EXAMPLES_CACHE``, else ``.gradio/cached_examples`` under the
    working directory) and its temp dir: the studio pins both, so neither /etc nor a shared temp dir is served."""
    shared = tmp_path / "shared-tmp"  # a temp dir other apps write into
    shared.mkdir()
    (shared / "other-app.txt").write_text(SECRET)
    cwd = tmp_path / "cwd"
    (cwd / ".gradio").mkdir(parents=True)
    (cwd / ".gradio" / "cached_examples").symlink_to("/etc")
    monkeypatch.chdir(cwd)
    env = {"GRADIO_EXAMPLES_CACHE": "/etc", "GRADIO_TEMP_DIR": str(shared)} if inherited == "environment" else {}
    with started(["--data-dir", str(tmp_path / "study"), "--model", str(tiny_pipeline_dir)], env) as (_d, url, err):
        cache = Path(os.environ["GRADIO_TEMP_DIR"])
        for target in ("/gradio_api/file=/etc/passwd", f"/gradio_api/file={shared / 'other-app.txt'}",
                       f"/gradio_api/file={cwd / '.gradio' / 'cached_examples' / 'passwd'}"):
            status, body = raw_get(url, target)
            assert status == 403 and b"root:" not in body and SECRET.encode() not in body, (target, status)
        assert f"files served: only the studio's own, from its private gradio cache {cache} (examples cache " \
               f"{cache / 'examples'}), and " in err and "other allowed and static paths: none" in err
        if env:
            assert cache.parent == shared.resolve() and cache.name.startswith("studio-gradio-")
            assert f"GRADIO_EXAMPLES_CACHE=/etc is replaced: the examples cache is {cache / 'examples'}" in err
            assert f"GRADIO_TEMP_DIR={shared}: the private gradio cache is made inside it" in err


def test_allowed_paths_in_the_environment_stop_the_start(tmp_path):
    res = run_app("--demo", str(tmp_path / "nothing"), env={"GRADIO_ALLOWED_PATHS": "/etc,/home"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "GRADIO_ALLOWED_PATHS is set (/etc,/home): gradio would serve every file under it" in res.stderr
    assert "no study there" not in res.stderr  # refused before anything else


def post_partly(url: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """POST ``path`` with ``headers``, send ``body`` (which may be less than they announce: the rest never
    comes), and return the server's answer; a server that stops reading early is fine."""
    host, port = url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        with contextlib.suppress(OSError):
            sock.sendall(body)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()


def _chunked(data: bytes, size: int = 256 * 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size))


def test_a_request_is_capped_in_all_not_only_per_file(served, bad_inputs):
    _demo, url, _client, _model, _err = served
    cap = "at most 2 MiB per request in all"  # serve.MAX_REQUEST_BYTES
    # 30 files, each under the per-file cap
    many = httpx.post(url + "gradio_api/upload", timeout=120,
                      files=[("files", (f"f{i}.bin", b"\0" * 900_000)) for i in range(30)])
    bad_inputs.append(("HTTP /gradio_api/upload", "30 files of 0.9 MB in one request", many.text))
    assert many.status_code == 413 and cap in many.text
    # a 200 MB form field (not a file): refused from its Content-Length, before the body is read
    boundary = "studio-boundary"
    field = f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n".encode()
    status, body = post_partly(url, "/gradio_api/upload", {
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(200 * 2**20)},
        field + b"x" * 2**20)
    bad_inputs.append(("HTTP /gradio_api/upload", "a 200 MB form field", body.decode()))
    assert status == 413 and cap in body.decode()
    # the same field sent without a length (chunked): refused once the cap is passed, the rest never read
    status, body = post_partly(url, "/gradio_api/upload", {
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"},
        _chunked(field + b"x" * 3 * 2**20))
    assert status == 413 and cap in body.decode()
    # a JSON body over the cap is refused the same way, whatever route it is sent to
    join = httpx.post(url + "gradio_api/queue/join", content=b"[" + b"0," * 2**21 + b"0]",
                      headers={"Content-Type": "application/json"}, timeout=120)
    assert join.status_code == 413
    # the per-file cap still holds under the request cap, and a small upload still goes through
    one = httpx.post(url + "gradio_api/upload", files={"files": ("big.bin", b"\0" * (1536 * 1024))}, timeout=60)
    assert one.status_code == 413 and cap not in one.text
    assert httpx.post(url + "gradio_api/upload", files={"files": ("s.txt", b"hi")}, timeout=60).status_code == 200


# ------------------------------------------------------------------------------------------ crafted ids
CRAFTED = ["../1", "1; DROP TABLE runs", -1, 10**30, "1\x00", 1.5, "9" * 5000, "1e3", True, 0]


def _snapshot(store: RunStore) -> tuple:
    tables = store.db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    return tables, store.runs(), store.sweeps()


@pytest.mark.parametrize("value", CRAFTED, ids=lambda v: repr(v)[:20])
def test_crafted_run_ids_get_a_message_and_change_nothing(served, value):
    demo, _url, client, _model, _err = served
    before = _snapshot(demo.studio.store)
    for api_name, args in (("/run_details", (value,)), ("/compare_runs", ([1, value],))):
        with pytest.raises(Exception, match="is not a run id: run ids are whole numbers from 1 up") as err:
            client.predict(*args, api_name=api_name)
        assert "Traceback" not in str(err.value) and len(str(err.value)) < 300
    assert _snapshot(demo.studio.store) == before


def test_blank_and_unknown_run_ids_get_a_message(served):
    demo, _url, client, _model, _err = served
    for blank in ("", None):
        card, gallery, config = client.predict(blank, api_name="/run_details")
        assert card == "Pick a run in the table (or type its id)." and not gallery
    with pytest.raises(Exception, match="run 999999 does not exist in .*studio.db"):
        client.predict(999999, api_name="/run_details")
    with pytest.raises(Exception, match="run 999999 does not exist"):
        client.predict([1, 999999], api_name="/compare_runs")
    with pytest.raises(Exception, match="5 runs given: compare two to four"):
        client.predict([1, 1, 1, 1, 1], api_name="/compare_runs")
    with pytest.raises(Exception, match="'x' is not a sweep id"):
        client.predict("x", api_name="/sweep_grid")
    card, _gallery, config = client.predict(1.0, api_name="/run_details")  # a whole float is that run
    assert "Run 1: ok" in card and config["steps"] == 2


# ------------------------------------------------------------------------------------------ load
def test_the_device_queue_admits_up_to_its_limit_and_a_waiter_can_give_up():
    line = DeviceQueue(2)
    with line.admit(), line.admit():
        with pytest.raises(StudioBusy, match=re.escape(BUSY_MESSAGE.format(n=2, limit=2))):
            with line.admit():
                pass
    assert line.admitted == 0
    waited: list[str] = []
    with line.hold("a generation (1 image)"):
        with pytest.raises(DeviceWaitStopped):  # asked to stop after it has been told once what holds the device
            with line.hold("a sweep", waiting=waited.append, stop=lambda: bool(waited)):
                pass
    assert waited == ["a generation (1 image)"] and line.holder == ""
    with line.hold("free again"):
        assert line.holder == "free again"


@contextlib.contextmanager
def gated(studio):
    """Hold every run at the door of the engine until the gate opens (the device stays taken)."""
    gate, real = threading.Event(), studio.service.engine.run

    def run(*args, **kwargs):
        gate.wait(300)
        return real(*args, **kwargs)

    studio.service.engine.run = run
    try:
        yield gate
    finally:
        gate.set()
        studio.service.engine.run = real


def _desc(job) -> str:
    return " ".join(p.desc or "" for p in (job.status().progress_data or []))


def test_a_full_line_is_refused_at_once_and_reads_go_on(served):
    demo, _url, client, model, _err = served
    studio, store = demo.studio, demo.studio.store
    before = store.db["runs"].count
    with gated(studio) as gate:
        jobs = [client.submit(_spec(model, seeds=[10 + i]), api_name="/generate") for i in range(MAX_WAITING + 3)]
        wait_until(lambda: studio.service.device.admitted == MAX_WAITING and sum(j.done() for j in jobs) == 3,
                  what="two admitted and three refused")
        refused = [j for j in jobs if j.done()]
        waiting = [j for j in jobs if not j.done()]
        for job in refused:
            with pytest.raises(Exception) as err:
                job.result()
            assert BUSY_MESSAGE.format(n=MAX_WAITING, limit=MAX_WAITING) in str(err.value)
        # a read answers while the device is taken and both admitted generations are still in line
        table, _csv = client.predict("(all)", "(all)", "(all)", api_name="/runs")
        assert len(table["data"]) == before
        assert not any(j.done() for j in waiting)
        wait_until(lambda: any("waiting for the device: a generation (1 image, 2 steps) is running" in _desc(j)
                              for j in waiting), what="the waiting generation to say what it waits for")
        gate.set()
        for job in waiting:
            gallery, card = job.result(timeout=300)
            assert len(gallery) == 1 and "Run " in card
    assert store.db["runs"].count == before + MAX_WAITING
    assert {r["status"] for r in store.runs()[before:]} == {"ok"} and studio.service.device.admitted == 0


def test_a_generation_waiting_behind_a_sweep_says_so(served):
    demo, _url, client, model, _err = served
    studio, store = demo.studio, demo.studio.store
    sweep = {"name": "holds the device", "base": _spec(model, seeds=[0]), "grid": {"steps": [2, 3]},
             "reference": REF}
    with gated(studio) as gate:
        sweep_job = client.submit(sweep, False, api_name="/sweep")
        wait_until(lambda: studio.service.device.holder.startswith("sweep 'holds the device'"), what="the sweep to start")
        job = client.submit(_spec(model, seeds=[20]), api_name="/generate")
        wait_until(lambda: "waiting for the device: sweep 'holds the device'" in _desc(job),
                  what="the generation to name the sweep it waits for")
        gate.set()
        _grid, status = sweep_job.result(timeout=300)
        assert "finished" in status and "2 runs now" in status
        gallery, _card = job.result(timeout=300)
    assert len(gallery) == 1 and store.runs()[-1]["seeds"] == [20]  # it ran after the sweep, not beside it


# ------------------------------------------------------------------------------------------ login
@pytest.fixture(scope="module")
def auth_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "users"
    path.write_text("# who may log in\nalice:wonder land\n\nbob:builder\n")
    path.chmod(0o600)
    return path


def test_with_a_login_nothing_is_served_to_a_stranger(tmp_path, auth_file, tiny_pipeline_dir):
    from gradio_client import Client

    with started(["--data-dir", str(tmp_path / "study"), "--model", str(tiny_pipeline_dir),
                  "--auth-file", str(auth_file)]) as (_demo, url, err):
        assert "login: 2 user(s)" in err
        for path in ("config", "gradio_api/info", "gradio_api/openapi.json"):
            assert httpx.get(url + path, timeout=30).status_code == 401, path
        join = httpx.post(url + "gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"},
                          timeout=30)
        assert join.status_code == 401
        client = Client(url, auth=("alice", "wonder land"), verbose=False, download_files=str(tmp_path / "dl"))
        table, _csv = client.predict("(all)", "(all)", "(all)", api_name="/runs")
        assert "run" in table["headers"]  # the Runs table: run id first
        with pytest.raises(Exception):
            Client(url, auth=("alice", "wrong"), verbose=False, download_files=str(tmp_path / "dl"))
        assert httpx.post(url + "login", data={"username": "bob", "password": "nope"}, timeout=30).status_code == 400


def test_failed_logins_back_off_per_address(tmp_path, auth_file, tiny_pipeline_dir, monkeypatch, caplog):
    """After 3 failed logins in a row an address waits 1 s, then 2 s, 4 s ... (at most 60 s) before its next
    try, right password or not; the clock is the test's, so nothing here depends on how fast the machine is."""
    now = [1000.0]
    monkeypatch.setattr(serve.LoginThrottle, "clock", staticmethod(lambda: now[0]))

    def login(password: str) -> int:
        return httpx.post(url + "login", data={"username": "alice", "password": password}, timeout=30).status_code

    with started(["--data-dir", str(tmp_path / "study"), "--model", str(tiny_pipeline_dir),
                  "--auth-file", str(auth_file)]) as (_demo, url, _err):
        with caplog.at_level("WARNING", logger="studio.login"):
            assert [login("hunter2") for _ in range(10)] == [400] * 3 + [429] * 7
            refused = httpx.post(url + "login", data={"username": "alice", "password": "wonder land"}, timeout=30)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert "Too many failed logins from this address: try again in 1 s" in refused.text
            now[0] += 1.0  # the first back-off is over: one more try, which fails and doubles it
            assert login("hunter2") == 400
            now[0] += 1.5
            assert login("wonder land") == 429
            now[0] += 0.5
            assert login("wonder land") == 200  # a success clears the address
            assert [login("hunter2") for _ in range(3)] == [400] * 3
        logged = [r.getMessage() for r in caplog.records if r.name == "studio.login"]
        assert logged[:4] == ["failed login from 127.0.0.1 (1 in a row)", "failed login from 127.0.0.1 (2 in a row)",
                              "failed login from 127.0.0.1 (3 in a row); next try allowed in 1 s",
                              "failed login from 127.0.0.1 (4 in a row); next try allowed in 2 s"]
        assert not any("hunter2" in m or "wonder" in m for m in logged)
    throttle = serve.LoginThrottle()
    assert [throttle.failed("a")[1] for _ in range(12)] == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


@pytest.mark.parametrize("text, message", [
    ("alice:pw\n# comment\nbob\n", "line 3 is not user:password (no ':')"),
    ("alice:pw\n:secret\n", "line 2 has an empty user name"),
    ("alice:\n", "line 1 has an empty password"),
    ("alice:a\nalice:b\n", "line 2: user 'alice' is already given at"),
    ("# nobody\n\n", "names no users"),
])
def test_malformed_auth_files_are_refused_by_line(tmp_path, text, message):
    path = tmp_path / "users"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(serve.AuthError, match=re.escape(f"auth file {path}, ") + re.escape(message)
                       if "line" in message else message) as err:
        serve.read_users(None, path)
    assert "secret" not in str(err.value)


def test_studio_auth_takes_newlines_and_commas():
    users = serve.read_users(True, None, {"STUDIO_AUTH": "alice:a:b, bob:x\ncarol:y"})
    assert users == [("alice", "a:b"), ("bob", "x"), ("carol", "y")]
    with pytest.raises(serve.AuthError, match=r"\$STUDIO_AUTH, line 1, entry 2 is empty"):
        serve.read_users(True, None, {"STUDIO_AUTH": "alice:a,,bob:b"})
    check = serve.auth_checker(users)
    assert check("alice", "a:b") and not check("alice", "a") and not check("dave", "x")


def test_a_password_on_the_command_line_is_refused_without_echoing_it():
    res = run_app("--auth", "alice:hunter2")
    assert res.returncode == 2
    assert "--auth takes no value" in res.stderr and "STUDIO_AUTH" in res.stderr and "--auth-file" in res.stderr
    assert "hunter2" not in res.stderr + res.stdout

@pytest.mark.parametrize("args", [
    ["--auth-file", "alice:hunter2"],  # the password where the file's path goes
    ["--auth", "alice", "hunter2"],  # a space instead of the colon
    ["--au=alice:hunter2"],  # an abbreviation argparse would call ambiguous, echoing it whole
    ["--auth-f", "alice:hunter2"],
    ["--port", "7860", "hunter2"],
], ids=lambda a: " ".join(a).replace("hunter2", "PW"))
def test_a_password_in_the_wrong_place_on_the_command_line_is_not_echoed(args, bad_inputs):
    res = run_app(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "hunter2" not in res.stderr + res.stdout
    assert "not repeated" in res.stderr
    bad_inputs.append(("app.py", " ".join(args).replace("hunter2", "<password>"), res.stderr.strip().splitlines()[-1]))


def test_an_auth_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:pw\n")
    path.chmod(0o644)
    res = run_app("--auth-file", str(path))
    assert res.returncode == 2 and f"auth file {path} is open to group or others (mode 0644)" in res.stderr
    assert f"chmod 600 {path}" in res.stderr and "alice:pw" not in res.stderr


def test_another_address_without_a_login_is_warned_about(tmp_path):
    res = run_app("--host", "0.0.0.0", "--demo", str(tmp_path / "nothing"))
    assert "warning: listening on 0.0.0.0 without --auth" in res.stderr
    assert res.returncode == 2 and f"no study there ({tmp_path / 'nothing' / 'studio.db'} does not exist)" in res.stderr
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("example.org")


# ------------------------------------------------------------------------------------------ startup
def test_a_damaged_database_is_refused_by_name(tmp_path):
    store = RunStore(tmp_path)
    for steps in (2, 3, 4):
        store.start_run({"model": "m", "prompts": ["a"], "seeds": [0], "steps": steps}, config_hash=str(steps))
    store.close()
    db = tmp_path / "studio.db"
    with sqlite3.connect(db) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'idx_runs_status'").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    raw = bytearray(db.read_bytes())  # one index entry no longer matches its row
    at = raw.index(b"running", (root - 1) * page, root * page)
    raw[at:at + 7] = b"runnins"
    db.write_bytes(bytes(raw))
    assert RunStore.check_integrity(db).startswith("row ") and "missing from index idx_runs_status" in \
        RunStore.check_integrity(db)
    res = run_app("--data-dir", str(tmp_path))
    assert res.returncode == 2
    assert f"{db} failed SQLite's integrity check (row " in res.stderr and "Refusing to start" in res.stderr
    res = run_app("--demo", str(tmp_path))  # nor is it served as a demo
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{db} failed SQLite's integrity check (row " in res.stderr and "refusing to serve it" in res.stderr


def test_a_hosted_space_is_configured_from_the_environment(monkeypatch, tmp_path):
    """A Space runs ``app.py`` with no arguments: the study, the address, the port and the login come from
    its variables and secrets; flags still win, and without them nothing changes."""
    from app.serve import read_users

    parse_args = load_app_main().parse_args
    for name in ("STUDIO_DEMO", "STUDIO_HOST", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    _p, a = parse_args([])
    assert (a.demo, a.host, a.port, a.auth, a.root_path) == (None, "127.0.0.1", 7860, None, None)
    monkeypatch.setenv("STUDIO_DEMO", "study")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    monkeypatch.setenv("STUDIO_AUTH", "alice:correct-horse")
    _p, a = parse_args([])
    assert (a.demo, a.host, a.port, a.auth) == ("study", "0.0.0.0", 7861, True)
    assert read_users(a.auth, a.auth_file) == [("alice", "correct-horse")]
    _p, a = parse_args(["--demo", "other", "--host", "127.0.0.1", "--root-path", "/studio"])
    assert (a.demo, a.host, a.root_path) == ("other", "127.0.0.1", "/studio")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_the_private_cache_is_removed_when_the_studio_is_stopped(tmp_path, tiny_pipeline_dir, sig):
    """systemd and docker stop a service with SIGTERM, a terminal with SIGINT: the uploads go either way."""
    parent = tmp_path / "tmp"  # the private cache is made inside $GRADIO_TEMP_DIR
    parent.mkdir()
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(parent)}
    with open(tmp_path / "stderr.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(tmp_path / "study"),
                                 "--model", str(tiny_pipeline_dir), "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}/"

            def up() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(url + "config", timeout=10).status_code == 200
                return False

            wait_until(lambda: up() or proc.poll() is not None, what="the studio to serve")
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            upload = httpx.post(url + "gradio_api/upload", files={"files": ("note.txt", b"uploaded")}, timeout=60)
            assert upload.status_code == 200
            wait_until(lambda: list(parent.rglob("note.txt")), what="the upload in the cache")
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert list(parent.iterdir()) == [], (tmp_path / "stderr.txt").read_text()[-2000:]


def test_the_engine_keeps_its_cache_in_the_study_folder(tmp_path, monkeypatch):
    """The embedded model's fidelity gallery is rendered into ``<study>/cache``, never into the project."""
    from studio_core.embedded.training import data
    from studio_core.measure.engine import Engine

    asked, real = [], data.load_or_build
    monkeypatch.setattr(data, "load_or_build", lambda cache_dir, size: (asked.append(Path(cache_dir)),
                                                                       real(ROOT / ".cache", size))[1])
    engine = Engine(RunStore(tmp_path / "study"))
    try:
        result = engine.run({"model": "emoji-sd", "prompts": ["grinning face"], "seeds": [0], "steps": 2,
                             "repeats": 1}, reference={"sampler": "DPM++ 2M", "steps": 2})
    finally:
        engine.store.close()
    assert result.status == "ok", result.error
    assert asked == [(tmp_path / "study" / "cache").resolve()] and result.row["fidelity_n"] == 1
