"""The page's handlers: widget values -> a run spec or sweep dict -> one call to the study service -> what
the page shows (figures from ``app.plots``, text from ``app.cards``, tables from ``app.tables``).

``Studio`` holds one ``StudyService`` per app, shared by every browser session. Errors meant for the
user (a bad value, a missing run, a full line) become ``gr.Error`` with the reason, never a
traceback. Ids typed into the page or sent to the API are checked by ``parse_id``: anything but a
whole number in SQLite's range gets a message. In a read-only demo every handler that would run or
write answers with the demo's banner.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import weakref
from contextlib import closing
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app import cards, compare, grid, pictures, plots, tables, widgets
from app.clients import client_watch
from app.kept_runs import KeptRuns, select
from studio_core.errors import ModelLoadError, RunCancelled, SpecError, StoreError, StudioBusy, SweepBusy
from studio_core.knobs.sampler import samplers_for
from studio_core.spec import RunSpec, defaults_text, excerpt, model_info, resolve
from studio_core.study import labels
from studio_core.study.estimate import format_duration
from studio_core.study.service import StudyService
from studio_core.study.sweep import preset_yaml

__all__ = ["DEMO_MESSAGE", "MAX_ID", "NO_AXIS", "Studio", "parse_id", "parse_workers"]

log = logging.getLogger(__name__)

USER_ERRORS = (SpecError, ModelLoadError, StoreError, SweepBusy)
NO_AXIS = "(none)"
MAX_ID = 2**63 - 1  # SQLite's largest INTEGER
DEMO_MESSAGE = "Read-only demo of {study}: generation and sweeps are off"
CELL_IMAGE_PX = 512  # a clicked sweep cell's images are shown at least this large (nearest-neighbour)
THUMB_PX = grid.THUMB_SIZES[1]  # the sweep grid's thumbnails unless the page asks for another size
RUNS_PER_PAGE = 100  # rows of one page of the Runs table
RUN_CHOICES = 500  # the newest successful runs the run pickers offer (beside the runs they hold)
CSV_AT_ONCE = 20_000  # a Runs selection up to this many runs has its CSV written with the table (about a second)


def _user_error(exc: BaseException, hide: tuple[str, str] | None = None) -> gr.Error:
    """A readable message for the page: the reason, never a traceback. ``hide`` is (text, shown
    instead): a demo puts its study's folder name where the server path would be."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, StudioBusy):
        return gr.Error(str(exc), title="Studio busy", print_exception=False)
    if isinstance(exc, RunCancelled):
        return gr.Error(str(exc)[:1].upper() + str(exc)[1:], title="Cancelled", print_exception=False)
    known = isinstance(exc, USER_ERRORS)
    if not known:
        log.exception("unexpected error in the studio UI")
    text = str(exc) if known else f"{type(exc).__name__}: {exc}"
    if hide:
        text = text.replace(*hide)
    return gr.Error(text, title="Cannot run this" if known else "Something went wrong", print_exception=False)


def parse_workers(value: Any) -> dict | None:
    """The Sweep tab's *Workers* field as ``StudyService.run_sweep``'s ``workers``: blank is None (this process),
    ``ray:ADDRESS`` a Ray cluster (``auto``, ``local`` or an address), anything else a device list (``cuda:0,cuda:1``,
    checked by ``dispatch.parse_devices`` when the sweep starts). Not text: a ``gr.Error``."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 2000:
        raise gr.Error(f"workers {excerpt(value)!r}: blank, a device list such as cuda:0,cuda:1, or ray:ADDRESS",
                       print_exception=False)
    text = value.strip()
    if not text:
        return None
    if text.startswith("ray:"):
        return {"ray": text[4:].strip() or "auto"}
    return {"devices": text}


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


_KINDS = {"epsilon": "noise prediction", "v_prediction": "v-prediction", "flow": "flow matching",
          "consistency": "consistency-distilled", "sample": "sample prediction"}


def _stage_fraction(stage: str) -> float:
    """Rough position of an engine stage in a run, for the progress bar."""
    if stage.startswith("repeat"):
        try:
            i, n = (int(x) for x in stage.split()[1].split("/"))
            return 0.3 + 0.5 * (i - 1) / n
        except (IndexError, ValueError):
            return 0.5
    return {"loading": 0.05, "warm-up": 0.15, "scoring": 0.85}.get(stage, 0.0)


class Studio:
    """The handlers over one study service (and so one store and, unless it is a read-only demo, one
    engine), shared by every browser session."""

    def __init__(self, service: StudyService):
        self.service = service
        self.tmp = Path(tempfile.mkdtemp(prefix="studio-"))  # CSV exports; removed with the Studio or at exit
        weakref.finalize(self, shutil.rmtree, self.tmp, True)
        data_dir = service.store.data_dir
        # a demo names its study by folder; the server's path stays on the server
        self.where = data_dir.name if self.read_only else str(service.store.path)
        self.demo_message = DEMO_MESSAGE.format(study=data_dir.name)
        self._hide = (str(data_dir), data_dir.name) if self.read_only else None
        # what refreshes of a large study keep (see app.kept_runs): the successful runs read so far and what the
        # figure derived from each; the filter choices of the last study version; each CSV's study version
        self._ok_runs = KeptRuns(service.store, plots.FRONTIER_COLUMNS)
        self._memo, self._memo_generation = plots.RunMemo(), 0
        self._choices: tuple[tuple, tuple] | None = None
        self._csv_versions: dict[Path, tuple] = {}

    # what tests and scripts reach through the page: the study behind it
    store = property(lambda self: self.service.store)
    read_only = property(lambda self: self.service.read_only)
    reference = property(lambda self: self.service.reference)

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
                                  device=parts["device"], batch_size=parts["batch_size"],
                                  distribution=parts.get("distribution", 0))

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
        if info.unsupported:  # refused before any work: say why, leave the form as it is
            return ([gr.skip()] * len(settings) + [f"**Model:** {info.pipeline_class}: {info.unsupported}"]
                    + [gr.skip()] * len(knobs))
        d = info.defaults
        native = info.sample_size
        defaults = {"steps": d["num_inference_steps"], "guidance": d["guidance_scale"],
                    "height": d.get("height") or native, "width": d.get("width") or native}
        samplers = [("model default", "default"), *((widgets.choice_label(n), n) for n in samplers_for(info))]
        updates = []
        for s in settings:
            if s.builtin and s.name in defaults:
                updates.append(gr.update(value=defaults[s.name]))
            elif (s.knob, s.name) == ("sampler", "sampler"):  # only the samplers that serve this model
                updates.append(gr.update(choices=samplers, value="default"))
            else:
                updates.append(gr.skip())
        text = (f"**Model:** {info.pipeline_class} · own scheduler {info.scheduler_class} "
                f"({_KINDS.get(info.prediction_type, info.prediction_type)}) · "
                f"{defaults['height']}x{defaults['width']} px by default (multiples of {info.size_multiple}) · {defaults_text(info)} · {len(samplers) - 1} samplers serve it")
        return updates + [text] + [widgets.knob_availability(knob, info) for knob in knobs]

    def generate(self, spec: dict, baseline: Any = None, request: gr.Request = None, progress=gr.Progress()):
        """Run one spec; the images (pixel-upscaled), the metrics card (against the pinned ``baseline`` run,
        if any) and the run's id (kept by the page to redraw the card when the baseline changes). Waits in
        line for the device (saying behind what), or is refused at once when the line is full. It follows its
        client: gone (or Cancel pressed), it leaves the line, or stops after the denoiser step in progress and
        is recorded ``cancelled``."""
        self.refuse_in_demo()
        if not isinstance(spec, dict):
            raise gr.Error("no run spec: press Generate", print_exception=False)
        progress(0.0, desc="waiting for the device")
        try:
            row = self.service.run(
                spec, on_stage=lambda stage: progress(_stage_fraction(stage), desc=stage),
                waiting=lambda holder: progress(0.0, desc=f"waiting for the device: {holder} is running"),
                stop=client_watch(), session=getattr(request, "session_hash", None))
        except Exception as exc:
            raise self.error(exc) from None
        if row["status"] == "cancelled":
            raise gr.Error(f"run {row['id']} was cancelled: {row.get('error')}", title="Cancelled",
                           print_exception=False)
        if row["status"] != "ok":
            raise gr.Error(f"run {row['id']} failed: {row.get('error')}", title="Run failed", print_exception=False)
        return self.gallery(row), self.generate_card(row, baseline), row["id"]

    def generate_card(self, row: dict, baseline: Any = None) -> str:
        """The Generate tab's card of a run: its images beside the reference's, and the change against the
        pinned baseline run (or how to pin one; a baseline run gone from the study is said so)."""
        bid = parse_id(baseline)
        base, gone = None, ""
        if bid is not None:
            try:
                base = self.store.get_run(bid)
            except StoreError:
                gone = f"\n\n*The pinned baseline, run {bid}, is not in {self.where}.*"
        n = cards.REFERENCE_PAIRS
        images = self.store.load_images(row["images"][:n]) if row.get("images") else None
        return cards.metrics_card(row, self.store.reference_config(row.get("reference_id")), baseline=base,
                                  baseline_hint=True, images=images,
                                  reference_images=self.store.reference_images(row.get("reference_id"), n)) + gone

    def shown_card(self, run_id: Any, baseline: Any = None) -> str:
        """The card of the run the Generate tab shows, redrawn against a newly pinned baseline."""
        rid = parse_id(run_id)
        if rid is None:
            return cards.EMPTY_CARD
        try:
            return self.generate_card(self.store.get_run(rid), baseline)
        except StoreError as exc:
            raise self.error(exc) from None

    def gallery(self, row: dict, limit: int = 64) -> list[tuple]:
        pairs = tables.image_pairs(row)
        images = self.store.load_images(row["images"][:limit]) if row.get("images") else []
        return [(pictures.pixel_upscale(im, 256), f"{p} · seed {s}") for im, (p, s) in zip(images, pairs)]

    # ------------------------------------------------------------------ Sweep
    def sweep_dict(self, parts: dict, axes: list[tuple[str, str]], name: str, question: str) -> dict:
        axes = [(a if a and a != NO_AXIS else None, v) for a, v in axes]
        forced = {a.split(".")[1] for a, _ in axes if a and a.startswith("knobs.")}
        base = self.spec_from(parts, forced)
        return widgets.build_sweep(base, axes, name=name, question=question, reference=self.reference)

    def estimate(self, sweep: dict) -> str:
        """How many runs and how long, before anything starts (``SpecError`` for a bad cell)."""
        e = self.service.estimate(sweep)
        when = (f"estimated **{format_duration(e.seconds)}**" if e.seconds is not None
                else "time **unknown until the first run** of this model")
        again = (f" A sweep with these configurations already finished (sweep {e.finished_sweep}): tick "
                 "*run again* to repeat it, or start to show its grid.") if e.finished_sweep is not None else ""
        n_img = e.images_per_run
        basis = f"\n\n<small>{e.basis}</small>" if e.seconds is not None else ""  # else the line says it all
        return (f"**{e.runs} runs** ({e.shape}), {n_img} image{'s' if n_img != 1 else ''} x {e.passes_per_run} "
                f"passes each; {when}.{again}{basis}")

    def sweep_preview(self, parts: dict, axes: list[tuple[str, str]], name: str, question: str) -> tuple[str, str]:
        """The estimate and the preset YAML of the sweep the Sweep tab describes right now, or why it cannot
        run yet (the YAML stays when only a cell fails to resolve). Never raises: the page calls it on
        every change of an input, so a corrected value clears the message at once."""
        try:
            sweep = self.sweep_dict(parts, axes, name, question)
        except Exception as exc:
            return self._cannot(exc), ""
        text = preset_yaml(sweep)
        try:
            return self.estimate(sweep), text
        except Exception as exc:
            return self._cannot(exc), text

    def _cannot(self, exc: BaseException) -> str:
        """Why a sweep cannot run yet, naming an axis as people do ("DeepCache: interval = 'x'")."""
        if isinstance(exc, SpecError):
            what = labels.axis_label(exc.field.removeprefix("grid."))
            text = f"{what} = {exc.value!r} is not allowed: {exc.allowed}"
        else:
            text = self.error(exc).message
        return f"**Cannot run this grid yet:** {text}"

    def cancel(self, request: gr.Request):
        self.refuse_in_demo()
        self.service.cancel(getattr(request, "session_hash", None))
        return "Cancelling: the sweep stops after the run in progress (runs are never cut in half)."

    def cancel_generation(self, request: gr.Request):
        """Stop this session's generation: out of the line if it waits, after the denoiser step in progress if
        it runs (its row is then ``cancelled``)."""
        self.refuse_in_demo()
        self.service.cancel_generation(getattr(request, "session_hash", None))
        return "Cancelling the generation: it stops after the denoiser step in progress."

    def run_sweep(self, sweep: dict, rerun: bool, request: gr.Request, size: Any = THUMB_PX, workers: Any = "",
                  progress=gr.Progress()):
        """Run (or resume) a sweep, updating the grid (``size`` px thumbnails) after every run; Cancel stops
        between runs. Like a generation, it waits in line for the device or is refused when the line is
        full. ``workers`` spreads its cells (``parse_workers``). Yields (grid, status, the shown sweep's id)."""
        self.refuse_in_demo()
        px = self._thumb_size(size)
        spread = parse_workers(workers)
        try:
            s = self.service.sweep(sweep, to_run=True)  # a full line is refused before the grid is expanded
        except Exception as exc:
            raise self.error(exc) from None
        progress((0, len(s)), desc=f"{s.name}: starting", unit="runs")
        shown = None
        events = self.service.sweep_events(s, new=bool(rerun), session=getattr(request, "session_hash", None),
                                           client=client_watch(), workers=spread)
        try:
            with closing(events):  # the page went away: the service stops the sweep between runs
                for event in events:
                    if event.kind == "wait":
                        text = f"waiting for the device: {event.holder} is running"
                        progress((0, event.total), desc=f"{s.name}: {text}", unit="runs")
                        if text != shown:
                            shown = text
                            yield gr.skip(), f"**Waiting** for the device: {event.holder} is running.", gr.skip()
                    elif event.kind == "run":
                        status = f"run {event.done} of {event.total} done ({event.row.get('status')})"
                        progress((event.done, event.total), desc=f"{s.name}: {status}", unit="runs")
                        sid = event.row.get("sweep_id")
                        yield self.grid(sid, px), f"**Running** {s.name}: {status}.", sid
                    elif event.kind == "stopped":
                        yield gr.skip(), f"**Cancelled** {s.name} before it started: nothing ran.", gr.skip()
                    else:
                        sid = event.result["sweep_id"]
                        yield self.grid(sid, px), self._finished(s.name, event.result), sid
        except Exception as exc:  # refused (the line is full), or an error that stopped the sweep
            raise self.error(exc) from None

    @staticmethod
    def _finished(name: str, res: dict) -> str:
        text = {"done": "finished", "cancelled": "cancelled"}.get(res["status"], res["status"])
        msg = (f"**Sweep {res['sweep_id']} {text}**: {res['ran']} runs now, {res['skipped']} already done "
               "(kept from an earlier start).")
        return msg + (f" {res['note']}" if res.get("note") else "")

    @staticmethod
    def _thumb_size(size: Any) -> int:
        """A thumbnail size from the page or an API caller: one of ``grid.THUMB_SIZES`` (blank: ``THUMB_PX``)."""
        if size is None or size == "":
            return THUMB_PX
        if str(size).strip() not in {str(n) for n in grid.THUMB_SIZES}:
            raise gr.Error(f"thumbnail size {str(size)[:20]!r}: one of {', '.join(map(str, grid.THUMB_SIZES))} px",
                           print_exception=False)
        return int(str(size).strip())

    def grid(self, sweep_id: int | None, size: int = THUMB_PX) -> str:
        """The annotated grid of a sweep in the store (running or finished), from its recorded axes."""
        if sweep_id is None:
            return ""
        g = self.service.sweep_grid(sweep_id)
        if not g.axes:
            return f"<p>Sweep {sweep_id} has no recorded axes to lay out a grid.</p>"
        title = f"Sweep {sweep_id}: {g.sweep['name']} ({g.sweep['status']})"
        if not g.parts:
            return grid.sweep_grid_html(g.axes, g.runs_by_index, self.store.load_images, image_size=size, title=title)
        return grid.sweep_parts_html(g.parts, g.runs_by_index, self.store.load_images, image_size=size, title=title)

    def sweep_grid(self, sweep_id: Any, size: Any = THUMB_PX) -> str:
        """The grid of a sweep picked by id with ``size`` px thumbnails: a read."""
        sid = parse_id(sweep_id, "sweep")
        px = self._thumb_size(size)
        if sid is None:
            return "<p>Pick a sweep to see its grid.</p>"
        try:
            return self.grid(sid, px)
        except StoreError as exc:
            raise self.error(exc) from None

    def picked_grid(self, sweep_id: Any, size: Any = THUMB_PX) -> tuple[str, int | None]:
        """The Sweep tab's picker (``/sweep_grid``): that sweep's grid, and its id (kept by the page, so the
        grid can be drawn again at another thumbnail size)."""
        return self.sweep_grid(sweep_id, size), parse_id(sweep_id, "sweep")

    def cell_images(self, token: str):
        """A clicked grid cell (``"<run id>@<time>"`` from the page hook): its images at full size (small
        ones upscaled nearest-neighbour, so pixels stay sharp), labelled with the run's configuration."""
        try:
            row = self.store.get_run(parse_id(str(token).split("@")[0]))
        except (gr.Error, StoreError):
            return gr.skip()
        images = self.store.load_images(row["images"]) if row.get("images") else []
        items = [(pictures.pixel_upscale(im, CELL_IMAGE_PX), f"{p} · seed {s}")
                 for im, (p, s) in zip(images, tables.image_pairs(row))]
        steps = f" · {int(row['steps'])} steps" if labels.num(row.get("steps")) is not None else ""
        return gr.update(value=items, label=f"Run {int(row['id'])}: {labels.configuration(row)}{steps}, full size",
                         visible=True)

    def sweep_choices(self) -> list[tuple[str, int]]:
        return tables.sweep_choices(self.store.sweeps())

    # ------------------------------------------------------------------ Frontier
    def study_version(self) -> tuple:
        """Changes whenever a run or a sweep starts or ends: the cue to redraw the plot and refresh the filters (a
        sweep's row is written before its first run and finished after its last). Read off indexes: cheap enough
        for a timer on a study of 100k runs."""
        return self.store.runs_version(), tuple(self.store.sweep_statuses())

    def ok_runs(self) -> pd.DataFrame:
        """Every successful run (the columns the figure reads), up to date: read whole once, then only the runs new
        or finished since (``KeptRuns``); what the figure derived from the old rows is dropped when they are read
        again from scratch."""
        frame = self._ok_runs.frame()
        if self._ok_runs.generation != self._memo_generation:
            self._memo.clear()
            self._memo_generation = self._ok_runs.generation
        return frame

    def frontier(self, quality: str, cost: str, color: str, symbol: str, model: str, prompt_set: str,
                 sweep_id: Any, selected: list | None, log_x: bool = False, spread: bool = False):
        """The frontier of the successful runs the filters pick; ``spread`` draws latency quartile bars."""
        matching = self._filters("ok", sweep_id, model, prompt_set)
        frame = select(self.ok_runs(), {k: v for k, v in matching.items() if k != "status"})
        sel = [i for i in (parse_id(v) for v in (selected or [])) if i is not None]
        return plots.make_frontier_plot(frame, quality, cost, None if color == NO_AXIS else color,
                                        None if symbol == NO_AXIS else symbol, sel, log_x=bool(log_x),
                                        spread=bool(spread), memo=self._memo)

    def filter_choices(self):
        """Current choices of the model / prompt set / sweep / run filters: the models and prompt sets every run
        has (distinct values off their indexes), the sweeps, and the newest ``RUN_CHOICES`` successful runs. Kept
        until the study changes (``study_version``), so the timer's refresh costs nothing while it does not."""
        version = self.study_version()
        kept = self._choices
        if kept is not None and kept[0] == version:
            return kept[1]
        store = self.store
        newest, _total = store.runs_page(matching={"status": "ok"}, columns=tables.LABEL_READS, per_page=RUN_CHOICES)
        choices = tables.choices_from(store.distinct_values("model"), store.distinct_values("prompt_set"),
                                      store.sweeps(), newest.iloc[::-1])
        self._choices = (version, choices)
        return choices

    def run_choices(self, keep: Any = None) -> list[tuple[str, int]]:
        """The run pickers' choices: the newest ``RUN_CHOICES`` successful runs, and the runs a picker holds now
        (``keep``: an id or a list of them) wherever they are in the study, so its value stays one of its choices."""
        choices = self.filter_choices()[3]
        have = {i for _, i in choices}
        held = keep if isinstance(keep, (list, tuple)) else [keep]
        extra = []
        for value in held:
            try:
                rid = parse_id(value)
            except gr.Error:
                continue
            if rid is not None and rid not in have:
                extra.append(self.store.runs_frame(matching={"id": rid}, columns=tables.LABEL_READS))
                have.add(rid)
        if not extra:
            return choices
        return tables.run_choices(pd.concat(extra, ignore_index=True).sort_values("id")) + choices

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
                gr.update(choices=self.run_choices(sel), value=sel))

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
        if len(parsed) < 2:  # a sentence; the page hides the tables (compare_tables)
            return compare.compare_html([], {}), pd.DataFrame(columns=["setting"]), pd.DataFrame(columns=["metric"])
        try:
            rows = [self.store.get_run(i) for i in parsed]
            images = {int(r["id"]): self.store.load_images(r["images"]) for r in rows if r.get("images")}
        except StoreError as exc:
            raise self.error(exc) from None
        settings = tables.differing_settings(rows)
        if settings.empty:  # the same configuration run twice: say so rather than show a table of nothing
            settings = pd.DataFrame([{"setting": "(every setting)", **{c: "the same" for c in settings.columns[1:]}}])
        return compare.compare_html(rows, images), settings, tables.metric_deltas(rows)

    @staticmethod
    def compare_tables(ids: Any):
        """Show the two Compare tables once two to four runs are picked, at the tab's width with one equal
        column per run (text wraps inside its cell, never a header cut as "ru / n / 9"); hide them
        otherwise, where an empty table would show placeholder headers."""
        n = len(ids) if isinstance(ids, (list, tuple)) else 0
        if not 2 <= n <= 4:
            return gr.update(visible=False), gr.update(visible=False)
        shown = gr.update(visible=True, column_widths=["20%", *[f"{80 // n}%"] * n])
        return shown, shown

    # ------------------------------------------------------------------ Runs
    def _filters(self, status: Any, sweep_id: Any, model: Any, prompt_set: Any = None) -> dict:
        """The Runs and Frontier filters as ``runs_frame`` values. Their dropdowns take any value (the choices
        arrive after the page loads, and API callers send real ids and names), so each is checked here: a sweep
        by ``parse_id`` and the store, a model or prompt set by the runs that have it; else a ``gr.Error``."""
        sid = None if sweep_id in (None, "", tables.ALL) else parse_id(sweep_id, "sweep")
        if sid is not None:
            try:
                self.store.get_sweep(sid)
            except StoreError:
                raise gr.Error(f"sweep {sid} does not exist in this study", title="No such sweep",
                               print_exception=False) from None
        for value, what in ((model, "model"), (prompt_set, "prompt set")):
            if value is not None and not isinstance(value, str):
                raise gr.Error(f"{excerpt(value)!r} is not a {what}: give its name as text, or {tables.ALL!r}",
                               print_exception=False)
        matching = tables.run_filters(status, sid, model, prompt_set)
        for column, what in (("model", "model"), ("prompt_set", "prompt set")):
            value = matching.get(column)
            if value is not None and not self.store.has_run({column: value}):
                raise gr.Error(f"no run of {what} {excerpt(value)!r} in this study (pick one from the list, or "
                               f"{tables.ALL!r})", title=f"No such {what}", print_exception=False)
        return matching

    @staticmethod
    def page_number(page: Any) -> int:
        """A page number from the page or an API caller: blank is the first page; anything but a whole number
        from 1 is a ``gr.Error``."""
        return parse_id(page, "page") or 1

    def runs_page(self, status: str, sweep_id: Any, model: str, page: Any = 1):
        """The Runs tab: page ``page`` of the filtered runs, newest first, ``RUNS_PER_PAGE`` a page (a page past
        the last shows the last); the line that says where it lies ("runs 101–200 of 92,052 · page 2 of 921");
        and the page shown."""
        matching = self._filters(status, sweep_id, model)
        number = self.page_number(page)
        frame, total = self.store.runs_page(matching=matching, columns=tables.TABLE_READS, page=number,
                                            per_page=RUNS_PER_PAGE)
        last = max(1, -(-total // RUNS_PER_PAGE))
        if number > last:
            number = last
            frame, total = self.store.runs_page(matching=matching, columns=tables.TABLE_READS, page=number,
                                                per_page=RUNS_PER_PAGE)
        return tables.table_view(frame, newest_first=True), tables.page_text(number, RUNS_PER_PAGE, total), number

    def runs_view(self, status: str, sweep_id: Any, model: str, page: Any = 1):
        """The Runs tab when its filters change, Refresh is pressed or the tab is shown: ``runs_page`` and the
        Download button (``runs_csv``), in one answer, so a CSV on the button is always the one of the table shown."""
        return (*self.runs_page(status, sweep_id, model, page), self.runs_csv(status, sweep_id, model))

    def runs_table(self, status: str, sweep_id: Any, model: str, page: Any = 1):
        """The ``/runs`` API: a page of the Runs table (the first unless ``page`` says) and the CSV of every
        filtered run."""
        table, _line, _number = self.runs_page(status, sweep_id, model, page)
        return table, self._csv(self._filters(status, sweep_id, model))

    def runs_csv(self, status: str, sweep_id: Any, model: str):
        """The Download button for the filtered runs: their CSV, written now when there are at most ``CSV_AT_ONCE``
        of them (under a second); past that, an empty button that writes it when pressed (``prepare_csv``), so
        the table of a large study never waits for a CSV nobody asked for."""
        matching = self._filters(status, sweep_id, model)
        total = self.store.run_count(matching)
        if total > CSV_AT_ONCE:
            return gr.update(value=None, label=f"Prepare CSV of {total:,} runs")
        return gr.update(value=self._csv(matching), label="Download CSV")

    def prepare_csv(self, status: str, sweep_id: Any, model: str, ready: Any = None):
        """A press of the Download button: when it holds no file yet (a large selection), write the CSV and put it
        there, ready for the next press; when it holds one, the browser downloads that and nothing is written."""
        if ready:
            return gr.skip()
        return gr.update(value=self.export_csv(status, sweep_id, model), label="Download CSV (ready)")

    def export_csv(self, status: str, sweep_id: Any, model: str) -> str:
        """Every column of the filtered runs as CSV in a temp folder; returns its path."""
        return self._csv(self._filters(status, sweep_id, model))

    def _csv(self, matching: dict) -> str:
        """The CSV of the runs ``matching`` selects, streamed from the store; written again only when the study
        changed since the last one for these filters."""
        tag = hashlib.sha256(repr(sorted(matching.items())).encode()).hexdigest()[:8]
        path = self.tmp / f"studio-runs-{tag}.csv"
        version = self.store.runs_version()
        if self._csv_versions.get(path) != version or not path.is_file():
            self.store.export_csv(path, matching=matching)
            self._csv_versions[path] = version
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
        card = cards.metrics_card(row, self.store.reference_config(row.get("reference_id")))
        config = row.get("config_json") or {}
        return card, (self.gallery(row) if row.get("images") else []), config

    def selected_row(self, evt: gr.SelectData):
        row = evt.row_value or []
        return int(row[0]) if row else gr.skip()
