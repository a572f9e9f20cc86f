"""Bad input, everywhere it can come in: the served API (as the page and any script call it), the demo,
the studio's command line and ``app.py``'s flags. Each case asserts the message a user gets (the reason,
never a traceback) and that nothing was lost: no row written by a refused input, the database sound.

``scripts/bad_inputs_table.sh`` runs this file (and the browser's bad-input test) and writes every
message seen to ``docs/bad-inputs.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from live import free_port

from studio_core.cli import main as cli
from studio_core.store.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
REF = {"sampler": "DPM++ 2M", "steps": 6}


def _serve(data_dir, model, **kw):
    from gradio_client import Client

    from app.layout import build_demo

    demo = build_demo(model, data_dir, reference=REF, **kw)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
    return demo, Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(Path(data_dir).parent / "dl"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_pipeline_dir):
    """A studio with two finished runs and a finished sweep, and a read-only demo of the same study."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    data_dir = tmp_path_factory.mktemp("bad") / "study"
    demo, client = _serve(data_dir, str(tiny_pipeline_dir))
    model = str(tiny_pipeline_dir)
    for steps in (2, 3):
        client.predict(_spec(model, steps=steps), api_name="/generate")
    client.predict({"name": "two", "base": _spec(model), "grid": {"steps": [2, 3]}, "reference": REF}, False,
                   api_name="/sweep")
    ro, ro_client = _serve(data_dir, model, read_only=True)
    store = RunStore(data_dir)
    yield client, ro_client, store, model
    store.close()
    ro.close()
    demo.close()


def _spec(model, **kw):
    return {"model": model, "prompts": ["grinning face"], "seeds": [0], "steps": 2, "guidance": 2.0, "repeats": 1,
            **kw}


def _error(call) -> str:
    with pytest.raises(Exception) as err:
        call()
    return str(err.value)


# ------------------------------------------------------------------------------- the served API
SPEC_CASES = [  # (change to a good spec, expected part of the message)
    ({"steps": 0}, "steps=0 is not allowed: a whole number from 1 to 1000"),
    ({"steps": "ten"}, "steps='ten' is not allowed"),
    ({"guidance": -1}, "guidance=-1 is not allowed: a number from 0 to 50"),
    ({"height": 33}, "height=33 is not allowed: a multiple of"),
    ({"height": 100000, "width": 100000}, "height=100000 is not allowed: a whole number from 8 to 8192"),
    ({"seeds": []}, "seeds=[] is not allowed: at least one seed"),
    ({"seeds": [-1]}, "seeds=-1 is not allowed"),
    ({"seeds": [1.5]}, "seeds=1.5 is not allowed: a whole number"),
    ({"seeds": list(range(300))}, "at most 256 images per run"),
    ({"prompts": []}, "prompts=[] is not allowed: at least one prompt, or a prompt_set"),
    ({"prompts": ["   "]}, "is not allowed: non-empty text"),
    ({"prompts": ["a" * 5000]}, "at most 1000 characters per prompt"),
    ({"prompts": ["grinning\x00face"]}, "text without control characters"),
    ({"prompt_set": "everything", "prompts": []}, "prompt_set='everything' is not allowed: one of"),
    ({"sampler": "Eular"}, "sampler='Eular' is not allowed"),
    ({"flow_shift": 50}, "flow_shift=50 is not allowed: unset (the model's own) or a number from 0.1 to 20"),
    ({"flow_shift": 2.0}, "sampler='default (shift 2)' is not allowed: shift is a flow-matching setting; this model "
                          "is epsilon-prediction (DDIMScheduler)"),
    ({"precision": "fp7"}, "precision='fp7' is not allowed: one of fp32, fp16, bf16"),
    ({"device": "tpu"}, "device='tpu' is not allowed: one of auto, cpu, cuda"),
    ({"repeats": -1}, "repeats=-1 is not allowed: a whole number from 1 to 100"),
    ({"warmup": 500}, "warmup=500 is not allowed"),
    ({"batch_size": 0}, "batch_size=0 is not allowed"),
    ({"distribution": 10}, "distribution=10 is not allowed: 0 (no distribution metrics) or a whole number"),
    ({"colour": "red"}, "colour='red' is not allowed: known fields are"),
    ({"knobs": {"turbo": {}}}, "knobs='turbo' is not allowed: one of"),
    ({"knobs": {"deepcache": {"interval": 0}}}, "knobs.deepcache.interval=0 is not allowed"),
    ({"knobs": {"deepcache": {"speed": 2}}}, "settings of deepcache are"),
    ({"knobs": {"compile": {}, "deepcache": {}}}, "compile"),
    ({"model": "/no/such/folder"}, "model folder not found: /no/such/folder"),
    ({"model": "../" * 16 + "etc"}, "is not a diffusers pipeline folder: model_index.json is missing"),  # /etc
    ({"model": "emoji\x00sd"}, "is not allowed"),
    # sizes and text that once passed: each is refused up front, and the message shows only the input's start
    ({"model": "m" * 100_000}, "at most 4,096 characters"),  # was "OSError: File name too long" + the whole name
    ({"seeds": list(range(20_000))}, "at most 256 images per run"),
    ({"prompts": ["grinning face"] * 5000}, "at most 256 prompts"),
    ({"steps": 1000}, "at most 999 for the model default (DDIMScheduler"),  # was IndexError mid-run
    ({"steps": 999, "warmup": 20, "repeats": 100}, "at most 100,000 denoiser steps per run"),
]


@pytest.mark.parametrize("change, message", SPEC_CASES, ids=[repr(c)[:40] for c, _ in SPEC_CASES])
def test_a_bad_spec_is_refused_by_name_and_writes_nothing(served, bad_inputs, change, message):
    client, _ro, store, model = served
    before = store.db["runs"].count
    msg = _error(lambda: client.predict({**_spec(model), **change}, api_name="/generate"))
    bad_inputs.append(("API /generate", repr(change)[:80], msg))
    assert message in msg and "Traceback" not in msg and len(msg) < 1000
    assert store.db["runs"].count == before and store.integrity_check() == "ok"


def test_a_lone_surrogate_sent_as_json_is_refused(served, bad_inputs):
    """JSON can carry a lone surrogate (``"\\ud800"``) that gradio_client cannot send: posted raw, as a
    script would, it used to pass validation, make a failed run, and break that run's details for good."""
    import json

    import httpx

    client, _ro, store, model = served
    before = store.db["runs"].count
    body = json.dumps({"data": [_spec(model, prompts=["grinning \ud800 face"]), None]})  # ASCII: "\ud800"
    call = f"{client.src.rstrip('/')}/gradio_api/call/generate"
    event = httpx.post(call, content=body, headers={"Content-Type": "application/json"}).json()["event_id"]
    answer = httpx.get(f"{call}/{event}", timeout=120).text  # server-sent events: "event: error", "data: {...}"
    assert "event: error" in answer
    msg = json.loads(answer.split("event: error", 1)[1].split("data:", 1)[1].splitlines()[0])["error"]
    bad_inputs.append(("API /generate (raw JSON)", "prompts: ['grinning \\ud800 face']", msg))
    assert "text that is valid Unicode" in msg
    assert store.db["runs"].count == before


def test_something_that_is_not_a_spec_at_all(served, bad_inputs):
    client, _ro, store, _model = served
    msg = _error(lambda: client.predict("steps=4", api_name="/generate"))
    bad_inputs.append(("API /generate", "'steps=4' (text, not a spec)", msg))
    assert "no run spec" in msg


RUN_ID_CASES = ["../1", "1; DROP TABLE runs", -1, 10 ** 30, 99999, "1\x00", "x" * 5000, 2.5]


@pytest.mark.parametrize("run_id", RUN_ID_CASES, ids=[repr(x)[:20] for x in RUN_ID_CASES])
def test_a_crafted_run_id_is_refused_and_the_store_is_untouched(served, bad_inputs, run_id):
    client, _ro, store, _model = served
    before = store.db["runs"].count
    try:
        card, _gallery, _config = client.predict(run_id, api_name="/run_details")
        msg = card  # a friendly answer instead of an error is fine, as long as it shows no run
    except Exception as exc:  # noqa: BLE001 - gradio_client's AppError
        msg = str(exc)
    bad_inputs.append(("API /run_details", repr(run_id)[:80], msg))
    assert ("does not exist" in msg or "not a run id" in msg or "Pick a run" in msg) and "Traceback" not in msg
    assert "Latency" not in msg  # no run was shown
    assert store.db["runs"].count == before and store.db["runs"].exists() and store.integrity_check() == "ok"


@pytest.mark.parametrize("ids, message", [
    (["1", "../2"], "not a run id"),
    (["1", "99999"], "does not exist"),
])
def test_compare_refuses_crafted_or_missing_runs(served, bad_inputs, ids, message):
    client, *_ = served
    msg = _error(lambda: client.predict(ids, api_name="/compare_runs"))
    bad_inputs.append(("API /compare_runs", repr(ids), msg))
    assert message in msg and "Traceback" not in msg


def _filtered(client, endpoint, sweep, model):
    """One filtered read over the API, as a script sends it: (status, sweep id, model) for the Runs tab's
    endpoints, the whole Frontier form for ``/plot_frontier``."""
    if endpoint == "/plot_frontier":
        return client.predict("psnr", "latency_median_ms", "configuration", "height", model, "(all)", sweep, [],
                              False, False, api_name=endpoint)
    return client.predict("(all)", sweep, model, api_name=endpoint)


def test_the_api_filters_by_a_real_sweep_id_and_model(served):
    """The filters' choices are filled after the page loads, so the API refused every real value ("Value: 1 is
    not in the list of choices: ['(all)']"): now a sweep id (number or text) and a model name filter."""
    import pandas as pd

    client, _ro, store, model = served
    sweep_id = store.sweeps()[-1]["id"]
    in_sweep = sorted(r["id"] for r in store.sweep_runs(sweep_id))
    for sid in (sweep_id, str(sweep_id)):
        table, csv_path = _filtered(client, "/runs", sid, model)
        assert sorted(int(r[0]) for r in table["data"]) == in_sweep
        assert sorted(pd.read_csv(csv_path)["id"]) == in_sweep
    assert sorted(pd.read_csv(_filtered(client, "/export_csv", sweep_id, model))["id"]) == in_sweep
    plot = _filtered(client, "/plot_frontier", str(sweep_id), model)
    assert "plot" in plot


@pytest.mark.parametrize("endpoint", ["/runs", "/export_csv", "/plot_frontier"])
@pytest.mark.parametrize("sweep, model, message", [
    ("999", "(all)", "sweep 999 does not exist"),
    ("../1", "(all)", "is not a sweep id"),
    ("(all)", "no/such/model", "no run of model 'no/such/model'"),
    ("(all)", "m" * 100_000, "no run of model 'mmmm"),
])
def test_the_api_filters_refuse_an_unknown_sweep_or_model(served, bad_inputs, endpoint, sweep, model, message):
    client, *_ = served
    msg = _error(lambda: _filtered(client, endpoint, sweep, model))
    bad_inputs.append((f"API {endpoint}", f"sweep {sweep!r}, model {model[:40]!r}", msg))
    assert message in msg and "not in the list of choices" not in msg and len(msg) < 400


@pytest.mark.parametrize("change, message", [
    ({"grid": {"colour": ["red"]}}, "colour"),
    ({"grid": {"steps": []}}, "steps"),
    ({"grid": {"steps": [2, 0]}}, "steps=0 is not allowed"),
    ({"base": "steps=4"}, "base"),
    ({"reference": {"steps": "abc"}}, "reference.steps='abc' is not allowed"),
    ({"grid": {"steps": list(range(1, 501)), "guidance": [*range(399), "x"]}}, "at most 10,000 cells in one sweep"),
])
def test_a_bad_sweep_is_refused_before_any_run(served, bad_inputs, change, message):
    client, _ro, store, model = served
    before = (store.db["runs"].count, store.db["sweeps"].count)
    sweep = {"name": "bad", "base": _spec(model), "grid": {"steps": [2]}, "reference": REF, **change}
    msg = _error(lambda: client.predict(sweep, False, api_name="/sweep"))
    bad_inputs.append(("API /sweep", repr(change)[:80], msg))
    assert message in msg and "Traceback" not in msg and len(msg) < 1000
    assert (store.db["runs"].count, store.db["sweeps"].count) == before


@pytest.mark.parametrize("endpoint, args", [
    ("/generate", "spec"),
    ("/sweep", "sweep"),
    ("/cancel_sweep", None),
])
def test_the_demo_refuses_every_write(served, bad_inputs, endpoint, args):
    _client, ro, store, model = served
    before = store.db["runs"].count
    values = {"spec": (_spec(model),), "sweep": ({"name": "x", "base": _spec(model), "grid": {"steps": [2]}}, False),
              None: ()}[args]
    msg = _error(lambda: ro.predict(*values, api_name=endpoint))
    bad_inputs.append((f"demo API {endpoint}", repr(values)[:80] or "()", msg))
    assert "read-only demo" in msg.lower() and "Traceback" not in msg
    assert store.db["runs"].count == before


# ------------------------------------------------------------------------------- the page's text boxes
TEXT_CASES = [  # (what the box parses, the text, expected part of the message)
    ("seeds", "0-256 " * 20_000, "at most 100,000 characters"),  # 120 KB: once a 23.5 MB message after 24 s
    ("seeds", "0-256 " * 1_000, "at most 256 seeds"),  # counted before each range is made
    ("seeds", "1000000000000-1000000000256 " * 3_000, "at most 256 seeds"),  # big numbers: no memory taken
    ("seeds", "0-" + "9" * 5_000, "whole numbers"),  # past Python's 4,300-digit limit
    ("prompts", "grinning face\n" * 10_000, "at most 100,000 characters"),
    ("prompts", "grinning \ud800 face", "text that is valid Unicode"),
    ("axis values", ", ".join(map(str, range(30_000))), "at most 100,000 characters"),
]


@pytest.mark.parametrize("box, text, message", TEXT_CASES, ids=[f"{b}:{t[:20]!r}" for b, t, _ in TEXT_CASES])
def test_a_huge_text_box_is_refused_before_it_is_expanded(bad_inputs, box, text, message):
    """The Generate and Sweep tabs' boxes are parsed by ``app.widgets``: length first, then the count before
    any range is made, and the message shows only the text's start."""
    from app import widgets
    from studio_core.errors import SpecError

    parse = {"seeds": widgets.parse_seeds, "prompts": widgets.parse_prompts,
             "axis values": lambda t: widgets.parse_axis_values("steps", t, int)}[box]
    with pytest.raises(SpecError) as err:
        parse(text)
    msg = str(err.value)
    bad_inputs.append((f"page: {box} box", f"{text[:40]!r}... ({len(text):,} characters)", msg))
    assert message in msg and len(msg) < 400


# ------------------------------------------------------------------------------- the command line
def _cli(tmp_path, capsys, *args) -> str:
    assert cli(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err.strip()


def test_cli_export_refuses_a_folder_a_link_and_the_database(tmp_path, capsys, bad_inputs):
    study = tmp_path / "study"
    RunStore(study).close()
    (tmp_path / "adir").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    for target, message in ((tmp_path / "adir", "folder"), (tmp_path / "link.csv", "link"),
                            (study / "studio.db", "studio.db")):
        err = _cli(tmp_path, capsys, "--data-dir", str(study), "export", "--csv", str(target))
        bad_inputs.append(("CLI export --csv", str(target.relative_to(tmp_path)), err))
        assert message in err
    assert not (tmp_path / "elsewhere.csv").exists()


def test_cli_bundle_refuses_a_full_folder_and_an_unknown_sweep(tmp_path, capsys, bad_inputs):
    study = tmp_path / "study"
    RunStore(study).close()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    err = _cli(tmp_path, capsys, "--data-dir", str(study), "bundle", str(full))
    bad_inputs.append(("CLI bundle", "OUT = a folder with files in it", err))
    assert "already exists" in err and (full / "keep.txt").read_text() == "mine"
    err = _cli(tmp_path, capsys, "--data-dir", str(study), "bundle", str(tmp_path / "new"), "--sweep", "999")
    bad_inputs.append(("CLI bundle", "--sweep 999", err))
    assert "sweep 999 does not exist" in err and not (tmp_path / "new").exists()


def test_cli_sweep_refuses_broken_yaml_and_an_unknown_axis(tmp_path, capsys, bad_inputs):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nbase: {steps: [4\n")
    err = _cli(tmp_path, capsys, "--data-dir", str(tmp_path / "s"), "sweep", str(broken))
    bad_inputs.append(("CLI sweep", "a preset with a YAML syntax error", err))
    assert "broken.yaml" in err
    axis = tmp_path / "axis.yaml"
    axis.write_text("name: x\nbase: {prompts: [sun]}\ngrid: {colour: [red, blue]}\n")
    err = _cli(tmp_path, capsys, "--data-dir", str(tmp_path / "s"), "sweep", str(axis))
    bad_inputs.append(("CLI sweep", "grid: {colour: [red, blue]}", err))
    assert "colour" in err


def test_cli_sweep_refuses_a_yaml_alias_bomb_in_one_line(tmp_path, capsys, bad_inputs):
    """A few hundred bytes of nested aliases took the CLI to 3.5 GB or a MemoryError traceback."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: bomb\ngrid: {steps: [2]}\nbase:\n" + "\n".join(  # base.a is 9**9 strings
        ['  i: &i ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"  {b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]" for a, b in zip("ihgfedcb", "hgfedcba")]))
    err = _cli(tmp_path, capsys, "--data-dir", str(tmp_path / "s"), "sweep", str(bomb))
    bad_inputs.append(("CLI sweep", f"a YAML alias bomb ({bomb.stat().st_size} bytes)", err))
    assert "anchors and aliases" in err and "\n" not in err


def test_cli_refuses_a_data_dir_that_is_a_file(tmp_path, capsys, bad_inputs):
    f = tmp_path / "notes.txt"
    f.write_text("not a study")
    err = _cli(tmp_path, capsys, "--data-dir", str(f), "runs")
    bad_inputs.append(("CLI --data-dir", "a file, not a folder", err))
    assert str(f) in err and "is a file and not a folder" in err and f.read_text() == "not a study"


# ------------------------------------------------------------------------------- app.py's flags
def _app(*args, env=None) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_app_flags(tmp_path, bad_inputs):
    secret = tmp_path / "users"
    secret.write_text("alice:correct-horse\n")
    secret.chmod(0o644)
    cases = [
        (["--auth", "alice:s3cret"], "never put a password", "--auth alice:s3cret"),
        (["--auth-file", str(secret)], "chmod 600", "--auth-file with mode 644"),
        (["--auth"], "STUDIO_AUTH", "--auth with $STUDIO_AUTH empty"),
        (["--demo", str(tmp_path / "nowhere")], "does not exist", "--demo of a missing folder"),
        (["--max-waiting", "0"], "at least 1", "--max-waiting 0"),
        (["--port", "http"], "invalid int value", "--port http"),
    ]
    for args, message, shown in cases:
        env = {"STUDIO_AUTH": ""} if args == ["--auth"] else None
        err = _app(*args, env=env)
        bad_inputs.append(("app.py", shown, err))
        assert message in err, err
        assert "s3cret" not in err
