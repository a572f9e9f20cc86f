"""The studio in the browser: Generate, Sweep, Frontier, Compare and Runs over one engine and one store.

``build_demo`` lays out the tabs first and wires the events last. Handlers (``Studio``) turn widget
values into a run-spec dict (``app.widgets``), call the engine once, and read plain data back from
the store (``app.data``); figures come from ``app.plots`` and text from ``app.cards``. The UI itself
never imports torch or diffusers.

Load: generations and sweeps pass a ``DeviceQueue``. At most ``max_waiting`` of them are admitted at a
time (one on the device, the rest waiting in line, with progress text naming what they wait for);
one more is refused at once with "The studio is busy ..." instead of hanging. Their gradio events
have no concurrency limit so a request reaches that check at once; the device lock, not gradio's
queue, puts them in line, so a measurement is never timed beside another. Reads (frontier, tables,
compare, details, CSV) never pass the device queue and answer while a run goes on; gradio's queue
holds at most ``queue_size`` events in all.

Sweep grids are drawn from the store (a sweep's recorded axes and its runs), so any recorded sweep's
grid can be shown without running anything: the Sweep tab's picker, ``/sweep_grid``.

Demo mode (``read_only=True``): the study is opened read-only and no engine is made. Frontier, sweep
grids, Compare, Runs, details and CSV work; under a banner ("Read-only demo of <study>: generation
and sweeps are off") the Generate form and the sweep builder are hidden and disabled, and every
endpoint that would run or write (``/build_spec``, ``/generate``, ``/build_sweep``, ``/sweep``,
``/cancel_sweep``) answers with the banner's message. The page names the study by its folder,
never by its path on the server.

Ids typed into the page or sent to the API (``/run_details``, ``/compare_runs``, ``/sweep_grid``) are
checked by ``parse_id``: anything but a whole number in SQLite's range gets a message, not a traceback.
"""

from __future__ import annotations

import hashlib
import html
import logging
import queue
import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import pandas as pd

from app import cards, data, plots, widgets
from studio_core.errors import DeviceWaitStopped, ModelLoadError, SpecError, StoreError, SweepBusy
from studio_core.measure.engine import REFERENCE_DEFAULT, Engine
from studio_core.models import EMBEDDED_MODEL_NAME, list_cached_pipelines, resolve_model
from studio_core.prompts import PROMPT_SETS
from studio_core.spec import DEVICES, RunSpec, model_info, resolve
from studio_core.store.store import RunStore
from studio_core.study.frontier import COSTS, QUALITIES
from studio_core.study.sweep import run_sweep, sweep_from_dict

__all__ = ["BUSY_MESSAGE", "FRONTIER_CLICK_JS", "DeviceQueue", "Studio", "build_demo", "parse_id"]

log = logging.getLogger(__name__)

USER_ERRORS = (SpecError, ModelLoadError, StoreError, SweepBusy)
COLOR_COLUMNS = ["sampler", "steps", "precision", "guidance", "knobs_label", "height", "sweep_id", "model",
                 "prompt_set", "device_name"]
STATUSES = [data.ALL, "ok", "failed", "running", "interrupted"]
NO_AXIS = "(none)"
MAX_ID = 2**63 - 1  # SQLite's largest INTEGER
BUSY_MESSAGE = ("The studio is busy: {n} generations or sweeps are already running or waiting for the device "
                "(limit {limit}). Try again in a minute; frontier, compare and runs still work.")
DEMO_MESSAGE = "Read-only demo of {study}: generation and sweeps are off"

# Plotly has no click event in gradio: on page load, hook every plotly chart in #frontier-plot and
# write the clicked point's run id (its customdata) into the hidden #frontier-click box.
FRONTIER_CLICK_JS = """
() => {
  if (window.__studioFrontierHook) { return []; }
  window.__studioFrontierHook = true;
  const send = (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p || p.customdata === undefined || p.customdata === null) { return; }
    const id = Array.isArray(p.customdata) ? p.customdata[0] : p.customdata;
    const box = document.querySelector('#frontier-click textarea, #frontier-click input');
    if (!box) { return; }
    box.value = id + '@' + Date.now();
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const hook = () => {
    document.querySelectorAll('#frontier-plot .js-plotly-plot').forEach((gd) => {
      if (typeof gd.on !== 'function') { return; }
      if (typeof gd.removeListener === 'function') { gd.removeListener('plotly_click', send); }
      else if (gd.__studioHooked) { return; }
      gd.on('plotly_click', send);
      gd.__studioHooked = true;
    });
  };
  new MutationObserver(hook).observe(document.body, {childList: true, subtree: true});
  hook();
  return [];
}
"""


def _user_error(exc: BaseException, hide: tuple[str, str] | None = None) -> gr.Error:
    """A readable message for the page: the reason, never a traceback. ``hide`` is (text, shown
    instead): a demo puts its study's folder name where the server path would be."""
    if isinstance(exc, gr.Error):
        return exc
    known = isinstance(exc, USER_ERRORS)
    if not known:
        log.exception("unexpected error in the studio UI")
    text = str(exc) if known else f"{type(exc).__name__}: {exc}"
    if hide:
        text = text.replace(*hide)
    return gr.Error(text, title="Cannot run this" if known else "Something went wrong", print_exception=False)


def parse_id(value: Any, what: str = "run") -> int | None:
    """A row id from a widget or an API caller: ``None`` when blank, else a whole number from 1 to
    SQLite's largest; anything else (text, fractions, NUL bytes, huge numbers) is a ``gr.Error``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + "...'"
    number = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 20:
        number = int(value.strip())
    if number is None or not 1 <= number <= MAX_ID:
        raise gr.Error(f"{shown} is not a {what} id: {what} ids are whole numbers from 1 up", title="No such "
                       f"{what}", print_exception=False)
    return number


def _stage_fraction(stage: str) -> float:
    """Rough position of an engine stage in a run, for the progress bar."""
    if stage.startswith("repeat"):
        try:
            i, n = (int(x) for x in stage.split()[1].split("/"))
            return 0.3 + 0.5 * (i - 1) / n
        except (IndexError, ValueError):
            return 0.5
    return {"loading": 0.05, "warm-up": 0.15, "scoring": 0.85}.get(stage, 0.0)


class DeviceQueue:
    """Generations and sweeps in line for the device: at most ``limit`` admitted (one running, the rest
    waiting); one more is refused at once with ``BUSY_MESSAGE`` rather than left to hang."""

    def __init__(self, limit: int = 4):
        if limit < 1:
            raise ValueError(f"max_waiting={limit}: at least 1 (the run on the device counts)")
        self.limit = limit
        self.admitted = 0
        self.holder = ""  # what is on the device now, for the progress text of those waiting
        self._count = threading.Lock()
        self._device = threading.Lock()

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._count:
            if self.admitted >= self.limit:
                raise gr.Error(BUSY_MESSAGE.format(n=self.admitted, limit=self.limit), title="Studio busy",
                               print_exception=False)
            self.admitted += 1
        try:
            yield
        finally:
            with self._count:
                self.admitted -= 1

    @contextmanager
    def hold(self, what: str, waiting: Callable[[str], None] | None = None,
             stop: Callable[[], bool] | None = None) -> Iterator["DeviceQueue"]:
        """The device for ``what``; while another run has it, ``waiting(holder)`` every half second.
        ``stop`` returning True while waiting gives up (``DeviceWaitStopped``)."""
        while not self._device.acquire(timeout=0.5):
            if stop is not None and stop():
                raise DeviceWaitStopped(what)
            if waiting is not None:
                waiting(self.holder or "another run")
        self.holder = what
        try:
            yield self
        finally:
            self.holder = ""
            self._device.release()




def _describe(spec: dict) -> str:
    """A generation in a few words, for the progress text of runs waiting behind it."""
    n = len(spec.get("prompts") or []) * len(spec.get("seeds") or [0])
    what = [f"{n} image{'s' if n != 1 else ''}" if n else f"prompt set {spec.get('prompt_set')}"]
    if spec.get("steps"):
        what.append(f"{spec['steps']} steps")
    return f"a generation ({', '.join(what)})"


class Studio:
    """The handlers: one store (and, unless it is a read-only demo, one engine) per app, shared by
    every browser session."""

    def __init__(self, store: RunStore, engine: Engine | None = None, reference: dict | None = None, *,
                 max_waiting: int = 4):
        self.store, self.engine = store, engine
        self.read_only = engine is None
        self.reference = reference
        self.device = DeviceQueue(max_waiting)
        self._stops: dict[str, threading.Event] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="studio-"))  # CSV exports; removed with the Studio or at exit
        weakref.finalize(self, shutil.rmtree, self.tmp, True)
        # a demo names its study by folder; the server's path stays on the server
        self.where = store.data_dir.name if self.read_only else str(store.path)
        self.demo_message = DEMO_MESSAGE.format(study=store.data_dir.name)
        self._hide = (str(store.data_dir), store.data_dir.name) if self.read_only else None

    def error(self, exc: BaseException) -> gr.Error:
        return _user_error(exc, self._hide)

    def refuse_in_demo(self) -> None:
        """Every handler that would run or write starts here: a demo answers with its banner."""
        if self.read_only:
            raise gr.Error(self.demo_message, title="Read-only demo", print_exception=False)

    # ------------------------------------------------------------------ widgets -> specs
    def spec_from(self, parts: dict, force_knobs: set[str] = frozenset()) -> dict:
        enabled = {k: bool(v) or k in force_knobs for k, v in parts["enabled"].items()}
        return widgets.build_spec(parts["model"], parts["prompts"], parts["prompt_set"], parts["seeds"],
                                   parts["values"], enabled, warmup=parts["warmup"], repeats=parts["repeats"],
                                   device=parts["device"], batch_size=parts["batch_size"])

    def check_spec(self, spec: dict) -> dict:
        """Resolve against the model's configs (no weights); ``gr.Error`` naming field, value and rule."""
        try:
            resolve(RunSpec.from_dict(spec))
        except (SpecError, ModelLoadError, TypeError) as exc:
            raise self.error(exc if not isinstance(exc, TypeError) else SpecError("spec", spec, str(exc))) from None
        return spec

    # ------------------------------------------------------------------ Generate
    def model_changed(self, model: str, settings: list[widgets.Setting], knobs: list | None = None):
        """The model's defaults into the built-in widgets, a line about the model, and each optional knob's
        "use" box greyed out with the reason when the model cannot take that knob."""
        knobs = knobs or []
        try:
            info = model_info(model)
        except (SpecError, ModelLoadError) as exc:
            return [gr.skip()] * len(settings) + [f"**Model:** {exc}"] + [gr.skip()] * len(knobs)
        d = info.defaults
        native = info.sample_size or 512
        defaults = {"steps": d["num_inference_steps"], "guidance": d["guidance_scale"],
                    "height": d.get("height") or native, "width": d.get("width") or native}
        updates = [gr.update(value=defaults[s.name]) if s.builtin and s.name in defaults else gr.skip()
                   for s in settings]
        text = (f"**Model:** {info.pipeline_class} · own scheduler {info.scheduler_class} · native {native} px "
                f"(multiples of {info.size_multiple}) · defaults {defaults['steps']} steps, guidance "
                f"{defaults['guidance']:g}")
        return updates + [text] + [_knob_availability(knob, info) for knob in knobs]

    def generate(self, spec: dict, progress=gr.Progress()):
        """Run one spec through the engine; the images (pixel-upscaled) and the metrics card. Waits in
        line for the device (saying behind what), or is refused at once when the line is full."""
        self.refuse_in_demo()
        if not isinstance(spec, dict):
            raise gr.Error("no run spec: press Generate", print_exception=False)

        def on_stage(stage: str) -> None:
            progress(_stage_fraction(stage), desc=stage)

        def waiting(holder: str) -> None:
            progress(0.0, desc=f"waiting for the device: {holder} is running")

        with self.device.admit():
            progress(0.0, desc="waiting for the device")
            try:
                with self.device.hold(_describe(spec), waiting):
                    result = self.engine.run(spec, reference=self.reference, on_stage=on_stage)
            except Exception as exc:
                raise self.error(exc) from None
        row = self.store.get_run(result.run_id)
        if result.status != "ok":
            raise gr.Error(f"run {result.run_id} failed: {row.get('error')}", title="Run failed",
                           print_exception=False)
        return self.gallery(row), cards.metrics_card(row, data.reference_config(self.store, row.get("reference_id")))

    def gallery(self, row: dict, limit: int = 64) -> list[tuple]:
        pairs = data.image_pairs(row)
        images = self.store.load_images(row["images"][:limit]) if row.get("images") else []
        return [(plots.pixel_upscale(im, 256), f"{p} · seed {s}") for im, (p, s) in zip(images, pairs)]

    # ------------------------------------------------------------------ Sweep
    def sweep_dict(self, parts: dict, axes: list[tuple[str, str]], name: str, question: str) -> dict:
        axes = [(a if a and a != NO_AXIS else None, v) for a, v in axes]
        forced = {a.split(".")[1] for a, _ in axes if a and a.startswith("knobs.")}
        base = self.spec_from(parts, forced)
        return widgets.build_sweep(base, axes, name=name, question=question, reference=self.reference)

    def estimate(self, sweep: dict) -> str:
        """How many runs and how long, before anything starts (``SpecError`` for a bad cell)."""
        s = sweep_from_dict(sweep, "ui")
        specs = [x.to_dict() for x in s.specs]
        path = resolve_model(s.specs[0].model)
        history = data.load_runs(self.store, status="ok")
        ref_steps = int((self.reference or REFERENCE_DEFAULT).get("steps", REFERENCE_DEFAULT["steps"]))
        seconds, basis = data.estimate_seconds(history, specs, path, ref_steps)
        shape = " x ".join(str(len(v)) for _, v in s.axes)
        n_img = s.specs[0].n_images
        passes = s.specs[0].warmup + s.specs[0].repeats
        when = (f"estimated **{data.format_duration(seconds)}**" if seconds is not None
                else "time **unknown until the first run** of this model")
        done = [x for x in self.store.sweeps(s.key) if x["status"] == "done"]
        again = (f" A sweep with these configurations already finished (sweep {done[-1]['id']}): tick "
                 "*run again* to repeat it, or start to show its grid.") if done else ""
        return (f"**{len(s)} runs** ({shape}), {n_img} image{'s' if n_img != 1 else ''} x {passes} passes each; "
                f"{when}.{again}\n\n<small>{basis}</small>")

    def _stop_event(self, request: gr.Request | None) -> threading.Event:
        key = getattr(request, "session_hash", None) or "default"
        return self._stops.setdefault(key, threading.Event())

    def cancel(self, request: gr.Request):
        self.refuse_in_demo()
        self._stop_event(request).set()
        return "Cancelling: the sweep stops after the run in progress (runs are never cut in half)."

    def run_sweep(self, sweep: dict, rerun: bool, request: gr.Request, progress=gr.Progress()):
        """Run (or resume) a sweep, updating the grid after every run; Cancel stops between runs. Like a
        generation, it waits in line for the device or is refused when the line is full."""
        self.refuse_in_demo()
        try:
            s = sweep_from_dict(sweep, "ui")
        except Exception as exc:
            raise self.error(exc) from None
        with self.device.admit():
            yield from self._run_sweep(s, bool(rerun), self._stop_event(request), progress)

    def _run_sweep(self, s, rerun: bool, stop: threading.Event, progress):
        stop.clear()
        events: queue.Queue = queue.Queue()
        outcome: dict = {}
        device = self.device

        def waiting(holder: str) -> None:
            events.put(("wait", holder))

        def ran(done: int, total: int, row: dict) -> None:
            device.holder = f"sweep '{s.name}' ({done} of {total} runs done)"
            events.put(("run", done, total, row))

        def work() -> None:
            try:
                with device.hold(f"sweep '{s.name}' (starting)", waiting, stop=stop.is_set):
                    outcome["result"] = run_sweep(self.engine, s, new=rerun, should_stop=stop.is_set, progress=ran)
            except DeviceWaitStopped:
                outcome["stopped"] = True
            except BaseException as exc:  # reported to the page below
                outcome["error"] = exc
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name="studio-sweep", daemon=True)
        worker.start()
        progress((0, len(s)), desc=f"{s.name}: starting", unit="runs")
        shown = None
        try:
            while (item := events.get()) is not None:
                if item[0] == "wait":
                    text = f"waiting for the device: {item[1]} is running"
                    progress((0, len(s)), desc=f"{s.name}: {text}", unit="runs")
                    if text != shown:
                        shown = text
                        yield gr.skip(), f"**Waiting** for the device: {item[1]} is running."
                    continue
                _, done, total, row = item
                status = f"run {done} of {total} done ({row.get('status')})"
                progress((done, total), desc=f"{s.name}: {status}", unit="runs")
                yield self.grid(row.get("sweep_id")), f"**Running** {s.name}: {status}."
        finally:  # the page went away: stop between runs and wait, so runs never overlap
            if worker.is_alive():
                stop.set()
                worker.join()
        if "error" in outcome:
            raise self.error(outcome["error"])
        if outcome.get("stopped"):
            yield gr.skip(), f"**Cancelled** {s.name} before it started: nothing ran."
            return
        res = outcome["result"]
        text = {"done": "finished", "cancelled": "cancelled"}.get(res["status"], res["status"])
        msg = (f"**Sweep {res['sweep_id']} {text}**: {res['ran']} runs now, {res['skipped']} already done "
               "(kept from an earlier start).")
        if res.get("note"):
            msg += f" {res['note']}"
        yield self.grid(res["sweep_id"]), msg

    def grid(self, sweep_id: int | None) -> str:
        """The annotated grid of a sweep in the store (running or finished), from its recorded axes."""
        if sweep_id is None:
            return ""
        sweep = self.store.get_sweep(sweep_id)
        axes = [(a, tuple(v)) for a, v in (sweep.get("config_json") or {}).get("axes") or []]
        if not axes:
            return f"<p>Sweep {sweep_id} has no recorded axes to lay out a grid.</p>"
        latest: dict[int, dict] = {}
        for row in self.store.sweep_runs(sweep_id):  # oldest first: a later finished run replaces earlier ones
            i = row.get("sweep_index")
            if i is not None and (row["status"] in ("ok", "failed") or i not in latest):
                latest[int(i)] = row
        return cards.sweep_grid_html(axes, latest, self.store.load_images,
                                     title=f"Sweep {sweep_id}: {sweep['name']} ({sweep['status']})")

    def sweep_grid(self, sweep_id: Any) -> str:
        """The grid of a sweep picked by id (the Sweep tab's picker, ``/sweep_grid``): a read."""
        sid = parse_id(sweep_id, "sweep")
        if sid is None:
            return "<p>Pick a sweep to see its grid.</p>"
        try:
            return self.grid(sid)
        except StoreError as exc:
            raise self.error(exc) from None

    # ------------------------------------------------------------------ Frontier
    def frontier(self, quality: str, cost: str, color: str, symbol: str, model: str, prompt_set: str,
                 sweep_id: Any, selected: list | None, log_x: bool = False):
        sid = None if sweep_id in (None, "", data.ALL) else parse_id(sweep_id, "sweep")
        frame = data.load_runs(self.store, status="ok", model=model, prompt_set=prompt_set, sweep_id=sid)
        sel = [i for i in (parse_id(v) for v in (selected or [])) if i is not None]
        fig = plots.make_frontier_plot(frame, quality, cost, None if color == NO_AXIS else color,
                                       None if symbol == NO_AXIS else symbol, sel, log_x=bool(log_x))
        return fig

    def filter_choices(self):
        """Current choices of the model / prompt set / sweep / run filters, from the whole log."""
        frame = self.store.runs_frame()
        models = [data.ALL] + sorted({m for m in frame.get("model", []) if m})
        sets = [data.ALL] + sorted({p for p in frame.get("prompt_set", []) if isinstance(p, str) and p})
        if len(frame) and frame["prompt_set"].isna().any():
            sets.append("(custom prompts)")
        sweeps = [(data.ALL, data.ALL)] + [(label, str(i)) for label, i in data.sweep_choices(self.store)]
        runs = data.run_choices(frame[frame["status"] == "ok"]) if len(frame) else []
        return models, sets, sweeps, runs

    def clicked(self, token: str, selected: list | None):
        """A plotly click (``"<id>@<time>"`` from the page hook): show that run, add it to the selection."""
        try:
            run_id = parse_id(str(token).split("@")[0])
            row = self.store.get_run(run_id)
            sel = [i for i in (parse_id(v) for v in (selected or [])) if i is not None]
        except (gr.Error, StoreError):
            return gr.skip(), gr.skip(), gr.skip()
        if run_id not in sel:
            sel = (sel + [run_id])[-4:]
        return (self.gallery(row, limit=8), self.point_text(row),
                gr.update(choices=self.filter_choices()[3], value=sel))

    def point_text(self, row: dict) -> str:
        head, *rest = plots.hover_text(row).replace("<b>", "**").replace("</b>", "**").split("<br>")
        return "\n".join([head, "", *[f"- {line}" for line in rest], "", "**Knobs**", "",
                          *[f"- {k}" for k in cards.knob_lines(row)]])

    # ------------------------------------------------------------------ Compare
    def compare(self, ids: Any):
        """Two to four runs side by side; ``ids`` come raw from the page or an API caller."""
        if not isinstance(ids, (list, tuple)):
            ids = [] if ids is None else [ids]
        if len(ids) > 4:
            raise gr.Error(f"{len(ids)} runs given: compare two to four", print_exception=False)
        parsed = [parse_id(i) for i in ids]
        if None in parsed:
            raise gr.Error("a blank run id: give two to four run ids", print_exception=False)
        if len(parsed) < 2:
            return ("<p>Select two to four runs to compare (the first is the baseline).</p>",
                    pd.DataFrame(columns=["setting"]), pd.DataFrame(columns=["metric"]))
        try:
            rows = [self.store.get_run(i) for i in parsed]
            images = {int(r["id"]): self.store.load_images(r["images"]) for r in rows if r.get("images")}
        except StoreError as exc:
            raise self.error(exc) from None
        return (cards.compare_html(rows, images), data.differing_settings(rows), data.metric_deltas(rows))

    # ------------------------------------------------------------------ Runs
    def runs_table(self, status: str, sweep_id: Any, model: str):
        frame = data.load_runs(self.store, status=status, sweep_id=sweep_id, model=model)
        return data.table_view(frame), self.export_csv(status, sweep_id, model)

    def export_csv(self, status: str, sweep_id: Any, model: str) -> str:
        """Every column of the filtered runs as CSV in a temp folder; returns its path."""
        where, params = data.runs_where(status, sweep_id, model)
        tag = hashlib.sha256(repr((status, sweep_id, model)).encode()).hexdigest()[:8]
        path = self.tmp / f"studio-runs-{tag}.csv"
        self.store.export_csv(path, where, params)
        return str(path)

    def details(self, run_id: Any):
        """One run's card, images and full configuration; ``run_id`` comes raw from the page or the API."""
        rid = parse_id(run_id)
        if rid is None:
            return "Pick a run in the table (or type its id).", [], None
        try:
            row = self.store.get_run(rid)
        except StoreError:
            raise gr.Error(f"run {rid} does not exist in {self.where}", title="No such run",
                           print_exception=False) from None
        card = cards.metrics_card(row, data.reference_config(self.store, row.get("reference_id")))
        config = row.get("config_json") or {}
        return card, (self.gallery(row) if row.get("images") else []), config

    def selected_row(self, evt: gr.SelectData):
        row = evt.row_value or []
        return int(row[0]) if row else gr.skip()


# ---------------------------------------------------------------------------------------- layout
def _knob_availability(knob, info) -> dict:
    """The "use" checkbox of an optional knob for this model: greyed out (and unticked) with the reason
    when ``check_model`` refuses the knob's default settings."""
    try:
        reason = knob.check_model(info, knob.Settings())
    except TypeError:  # settings without defaults: nothing to check before the user fills them in
        reason = None
    if reason:
        return gr.update(interactive=False, value=False, info=f"Not available for this model: {reason}")
    return gr.update(interactive=True, info=knob.description)


def _setting_widget(knob, s: widgets.Setting, defaults: dict) -> gr.components.Component:
    if s.name == knob.name or len(knob.Settings.__dataclass_fields__) == 1:
        label = knob.title
    else:  # an optional knob's settings sit under its own "use ..." box: the setting's name is enough
        label = f"{knob.title}: {s.title}" if s.builtin else s.title.capitalize()
    own = f"({knob.title.split(' (')[0].lower()}'s own)"
    value = defaults.get(s.name, s.default) if s.builtin else s.default
    eid = "setting-" + s.axis.replace(".", "-")
    if s.choices:
        choices = [("default (the model's own)", c) if (knob.name, s.name, c) == ("sampler", "sampler", "default")
                   else c for c in s.choices]
        if s.optional:
            choices = [(own, "")] + choices
            value = "" if value is None else value
        first = choices[0][1] if isinstance(choices[0], tuple) else choices[0]
        return gr.Dropdown(choices, value=value if value is not None else first, label=label, elem_id=eid,
                           min_width=110)
    if s.kind is bool and s.optional:  # three states: unset, true, false
        return gr.Dropdown([(own, ""), ("true", "true"), ("false", "false")], label=label, elem_id=eid,
                           value="" if value is None else str(bool(value)).lower(), min_width=110)
    if s.kind is bool:
        return gr.Checkbox(value=bool(value), label=label, elem_id=eid, min_width=110)
    if s.kind in (int, float) and s.optional and not s.builtin:  # blank = the knob's own value
        return gr.Textbox(value="" if value is None else str(value), label=label, elem_id=eid,
                          placeholder="default", min_width=110)
    if s.kind in (int, float):
        return gr.Number(value=value, label=label, precision=0 if s.kind is int else None, elem_id=eid,
                         step=1 if s.kind is int else 0.5, placeholder="model default" if s.builtin else None,
                         min_width=110)
    return gr.Textbox(value=value or "", label=label, elem_id=eid, min_width=110)


def _lines(knobs: list, per_line: int = 3) -> list[list]:
    """Knobs grouped into widget lines: consecutive one-setting knobs together (up to ``per_line``)."""
    lines: list[list] = []
    for knob in knobs:
        single = len(widgets.knob_settings(knob)) == 1
        if single and lines and len(lines[-1]) < per_line and all(
                len(widgets.knob_settings(k)) == 1 for k in lines[-1]):
            lines[-1].append(knob)
        else:
            lines.append([knob])
    return lines


def _banner(studio: Studio) -> str:
    return ('<div style="background:#fff8e1;border:1px solid #e0b24a;border-radius:8px;padding:10px 14px;'
            f'font-size:15px;color:#4a3800"><b>{html.escape(studio.demo_message)}.</b> Frontier, sweep grids, '
            "Compare and Runs (details, CSV) show the study as it was recorded.</div>")


def build_demo(model: str = EMBEDDED_MODEL_NAME, data_dir: str | Path | None = None, *,
               reference: dict | None = None, timer_s: float = 2.0, read_only: bool = False,
               max_waiting: int = 4, queue_size: int = 32) -> gr.Blocks:
    """The studio for one study folder. ``reference`` overrides the reference solver (tests use a
    cheap one); ``timer_s`` is how often the Frontier polls the store for new runs.

    ``read_only`` serves an existing study as a demo: no engine, no writes, generation and sweeps off.
    ``max_waiting`` generations and sweeps may be admitted at once (one runs, the rest wait for the
    device); ``queue_size`` bounds the events gradio's queue holds."""
    if read_only:
        store = RunStore(data_dir, read_only=True)  # StoreError naming the path when there is no study
        studio = Studio(store, None, reference, max_waiting=max_waiting)
    else:
        store = RunStore(data_dir)
        studio = Studio(store, Engine(store), reference, max_waiting=max_waiting)
    defaults: dict = {}
    if not read_only:  # a demo's model may not even be on this server: its page never loads it
        try:
            info = model_info(model)
            defaults = {"steps": info.defaults["num_inference_steps"], "guidance": info.defaults["guidance_scale"],
                        "height": info.defaults.get("height") or info.sample_size,
                        "width": info.defaults.get("width") or info.sample_size}
        except (SpecError, ModelLoadError):
            pass
    knobs = widgets.registry_knobs()
    builtin_knobs = [k for k in knobs if k.builtin_field]
    extra_knobs = [k for k in knobs if not k.builtin_field]
    settings = [s for k in builtin_knobs + extra_knobs for s in widgets.knob_settings(k)]  # widget order
    knob_names = [k.name for k in extra_knobs]
    axes = list(widgets.axis_choices())
    models = [model] if read_only else [EMBEDDED_MODEL_NAME] + [repo for repo, _ in list_cached_pipelines()]
    if model not in models:
        models.insert(0, model)
    off = not read_only  # the Generate and Sweep controls work

    with gr.Blocks(title="Diffusion Efficiency Studio") as demo:
        gr.Markdown("# Diffusion Efficiency Studio\nFind the fastest configuration that still looks right: every "
                    "run is timed (median of repeats, with spread), scored against a same-seed reference, and "
                    f"kept in `{studio.where}`.", elem_id="studio-header")
        if read_only:
            gr.HTML(_banner(studio), elem_id="demo-banner")
        with gr.Tabs(selected="frontier" if read_only else "generate") as tabs:
            # ---------------------------------------------------------------- 1. Generate
            with gr.Tab("Generate", id="generate"):
                if read_only:  # the banner above says why the form is gone
                    gr.Markdown("This page shows a study recorded with the studio. To time your own configurations, "
                                "run the studio yourself: `python app.py` (see the README).",
                                elem_id="demo-generate-note")
                with gr.Row(visible=off):  # kept (hidden) in a demo: its endpoints answer with the banner
                    with gr.Column(scale=2, min_width=360):
                        model_box = gr.Dropdown(models, value=model, allow_custom_value=True, label="Model",
                                                info="'emoji-sd' (embedded), a diffusers folder, or a cached repo id",
                                                elem_id="model")
                        model_text = gr.Markdown()
                        with gr.Row():
                            prompt_set = gr.Dropdown([widgets.NO_PROMPT_SET, *PROMPT_SETS], label="Prompt set",
                                                     value=widgets.NO_PROMPT_SET, elem_id="prompt-set")
                            seeds = gr.Textbox("0", label="Seeds", info="e.g. 0, 1, 2 or 0-3", elem_id="seeds")
                        prompts = gr.Textbox("grinning face", lines=3, label="Prompts (one per line)",
                                             elem_id="prompts")
                        setting_boxes: list = []
                        with gr.Group():  # one-setting knobs share a line; a knob with several gets its own
                            for line in _lines(builtin_knobs):
                                with gr.Row():
                                    for knob in line:
                                        for s in widgets.knob_settings(knob):
                                            setting_boxes.append(_setting_widget(knob, s, defaults))
                        enables: list = []
                        if extra_knobs:
                            with gr.Accordion("More knobs (each off until you tick it)", open=True):
                                for knob in extra_knobs:
                                    with gr.Group():
                                        enables.append(gr.Checkbox(False, label=f"use {knob.title}",
                                                                   info=knob.description,
                                                                   elem_id=f"use-{knob.name}"))
                                        with gr.Row():
                                            for s in widgets.knob_settings(knob):
                                                setting_boxes.append(_setting_widget(knob, s, defaults))
                        with gr.Accordion("Measurement", open=False):
                            with gr.Row():
                                warmup = gr.Number(1, precision=0, minimum=1, label="Warm-up calls", elem_id="warmup")
                                repeats = gr.Number(3, precision=0, minimum=1, label="Timed repeats", elem_id="repeats")
                                device = gr.Dropdown(list(DEVICES), value="auto", label="Device")
                                batch = gr.Number(None, precision=0, label="Batch size",
                                                  placeholder="all images in one call")
                        generate_btn = gr.Button("Generate" if off else "Generate (off in this read-only demo)",
                                                 variant="primary", elem_id="generate-btn", interactive=off)
                        with gr.Accordion("Run spec (what the engine receives)", open=False):
                            spec_json = gr.JSON(label="run spec", elem_id="spec-json")
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(label="Images (nearest-neighbour upscaled)", format="png", columns=4,
                                             height=320, object_fit="contain", fit_columns=False,
                                             elem_id="gallery")
                        card = gr.Markdown("Generate to see latency, breakdown, memory and quality here.",
                                           elem_id="metrics-card")
            # the order widgets.split_values reads them in
            gen_inputs = [model_box, prompts, prompt_set, seeds, warmup, repeats, device, batch, *setting_boxes, *enables]

            # ---------------------------------------------------------------- 2. Sweep
            with gr.Tab("Sweep", id="sweep") as sweep_tab:
                with gr.Column(visible=off):  # a demo shows recorded grids only
                    gr.Markdown("Runs a grid over the **Generate tab's settings** as the base: pick up to three axes "
                                "(X across, Y down, Z one table each) and comma-separated values.")
                    axis_rows = []
                    for name, axis, vals in (("X", "steps", "4, 8"), ("Y", "sampler", "DDIM, DPM++ 2M"),
                                             ("Z", NO_AXIS, "")):
                        with gr.Row():
                            a = gr.Dropdown([NO_AXIS, *axes] if name != "X" else axes, value=axis, label=f"{name} axis",
                                            elem_id=f"axis-{name.lower()}", scale=1)
                            v = gr.Textbox(vals, label=f"{name} values", elem_id=f"values-{name.lower()}", scale=2,
                                           info=widgets.axis_hint(axis) if axis != NO_AXIS else "")
                        axis_rows += [a, v]
                    with gr.Row():
                        sweep_name = gr.Textbox("", label="Name", placeholder="ui sweep: <axes>", scale=1)
                        question = gr.Textbox("", label="Question it answers", scale=2)
                        rerun = gr.Checkbox(False, label="run again even if this sweep already finished", scale=1)
                    estimate_md = gr.Markdown(elem_id="sweep-estimate")
                    with gr.Row():
                        start_btn = gr.Button("Start sweep" if off else "Start sweep (off in this read-only demo)",
                                              variant="primary", elem_id="start-sweep", interactive=off)
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-sweep", visible=off)
                    sweep_status = gr.Markdown(elem_id="sweep-status")
                with gr.Row():
                    sweep_pick = gr.Dropdown([], value=None, label="Show the grid of a recorded sweep",
                                             elem_id="sweep-pick", scale=3)
                grid_html = gr.HTML(elem_id="sweep-grid")
                with gr.Accordion("Sweep spec (the YAML preset equivalent)", open=False, visible=off):
                    sweep_json = gr.JSON(label="sweep")

            # ---------------------------------------------------------------- 3. Frontier
            with gr.Tab("Frontier", id="frontier"):
                with gr.Row():
                    quality = gr.Dropdown(list(QUALITIES), value="psnr", label="Quality", elem_id="f-quality")
                    cost = gr.Dropdown([(v, k) for k, v in COSTS.items()], value="latency_median_ms", label="Cost")
                    color = gr.Dropdown(COLOR_COLUMNS, value="sampler", label="Colour by")
                    symbol = gr.Dropdown([NO_AXIS, *COLOR_COLUMNS], value="precision", label="Symbol by")
                    log_x = gr.Checkbox(False, label="log cost axis", scale=0, min_width=140)
                with gr.Row():
                    f_model = gr.Dropdown([data.ALL], value=data.ALL, label="Model")
                    f_set = gr.Dropdown([data.ALL], value=data.ALL, label="Prompt set")
                    f_sweep = gr.Dropdown([(data.ALL, data.ALL)], value=data.ALL, label="Sweep")
                with gr.Row():
                    with gr.Column(scale=3):
                        plot = gr.Plot(elem_id="frontier-plot", label="Frontier")
                    with gr.Column(scale=1, min_width=260):
                        thumb = gr.Gallery(label="Clicked run", format="png", columns=2, height=220,
                                           object_fit="contain", fit_columns=False, elem_id="frontier-thumb")
                        thumb_md = gr.Markdown("Click a point to see its images and settings; it is added to the "
                                               "comparison below.", elem_id="frontier-point")
                        click_box = gr.Textbox(visible="hidden", elem_id="frontier-click")
                with gr.Row():
                    selection = gr.Dropdown([], value=[], multiselect=True, max_choices=4, scale=4,
                                            label="Runs to compare (2-4; the first is the baseline)",
                                            elem_id="frontier-selection")
                    to_compare = gr.Button("Compare these", scale=1, elem_id="to-compare")
                timer = gr.Timer(timer_s, active=off)  # a demo's study never changes
                version = gr.State(None)

            # ---------------------------------------------------------------- 4. Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    compare_ids = gr.Dropdown([], value=[], multiselect=True, max_choices=4, scale=4,
                                              label="Runs (2-4; the first is the baseline)", elem_id="compare-ids")
                    compare_btn = gr.Button("Compare", scale=1)
                compare_view = gr.HTML(elem_id="compare-view")
                with gr.Row():
                    settings_df = gr.Dataframe(label="Settings that differ", interactive=False, wrap=True)
                    deltas_df = gr.Dataframe(label="Metrics (later runs: change vs the first)", interactive=False,
                                             wrap=True)

            # ---------------------------------------------------------------- 5. Runs
            with gr.Tab("Runs", id="runs") as runs_tab:
                with gr.Row():
                    r_status = gr.Dropdown(STATUSES, value=data.ALL, label="Status", elem_id="r-status")
                    r_sweep = gr.Dropdown([(data.ALL, data.ALL)], value=data.ALL, label="Sweep")
                    r_model = gr.Dropdown([data.ALL], value=data.ALL, label="Model")
                    refresh_btn = gr.Button("Refresh", scale=0)
                    download = gr.DownloadButton("Download CSV", elem_id="download-csv", scale=0)
                table = gr.Dataframe(interactive=False, max_height=420, elem_id="runs-table",
                                     label="Runs, newest first: click a row for its details, a header to sort. "
                                           "The CSV has every column of these runs.")
                with gr.Row():
                    run_id = gr.Number(None, precision=0, label="Run id", scale=0, min_width=140, elem_id="run-id")
                    show_btn = gr.Button("Show details", scale=0)
                with gr.Row():
                    with gr.Column(scale=3):
                        detail_card = gr.Markdown(elem_id="run-details")
                        detail_json = gr.JSON(label="full configuration")
                    with gr.Column(scale=2):
                        detail_gallery = gr.Gallery(label="Images", format="png", columns=4, height=320,
                                                    object_fit="contain", fit_columns=False)

        if read_only:  # every Generate and Sweep control is shown as it would be, greyed out
            for comp in [*gen_inputs, *axis_rows, sweep_name, question, rerun]:
                comp.interactive = False

        # ==================================================================== event wiring
        n_settings, n_gen = len(settings), len(gen_inputs)

        def build_spec(*values):
            studio.refuse_in_demo()
            try:
                return studio.check_spec(studio.spec_from(widgets.split_values(values, settings, knob_names)))
            except SpecError as exc:
                raise studio.error(exc) from None

        def build_sweep(*values):
            studio.refuse_in_demo()
            parts = widgets.split_values(values[:n_gen], settings, knob_names)
            xa, xv, ya, yv, za, zv, name, q = values[n_gen:]
            try:
                sweep = studio.sweep_dict(parts, [(xa, xv), (ya, yv), (za, zv)], name, q)
                return sweep, studio.estimate(sweep)
            except Exception as exc:
                raise studio.error(exc) from None

        def estimate(*values):
            try:
                return build_sweep(*values)[1]
            except gr.Error as exc:
                return f"**Cannot run this grid yet:** {exc.message}"

        def model_changed(m):
            return studio.model_changed(m, settings, extra_knobs)

        # Generate: check the spec at once (outside the device queue), then measure it. No gradio limit:
        # the handler admits or refuses at once, and the device lock puts admitted runs in line.
        if not read_only:
            model_box.change(model_changed, model_box, [*setting_boxes[:n_settings], model_text, *enables],
                             api_visibility="private", trigger_mode="always_last")
        generate_btn.click(build_spec, gen_inputs, spec_json, api_name="build_spec").success(
            studio.generate, spec_json, [gallery, card], api_name="generate", concurrency_id="gpu",
            concurrency_limit=None)

        # Sweep: number of runs and estimate before starting; grid after every run; Cancel between runs
        sweep_inputs = gen_inputs + axis_rows + [sweep_name, question]
        if not read_only:
            for comp in axis_rows:
                comp.change(estimate, sweep_inputs, estimate_md, api_visibility="private",
                            trigger_mode="always_last", show_progress="hidden")
            for a, v in zip(axis_rows[::2], axis_rows[1::2]):
                a.change(lambda axis: gr.update(info=widgets.axis_hint(axis) if axis != NO_AXIS else ""), a, v,
                         api_visibility="private", show_progress="hidden")
            sweep_tab.select(estimate, sweep_inputs, estimate_md, api_visibility="private", show_progress="hidden")
        start_btn.click(build_sweep, sweep_inputs, [sweep_json, estimate_md], api_name="build_sweep").success(
            studio.run_sweep, [sweep_json, rerun], [grid_html, sweep_status], api_name="sweep",
            concurrency_id="gpu", concurrency_limit=None)
        cancel_btn.click(studio.cancel, None, sweep_status, api_name="cancel_sweep", concurrency_limit=None)
        # any recorded sweep's grid, without running anything (ids come raw: parse_id checks them)
        sweep_pick.change(studio.sweep_grid, sweep_pick, grid_html, api_name="sweep_grid", preprocess=False)

        # Frontier: redraw on any control, and when the store changes (polled; also during a sweep)
        f_inputs = [quality, cost, color, symbol, f_model, f_set, f_sweep, selection, log_x]

        def refresh_filters():
            models_, sets_, sweeps_, _runs = studio.filter_choices()
            return (gr.update(choices=models_), gr.update(choices=sets_), gr.update(choices=sweeps_),
                    gr.update(choices=sweeps_), gr.update(choices=models_),
                    gr.update(choices=data.sweep_choices(store)), data.store_version(store))

        def newest_sweep(current):
            """A demo opens the Sweep tab on its newest sweep's grid."""
            choices = data.sweep_choices(store)
            return gr.update(choices=choices, value=current or (choices[0][1] if choices else None))

        def run_choices():
            return gr.update(choices=studio.filter_choices()[3])

        # the timer never writes the run pickers: an update racing a click could undo it. They refresh
        # their choices when focused, and a click sets choices and value together.
        filter_outputs = [f_model, f_set, f_sweep, r_sweep, r_model, sweep_pick, version]

        def tick(ver, *f_values):
            if data.store_version(store) == ver:
                return [gr.skip()] * (len(filter_outputs) + 1)
            return [studio.frontier(*f_values), *refresh_filters()]

        for comp in f_inputs:
            comp.change(studio.frontier, f_inputs, plot, api_visibility="private", show_progress="hidden")
        timer.tick(tick, [version, *f_inputs], [plot, *filter_outputs], api_visibility="private",
                   show_progress="hidden", concurrency_limit=None)
        for picker in (selection, compare_ids):
            picker.focus(run_choices, None, picker, api_visibility="private", show_progress="hidden")
        click_box.change(studio.clicked, [click_box, selection], [thumb, thumb_md, selection],
                         api_visibility="private")
        to_compare.click(lambda ids: (gr.update(choices=studio.filter_choices()[3], value=ids),
                                      gr.Tabs(selected="compare")),
                         selection, [compare_ids, tabs], api_visibility="private").then(
            studio.compare, compare_ids, [compare_view, settings_df, deltas_df], api_visibility="private")
        gr.Button(visible=False).click(studio.frontier, f_inputs, plot, api_name="plot_frontier")

        # Compare
        compare_btn.click(studio.compare, compare_ids, [compare_view, settings_df, deltas_df], api_name="compare_runs",
                          preprocess=False)

        # Runs: table and CSV follow the filters; a row click shows that run
        r_inputs = [r_status, r_sweep, r_model]
        for comp in r_inputs:
            comp.change(studio.runs_table, r_inputs, [table, download], api_visibility="private")
        refresh_btn.click(studio.runs_table, r_inputs, [table, download], api_name="runs")
        runs_tab.select(studio.runs_table, r_inputs, [table, download], api_visibility="private")
        gr.Button(visible=False).click(studio.export_csv, r_inputs, gr.File(visible=False), api_name="export_csv")
        table.select(studio.selected_row, None, run_id, api_visibility="private").then(
            studio.details, run_id, [detail_card, detail_gallery, detail_json], api_visibility="private")
        show_btn.click(studio.details, run_id, [detail_card, detail_gallery, detail_json], api_name="run_details",
                       preprocess=False)
        run_id.submit(studio.details, run_id, [detail_card, detail_gallery, detail_json], api_visibility="private",
                      preprocess=False)

        # on load: model line, filters, the frontier, the runs table, and the plotly click hook
        if not read_only:
            demo.load(model_changed, model_box, [*setting_boxes[:n_settings], model_text, *enables],
                      api_visibility="private")
        else:
            demo.load(newest_sweep, sweep_pick, sweep_pick, api_visibility="private")
        demo.load(refresh_filters, None, filter_outputs, api_visibility="private").then(
            run_choices, None, selection, api_visibility="private").then(
            run_choices, None, compare_ids, api_visibility="private").then(
            studio.frontier, f_inputs, plot, api_visibility="private").then(
            studio.runs_table, r_inputs, [table, download], api_visibility="private")
        demo.load(None, None, None, js=FRONTIER_CLICK_JS, api_visibility="private")

    demo.studio = studio  # for tests and scripts: the engine and store behind this page
    demo.queue(max_size=queue_size, default_concurrency_limit=4)
    return demo
