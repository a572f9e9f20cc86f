"""The one way the page and the command line reach the engine: ``StudyService`` over one study.

It holds the store, the engine (made on first use: importing this module, or building the page,
never imports torch), and the ``DeviceQueue`` every generation and sweep passes:

* **Admission**: at most ``limit`` generations and sweeps are admitted at a time (one on the device,
  the rest waiting in line); one more is refused at once with ``StudioBusy`` (``BUSY_MESSAGE``)
  rather than left to hang. Only work whose client is still there counts: an admitted request whose
  ``stop`` gives a reason (its client went away) leaves the line within half a second, and does not
  hold a place meanwhile.
* **The device**: admitted work takes the device lock, so a measurement is never timed beside
  another; those waiting are told, every half second, what holds it.
* **Following the client**: a generation stops when its ``stop`` gives a reason (the page closed, the
  request was abandoned) or its session presses Cancel (``cancel_generation``): while it waits it
  leaves the line and nothing is recorded; while it runs it stops after the denoiser step in progress
  and its row is ``cancelled`` with the reason. ``stop_all`` does both for every request (the server
  is stopping).

``run`` measures one spec in the calling thread and returns its store row. ``run_sweep`` runs (or
resumes) a sweep in the calling thread (the CLI: Ctrl-C stops it there); ``sweep_events`` runs it in
a worker thread and yields ``SweepEvent``s (waiting, one per finished run, the end) for a page to
show, stopping between runs when ``cancel`` is called for its session or the consumer goes away.
Reads that need more than one store call (a sweep's grid, an estimate) are here too; single reads
go to ``service.store``.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from studio_core.errors import DeviceWaitStopped, RunCancelled, StoreReadOnly, StudioBusy
from studio_core.models import resolve_model
from studio_core.spec import REFERENCE_DEFAULT
from studio_core.store.store import RunStore
from studio_core.study.dispatch import make_backend
from studio_core.study.estimate import HISTORY_COLUMNS, SweepEstimate, estimate_sweep
from studio_core.study.sweep import Sweep, grid_size, run_sweep, sweep_from_dict

if TYPE_CHECKING:  # the engine imports torch: it is imported when the first run needs it
    from studio_core.measure.engine import Engine

__all__ = ["BUSY_MESSAGE", "DeviceQueue", "StudyService", "SweepEvent", "SweepGrid"]

Stop = Callable[[], "str | None"]  # why to stop now (the client went away, Cancel), or None to go on

BUSY_MESSAGE = ("The studio is busy: {n} generations or sweeps are already running or waiting for the device "
                "(limit {limit}). Try again in a minute; frontier, compare and runs still work.")


class DeviceQueue:
    """Generations and sweeps in line for the device: at most ``limit`` admitted (one running, the rest
    waiting); one more is refused at once with ``StudioBusy`` rather than left to hang."""

    def __init__(self, limit: int = 4):
        if limit < 1:
            raise ValueError(f"max_waiting={limit}: at least 1 (the run on the device counts)")
        self.limit = limit
        self.holder = ""  # what is on the device now, for the progress text of those waiting
        self._count = threading.Lock()
        self._device = threading.Lock()
        self._admitted: dict[int, Stop | None] = {}  # one entry per admitted request: its stop, if it has one
        self._tokens = 0

    @property
    def admitted(self) -> int:
        """Requests admitted now (running or waiting), including any whose client has just gone."""
        return len(self._admitted)

    def present(self) -> int:
        """Admitted requests whose client is still there (a gone one is leaving within half a second)."""
        with self._count:
            stops = list(self._admitted.values())
        return sum(1 for stop in stops if stop is None or not stop())

    def full(self) -> bool:
        return self.present() >= self.limit

    @contextmanager
    def admit(self, stop: Stop | None = None) -> Iterator[None]:
        """A place in line, or ``StudioBusy`` at once when ``limit`` requests with their clients still there
        hold one. ``stop`` tells whether this request's client is gone (it then stops counting)."""
        n = self.present()
        with self._count:
            if n >= self.limit:
                raise StudioBusy(BUSY_MESSAGE.format(n=n, limit=self.limit))
            self._tokens += 1
            token = self._tokens
            self._admitted[token] = stop
        try:
            yield
        finally:
            with self._count:
                del self._admitted[token]

    @contextmanager
    def hold(self, what: str, waiting: Callable[[str], None] | None = None,
             stop: Callable[[], object] | None = None) -> Iterator["DeviceQueue"]:
        """The device for ``what``; while another run has it, ``waiting(holder)`` every half second.
        ``stop`` returning something true while waiting gives up (``DeviceWaitStopped`` with it)."""
        while not self._device.acquire(timeout=0.5):
            if stop is not None and (why := stop()):
                raise DeviceWaitStopped(why if isinstance(why, str) else what)
            if waiting is not None:
                waiting(self.holder or "another run")
        self.holder = what
        try:
            yield self
        finally:
            self.holder = ""
            self._device.release()


@dataclass(frozen=True)
class SweepEvent:
    """One step of a sweep as a page shows it: ``wait`` (``holder`` has the device), ``run`` (run ``done``
    of ``total`` finished, its ``row``), ``stopped`` (cancelled before it started) or ``finished``
    (``result`` as ``run_sweep`` returns it)."""

    kind: str
    done: int = 0
    total: int = 0
    holder: str = ""
    row: dict | None = None
    result: dict | None = None


@dataclass(frozen=True)
class SweepGrid:
    """What a sweep's grid is drawn from: the sweep's row, its recorded axes, and the latest run of each
    grid cell (a finished run replaces an earlier interrupted one). A list grid (``sweep.Sweep.parts``) is drawn
    part by part: ``parts`` holds each one's axes, and its cells' indices follow the parts before it."""

    sweep: dict
    axes: list[tuple[str, tuple]]
    runs_by_index: dict[int, dict]
    parts: tuple[list[tuple[str, tuple]], ...] = ()


def _describe(spec: dict) -> str:
    """A generation in a few words, for the progress text of runs waiting behind it."""
    n = len(spec.get("prompts") or []) * len(spec.get("seeds") or [0])
    what = [f"{n} image{'s' if n != 1 else ''}" if n else f"prompt set {spec.get('prompt_set')}"]
    if spec.get("steps"):
        what.append(f"{spec['steps']} steps")
    return f"a generation ({', '.join(what)})"


class StudyService:
    """One study's store, its engine (unless read-only) and its device queue, shared by every caller.

    ``reference`` overrides the reference solver for every run and sweep (tests use a cheap one).
    """

    def __init__(self, store: RunStore, *, reference: dict | None = None, max_waiting: int = 4):
        self.store = store
        self.reference = reference
        self.device = DeviceQueue(max_waiting)
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self._cancels: dict[str, threading.Event] = {}  # per session: Cancel pressed for its generation
        self._stopping: str | None = None  # set by stop_all: every request stops with this reason
        store.mark_interrupted()  # runs a killed process left "running" (a read-only store marks none)
        store.mark_sweeps_interrupted()  # and sweeps: "interrupted" until started again, which resumes them

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    @property
    def engine(self) -> Engine | None:
        """The engine, made on first use (this is where torch is imported); None for a read-only study."""
        if self.read_only:
            return None
        with self._engine_lock:
            if self._engine is None:
                from studio_core.measure.engine import Engine

                self._engine = Engine(self.store)
            return self._engine

    def _refuse_if_read_only(self, what: str) -> None:
        if self.read_only:
            raise StoreReadOnly(f"the study at {self.store.data_dir} is open read-only (demo mode): {what} is "
                                "refused")

    # ------------------------------------------------------------------ generations
    def run(self, spec: dict, *, on_stage: Callable[[str], None] | None = None,
            waiting: Callable[[str], None] | None = None, stop: Stop | None = None,
            session: str | None = None) -> dict:
        """Measure one spec and return its store row (``status`` "ok", "failed" or "cancelled"). Admitted or
        refused at once (``StudioBusy``), then waits for the device, calling ``waiting(holder)`` meanwhile.
        A spec that does not resolve raises ``SpecError`` and records nothing.

        ``stop`` says why to stop (e.g. the client went away); ``session``'s Cancel (``cancel_generation``)
        and ``stop_all`` stop it too. Stopped while waiting: ``RunCancelled``, nothing recorded; while running:
        the row is ``cancelled`` after the denoiser step in progress."""
        self._refuse_if_read_only("a generation")
        cancel = self._cancels.setdefault(session or "default", threading.Event())
        cancel.clear()

        why = self._reason(cancel, "cancelled by the user (Cancel)", stop)
        try:
            with self.device.admit(why), self.device.hold(_describe(spec), waiting, stop=why):
                result = self.engine.run(spec, reference=self.reference, on_stage=on_stage, stop=why)
        except DeviceWaitStopped as exc:
            raise RunCancelled(f"{exc} before it started: nothing ran") from None
        return result.row

    def _reason(self, event: threading.Event, cancelled: str, client: Stop | None) -> Stop:
        """Why a request should stop now, or None: the server is stopping (``stop_all``), its session pressed
        Cancel (``event``: ``cancelled``), or its client gave a reason (gone)."""
        def why() -> str | None:
            if self._stopping:
                return self._stopping
            if event.is_set():
                return cancelled
            return client() if client is not None else None
        return why

    def cancel_generation(self, session: str | None = None) -> None:
        """Stop ``session``'s generation: out of the line if it waits, after the denoiser step in progress if
        it runs (recorded ``cancelled``)."""
        self._cancels.setdefault(session or "default", threading.Event()).set()

    def stop_all(self, reason: str) -> None:
        """Stop everything with ``reason`` (the server is stopping): generations after their denoiser step in
        progress (recorded ``cancelled``), sweeps between runs, and those waiting leave the line."""
        self._stopping = reason
        for event in list(self._stops.values()):
            event.set()

    # ------------------------------------------------------------------ sweeps
    def sweep(self, data: dict | Sweep, source: str = "ui", *, to_run: bool = False) -> Sweep:
        """A sweep dict expanded and checked (``SpecError`` naming the cell), or a ``Sweep`` as it is. ``to_run``
        (the caller runs it next): after the grid's size is checked, a full line is refused (``StudioBusy``)
        before any cell is made, so a busy studio spends nothing on a sweep it cannot admit."""
        if isinstance(data, Sweep):
            return data
        grid_size(data)
        if to_run and self.device.full():
            raise StudioBusy(BUSY_MESSAGE.format(n=self.device.present(), limit=self.device.limit))
        return sweep_from_dict(data, source)

    def _sweep_on_device(self, sweep: Sweep, new: bool, progress: bool | Callable,
                         stop: Callable[[], bool] | None, waiting: Callable[[str], None] | None,
                         workers: dict | None = None) -> dict:
        device = self.device

        def ran(done: int, total: int, row: dict) -> None:
            device.holder = f"sweep '{sweep.name}' ({done} of {total} runs done)"
            if callable(progress):
                progress(done, total, row)

        with device.hold(f"sweep '{sweep.name}' (starting)", waiting, stop=stop):
            backend = make_backend(**workers) if workers else None
            try:
                return run_sweep(self.engine if backend is None else None, sweep, new=new, should_stop=stop,
                                 progress=ran if callable(progress) else progress, backend=backend, store=self.store)
            finally:
                if backend is not None:
                    backend.close()

    def run_sweep(self, sweep: dict | Sweep, *, new: bool = False, progress: bool | Callable = True,
                  stop: Callable[[], bool] | None = None, workers: dict | None = None) -> dict:
        """Run (or resume) a sweep in this thread (admitted, then on the device); ``run_sweep``'s summary.
        ``progress`` is True for a progress bar on stderr, or ``(done, total, row)`` after each run. ``workers``
        (``dispatch.make_backend``'s arguments: ``devices``, ``ray`` ...) spreads the cells over worker processes or
        a Ray cluster, this process writing every outcome."""
        self._refuse_if_read_only("a sweep")
        sweep = self.sweep(sweep, to_run=True)
        with self.device.admit():
            return self._sweep_on_device(sweep, new, progress, stop, None, workers)

    def _stop_event(self, session: str | None) -> threading.Event:
        return self._stops.setdefault(session or "default", threading.Event())

    def cancel(self, session: str | None = None) -> None:
        """Stop ``session``'s sweep after the run in progress (or before it starts, while it waits)."""
        self._stop_event(session).set()

    def sweep_events(self, sweep: dict | Sweep, *, new: bool = False, session: str | None = None,
                     client: Stop | None = None, workers: dict | None = None) -> Iterator[SweepEvent]:
        """Run (or resume) a sweep in a worker thread, yielding what a page shows. Admission is checked at
        the first step (``StudioBusy``); an error that stops the sweep is raised after its events. Closing
        the iterator early stops the sweep between runs and waits for it: runs never overlap. So does ``client``
        giving a reason (the page that started it is gone), and ``stop_all``."""
        self._refuse_if_read_only("a sweep")
        sweep = self.sweep(sweep, to_run=True)
        stop = self._stop_event(session)
        stop.clear()

        why = self._reason(stop, "cancelled", client)
        with self.device.admit(why):
            events: queue.Queue = queue.Queue()
            outcome: dict[str, Any] = {}

            def work() -> None:
                try:
                    outcome["result"] = self._sweep_on_device(
                        sweep, new, lambda done, total, row: events.put(SweepEvent("run", done, total, row=row)),
                        why, lambda holder: events.put(SweepEvent("wait", 0, len(sweep), holder=holder)), workers)
                except DeviceWaitStopped:
                    outcome["stopped"] = True
                except BaseException as exc:  # raised to the consumer below
                    outcome["error"] = exc
                finally:
                    events.put(None)

            worker = threading.Thread(target=work, name="studio-sweep", daemon=True)
            worker.start()
            try:
                while (event := events.get()) is not None:
                    yield event
            finally:  # the consumer went away: stop between runs and wait, so runs never overlap
                if worker.is_alive():
                    stop.set()
                    worker.join()
        if "error" in outcome:
            raise outcome["error"]
        if outcome.get("stopped"):
            yield SweepEvent("stopped", 0, len(sweep))
            return
        yield SweepEvent("finished", len(sweep), len(sweep), result=outcome["result"])

    # ------------------------------------------------------------------ reads
    def estimate(self, sweep: dict | Sweep) -> SweepEstimate:
        """How many runs and how long, before anything starts (``SpecError`` for a bad cell)."""
        sweep = self.sweep(sweep)
        reference = sweep.reference or self.reference or {}
        done = [s for s in self.store.sweeps(sweep.key) if s["status"] == "done"]
        model_path = resolve_model(sweep.specs[0].model)
        history = self.store.runs_frame(matching={"status": "ok", **({} if model_path is None else
                                                                     {"model_path": model_path})},
                                        columns=HISTORY_COLUMNS)
        return estimate_sweep(sweep, history, model_path,
                              reference_steps=int(reference.get("steps", REFERENCE_DEFAULT["steps"])),
                              finished_sweep=done[-1]["id"] if done else None)

    def sweep_grid(self, sweep_id: int) -> SweepGrid:
        """A recorded sweep (running or finished) as its grid; ``StoreError`` for an unknown id."""
        sweep = self.store.get_sweep(sweep_id)
        config = sweep.get("config_json") or {}
        axes = [(a, tuple(v)) for a, v in config.get("axes") or []]
        parts = tuple([(a, tuple(v)) for a, v in part] for part in config.get("parts") or [])
        latest: dict[int, dict] = {}
        for row in self.store.sweep_runs(sweep_id):  # oldest first: a later finished run replaces earlier ones
            i = row.get("sweep_index")
            if i is not None and (row["status"] in ("ok", "failed") or i not in latest):
                latest[int(i)] = row
        return SweepGrid(sweep, axes, latest, parts)
