"""A sweep spread over workers: one process per device on this machine (``sweep --devices``) or Ray tasks on a
cluster (``sweep --ray``), with this process, the driver, as the study's only writer.

The driver keeps the sweep's queue of cells. For each cell it hands out, it first writes the run's ``running`` row
(as a local sweep does: its pid and host are the driver's, so a driver killed mid-sweep leaves rows that the next
start marks ``interrupted``, and the sweep resumes exactly as a local one does). A worker (``measure.worker``) runs
the cell against its own scratch store and sends back the row, the images and any reference it made; the driver
writes them into the study, once: an outcome for a row that is no longer ``running`` is dropped, never written over.
Results stream back as cells finish, so the frontier fills while the sweep runs.

References: cells share a reference when their model, prompts, seeds and size are the same. The first cell of
such a group goes out alone; the rest wait for it and take the reference it made (or the study's, when it
already has one), so a reference is made once per key, not once per worker. A worker on another device type or
library version makes its own, which is right: its key differs.

Faults: a worker that dies mid-cell (killed, out of host memory, its node lost) has its run marked
``interrupted`` with the node and the reason, and the cell goes back to the queue once; a second death records the
cell ``failed`` with both reasons. A cell whose worker lacks the model is ``failed`` at once with the path it lacks.
No cell is written twice: the driver writes each outcome only over a ``running`` row of its own.

Honesty: every run records the node and device it ran on (``node``, ``worker_device``) and how it got there
(``dispatch``). CPU workers that share one machine's cores time each other's load: their runs carry ``shared_cpu``
(how many shared), which puts them on a front of their own (``frontier.SETUP_COLUMNS``) and says so in the hover.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from studio_core.errors import SpecError, StoreError
from studio_core.models import EMBEDDED_MODELS
from studio_core.spec import model_info, start_fields

__all__ = ["DevicePool", "RayCluster", "WorkerDied", "make_backend", "parse_devices", "run_cells"]

REPO = Path(__file__).resolve().parents[2]
ENGINE = "engine"  # the real engine; "stand-in:<ms>" is measure.worker's fixed-cost stand-in


@dataclass(frozen=True)
class WorkerDied:
    """An attempt whose worker died: the cell, which attempt, where it ran and why it ended."""

    cell: int
    attempt: int
    node: str
    worker_device: str
    reason: str


# ---------------------------------------------------------------------------------------------- devices
def parse_devices(text: str, cuda_count: int) -> list[str]:
    """``"cuda:0,cuda:1"`` (or ``"cpu,cpu"``) as a list of devices, one worker each; ``SpecError`` naming the bad
    entry. A CUDA index must be one of the ``cuda_count`` devices this machine has, and appear once (two workers
    on one GPU would time each other)."""
    entries = [e.strip() for e in str(text or "").split(",") if e.strip()]
    if not entries:
        raise SpecError("devices", text, "a comma-separated list such as 'cuda:0,cuda:1' or 'cpu,cpu'")
    seen = set()
    out = []
    for entry in entries:
        if entry == "cpu":
            out.append("cpu")
            continue
        name, _, index = entry.partition(":")
        if name != "cuda" or not index.isdigit():
            raise SpecError("devices", entry, "'cuda:N' (one per GPU) or 'cpu'")
        if int(index) >= cuda_count:
            raise SpecError("devices", entry, f"a device this machine has ({cuda_count} CUDA device"
                                              f"{'s' if cuda_count != 1 else ''} visible: " +
                            (f"cuda:0 to cuda:{cuda_count - 1})" if cuda_count else "use 'cpu')"))
        if entry in seen:
            raise SpecError("devices", entry, "each GPU once: two workers on one device would time each other")
        seen.add(entry)
        out.append(f"cuda:{int(index)}")
    return out


def _signal_text(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"it exited with status {code}"


class DevicePool:
    """One worker process per device on this machine, each pinned to its device (``CUDA_VISIBLE_DEVICES``), fed
    one cell at a time. A worker that dies is started again for the next cell."""

    name = "devices"

    def __init__(self, devices: list[str], *, threads: int | None = None, engine: str = ENGINE):
        self.devices = list(devices)
        self.engine = engine
        self.slots = len(self.devices)
        self.cpu_workers = sum(1 for d in self.devices if d == "cpu")
        # CPU workers split the cores unless told; a GPU worker keeps torch's default for its host-side work
        self.cpu_threads = threads or max(1, (os.cpu_count() or 1) // max(1, self.cpu_workers))
        self.labels = [d if d != "cpu" or self.cpu_workers == 1 else f"cpu (worker {i + 1})"
                       for i, d in enumerate(self.devices)]
        self._procs: list[subprocess.Popen | None] = [None] * self.slots
        self._send: list[Any] = [None] * self.slots
        self._busy: dict[int, dict] = {}  # slot -> the payload it runs
        self._events: queue.Queue = queue.Queue()
        self._host = socket.gethostname()

    def pids(self) -> list[int]:
        """The live worker processes' ids (tests kill one mid-cell)."""
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def _start(self, slot: int) -> None:
        from multiprocessing.connection import Connection

        device = self.devices[slot]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker never touches a GPU another worker times on
            args = ["--device", "cpu", "--threads", str(self.cpu_threads)]
        else:
            env["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]  # inside, it is the one visible device: "cuda"
            args = ["--device", "cuda"]
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        proc = subprocess.Popen([sys.executable, "-m", "studio_core.measure.worker", "--fd-in", str(to_child),
                                 "--fd-out", str(from_child), "--label", self.labels[slot], *args],
                                pass_fds=(to_child, from_child), env=env, cwd=str(REPO))
        os.close(to_child)
        os.close(from_child)
        self._procs[slot] = proc
        self._send[slot] = Connection(from_parent, readable=False)
        inbox = Connection(to_parent, writable=False)

        def read() -> None:
            while True:
                try:
                    self._events.put(("out", slot, proc, inbox.recv()))
                except (EOFError, OSError):
                    inbox.close()
                    self._events.put(("died", slot, proc, proc.wait()))
                    return

        threading.Thread(target=read, name=f"studio-worker-{slot}", daemon=True).start()

    def submit(self, payload: dict) -> None:
        if not any(self._procs):  # the first cell: start every worker now, so their start-up overlaps it
            for slot in range(self.slots):
                self._start(slot)
        slot = next(s for s in range(self.slots) if s not in self._busy)
        proc = self._procs[slot]
        if proc is None or proc.poll() is not None:
            self._start(slot)
        payload = {**payload, "engine": self.engine}
        self._busy[slot] = payload
        try:
            self._send[slot].send(payload)
        except OSError:  # the worker died between cells: its reader reports it, and the cell with it
            pass

    def outcomes(self, timeout: float) -> list:
        """Outcomes that arrived (worker dicts, or ``WorkerDied``), waiting up to ``timeout`` s for the first."""
        got = []
        try:
            got.append(self._events.get(timeout=timeout))
            while True:
                got.append(self._events.get_nowait())
        except queue.Empty:
            pass
        out = []
        for kind, slot, proc, value in got:
            if proc is not self._procs[slot]:
                continue  # from a worker already replaced
            payload = self._busy.pop(slot, None)
            if kind == "out":
                out.append(value)
            else:
                self._procs[slot] = None
                if payload is not None:
                    out.append(WorkerDied(payload["cell"], payload.get("attempt", 1), self._host, self.labels[slot],
                                          f"its process was {_signal_text(value)}"))
        return out

    def shared_cpu(self, outcome: dict) -> int | None:
        cpu = str(outcome.get("worker_device") or "").startswith("cpu")
        return self.cpu_workers if cpu and self.cpu_workers > 1 else None

    def model_archive(self, model: dict) -> None:
        return None  # the same machine: the same paths

    def share_reference(self, record: dict) -> dict:
        return record

    def close(self) -> None:
        for slot, proc in enumerate(self._procs):
            if self._send[slot] is not None:
                try:
                    self._send[slot].close()
                except OSError:
                    pass
            if proc is not None:
                try:
                    proc.wait(timeout=30)  # its pipe closed: it finishes and exits
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = [None] * self.slots


# ---------------------------------------------------------------------------------------------- Ray
RAY_MISSING = "Ray is not installed: pip install -r requirements-ray.txt (an optional extra)"


class RayCluster:
    """Cells as Ray tasks: ``num_gpus=1`` each on a cluster with GPUs, else ``num_cpus=cpus_per_task``. ``address``
    is ``auto`` (the cluster ``ray start`` runs on this machine), ``ray://...`` or ``host:port``, or ``local`` (a
    private cluster of this machine's cores, started here and gone with this process)."""

    name = "ray"

    def __init__(self, address: str, *, cpus_per_task: int = 1, engine: str = ENGINE, local_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise SpecError("ray", address, RAY_MISSING) from None
        from studio_core.measure.worker import ray_cell

        self.ray = ray
        self.engine = engine
        self.cpus_per_task = int(cpus_per_task)
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}}
        if address not in ("local", "auto") and "RAY_AUTH_MODE" not in os.environ and (
                os.environ.get("RAY_AUTH_TOKEN") or Path("~/.ray/auth_token").expanduser().is_file()):
            os.environ["RAY_AUTH_MODE"] = "token"  # a cluster started with token auth (Ray 2.59+): present ours
        try:
            if address == "local":
                ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         runtime_env=env)
            else:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR", runtime_env=env)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SpecError("ray", address, f"a running Ray cluster ('ray start --head' first, then 'auto' or its "
                                            "address, with its token in RAY_AUTH_TOKEN or ~/.ray/auth_token), or "
                                            f"'local' ({' '.join(str(exc).split())[:300]})") from None
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        if self.gpus:
            self.slots = self.gpus
            options = {"num_gpus": 1}
        else:
            self.slots = max(1, int(resources.get("CPU", 1)) // self.cpus_per_task)
            options = {"num_cpus": self.cpus_per_task}
        self._task = ray.remote(ray_cell).options(max_retries=0, **options)
        self._tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        alive = [n for n in ray.nodes() if n["Alive"]]
        self._node_cpus = {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0)) for n in alive}
        # where a task ran when it died before telling the tracker: known only on a one-node cluster
        self._only_node = {"node": alive[0].get("NodeManagerHostname", "")} if len(alive) == 1 else {}
        self._pending: dict[Any, dict] = {}
        self._archives: dict[str, Any] = {}
        self._references: dict[str, Any] = {}

    def submit(self, payload: dict) -> None:
        payload = {**payload, "engine": self.engine,
                   "threads": None if self.gpus or self.engine != ENGINE else self.cpus_per_task}
        self._pending[self._task.remote(payload, self._tracker)] = payload

    def outcomes(self, timeout: float) -> list:
        ray = self.ray
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
            ready = list(dict.fromkeys(ready + more))
        out = []
        for ref in ready:
            payload = self._pending.pop(ref)
            try:
                out.append(ray.get(ref))
                self._tracker.forget.remote(payload["cell"], payload.get("attempt", 1))
            except ray.exceptions.RayError as exc:
                cell, attempt = payload["cell"], payload.get("attempt", 1)
                where = ray.get(self._tracker.where.remote(cell, attempt)) or self._only_node
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                out.append(WorkerDied(cell, attempt, where.get("node", "an unknown node"),
                                      where.get("device", ""), f"{type(exc).__name__}: {first}"[:500]))
        return out

    def running_pids(self) -> dict[int, tuple[int, str]]:
        """(cell -> (pid, node)) of the attempts running now, as their workers reported them (tests kill one)."""
        return self.ray.get(self._tracker.running.remote())

    def shared_cpu(self, outcome: dict) -> int | None:
        if self.gpus or outcome.get("worker_device") != "cpu":
            return None
        slots = self._node_cpus.get(outcome.get("node_id"), 0) // self.cpus_per_task
        return slots if slots > 1 else None

    def model_archive(self, model: dict):
        """An embedded model's folder in the object store, once per fingerprint: a worker whose copy is missing or
        differs unpacks it. A model folder of the user's is not shipped: it must be on a shared path."""
        if model["name"] not in EMBEDDED_MODELS:
            return None
        if model["fingerprint"] not in self._archives:
            from studio_core.measure.worker import model_archive

            self._archives[model["fingerprint"]] = self.ray.put(model_archive(model["path"]))
        return self._archives[model["fingerprint"]]

    def share_reference(self, record: dict):
        if record["ref_key"] not in self._references:
            self._references[record["ref_key"]] = self.ray.put(record)
        return self._references[record["ref_key"]]

    def close(self) -> None:
        for ref in list(self._pending):
            self.ray.cancel(ref, force=True)
        self._pending.clear()
        self.ray.shutdown()


class _Tracker:
    """A Ray actor: where each attempt started (node, pid, device), so a worker that dies is named by its node."""

    def __init__(self):
        self.started_at: dict[tuple[int, int], dict] = {}

    def started(self, cell: int, attempt: int, host: str, node_id: str, pid: int, device: str) -> None:
        self.started_at[(cell, attempt)] = {"node": host, "node_id": node_id, "pid": pid, "device": device}

    def where(self, cell: int, attempt: int) -> dict | None:
        return self.started_at.get((cell, attempt))

    def running(self) -> dict:
        latest: dict[int, tuple[int, dict]] = {}
        for (cell, attempt), where in self.started_at.items():
            if cell not in latest or attempt > latest[cell][0]:
                latest[cell] = (attempt, where)
        return {cell: (where["pid"], where["node"]) for cell, (_, where) in latest.items()}

    def forget(self, cell: int, attempt: int) -> None:
        self.started_at.pop((cell, attempt), None)


def make_backend(devices: str | None = None, ray: str | None = None, *, cpus_per_task: int = 1,
                 worker_threads: int | None = None):
    """The workers a sweep asks for: ``devices`` ("cuda:0,cuda:1", "cpu,cpu") or ``ray`` (an address, ``auto`` or
    ``local``); None for neither (the sweep runs in this process). ``SpecError`` before any work for a bad list, a
    device this machine lacks, both at once, or Ray not installed or not reachable."""
    if devices and ray:
        raise SpecError("devices", devices, "either devices on this machine or a Ray cluster, not both")
    if worker_threads is not None and not 1 <= int(worker_threads) <= 1024:
        raise SpecError("worker threads", worker_threads, "a whole number from 1 to 1024")
    if not 1 <= int(cpus_per_task) <= 1024:
        raise SpecError("cpus per task", cpus_per_task, "a whole number from 1 to 1024")
    if devices:
        cuda = 0
        if any(e.strip().startswith("cuda") for e in str(devices).split(",")):
            import torch

            cuda = torch.cuda.device_count()
        return DevicePool(parse_devices(devices, cuda), threads=worker_threads)
    if ray:
        return RayCluster(str(ray), cpus_per_task=int(cpus_per_task))
    return None


# ---------------------------------------------------------------------------------------------- the driver
def _group(spec) -> str:
    """The cells that share a reference: same model, prompts, seeds and size (its settings are the sweep's)."""
    return json.dumps([spec.model, list(spec.prompts), list(spec.seeds), spec.height, spec.width])


def _study_references(store, info, spec) -> list[dict]:
    """The study's references for a cell's model files, prompts, seeds and size (one per device type or library
    version that made one); a worker takes the one its key names."""
    out = []
    for row in store.raw_rows("refs", "model_fingerprint = ?", [info.fingerprint]):
        config = json.loads(row["config_json"])
        if (list(config.get("prompts") or []) == list(spec.prompts) and list(config.get("seeds") or []) ==
                list(spec.seeds) and config.get("height") == spec.height and config.get("width") == spec.width):
            out.append(store.reference_record(row["ref_key"]))
    return out


def run_cells(store, sweep, sweep_id: int, todo: list[int], backend, *, done_before: int = 0,
              progress: Callable[[int, int, dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, retries: int = 1) -> tuple[int, str]:
    """Run the sweep's cells ``todo`` on ``backend``'s workers, writing every outcome into ``store`` as it arrives;
    returns (runs finished, status: "done" or "cancelled"). A stop hands out no more cells and waits for those
    running (a cell is never cut in half). Ctrl-C marks the runs in flight ``interrupted`` and is raised."""
    infos: dict[str, Any] = {}
    specs = {i: sweep.specs[i] for i in todo}
    for spec in specs.values():
        if spec.model not in infos:
            infos[spec.model] = model_info(spec.model)
    references: dict[str, list] = {}  # group -> the records its cells take
    for i in todo:
        key = _group(specs[i])
        if key not in references:
            found = _study_references(store, infos[specs[i].model], specs[i])
            references[key] = [backend.share_reference(r) for r in found]
    leaders: dict[str, int] = {}  # group -> the cell making its reference (the group's others wait for it)
    waiting_groups = {k for k, v in references.items() if not v}
    pending = collections.deque(todo)
    attempts: dict[int, int] = {}
    earlier_deaths: dict[int, str] = {}
    in_flight: dict[int, int] = {}  # cell -> its run id
    ran, status = 0, "done"

    def next_cell() -> int | None:
        for cell in pending:
            key = _group(specs[cell])
            if key not in waiting_groups:
                return cell
            if leaders.get(key, cell) == cell:  # the group's first, or its leader handed out again
                leaders[key] = cell
                return cell
        return None

    def dispatch(cell: int) -> None:
        pending.remove(cell)
        spec, info = specs[cell], infos[specs[cell].model]
        attempts[cell] = attempts.get(cell, 0) + 1
        run_id = store.start_run(spec.to_dict(), sweep_id=sweep_id, sweep_index=cell, **start_fields(spec, info))
        in_flight[cell] = run_id
        model = {"name": spec.model, "path": info.path, "fingerprint": info.fingerprint}
        backend.submit({"cell": cell, "attempt": attempts[cell], "spec": spec.to_dict(), "model": model,
                        "model_archive": backend.model_archive(model), "reference": sweep.reference,
                        "references": references[_group(spec)]})

    def record(outcome) -> None:
        nonlocal ran
        cell = outcome.cell if isinstance(outcome, WorkerDied) else outcome["cell"]
        run_id = in_flight.pop(cell, None)
        if run_id is None:
            return  # not an attempt of this driver's: never written
        key = _group(specs[cell])
        if isinstance(outcome, WorkerDied):
            where = f"the worker on {outcome.node}" + (f" ({outcome.worker_device})" if outcome.worker_device else "")
            why = f"{where} died while running this cell: {outcome.reason}"
            placement = {"node": outcome.node, "worker_device": outcome.worker_device, "dispatch": backend.name}
            if attempts[cell] <= retries:
                store.mark_interrupted([run_id], why + "; the cell was handed out again")
                earlier_deaths[cell] = why
                pending.appendleft(cell)
                return
            earlier = f" (and before that: {earlier_deaths[cell]})" if cell in earlier_deaths else ""
            store.fail_run(run_id, why + earlier, placement)
        if leaders.get(key) == cell:
            waiting_groups.discard(key)  # made or not, the group goes on (a failed leader: each makes its own)
        if not isinstance(outcome, WorkerDied):
            for ref in outcome.get("references") or []:
                store.keep_reference_record(ref)
                references[key].append(backend.share_reference(ref))
            values = dict(outcome.get("results") or {})
            for column in set(specs[cell].to_dict()) | set(start_fields(specs[cell], infos[specs[cell].model])):
                values.pop(column, None)  # the driver's row has the sweep's configuration; the worker ran it
            values.update(node=outcome.get("node"), worker_device=outcome.get("worker_device"),
                          dispatch=backend.name, shared_cpu=backend.shared_cpu(outcome))
            if outcome.get("reference_key"):
                ref = store.get_reference(outcome["reference_key"])
                values["reference_id"] = None if ref is None else int(ref["id"])
            try:
                if outcome["status"] == "ok":
                    values["images"] = [store.put_image_bytes(b) for b in outcome.get("images") or []]
                    store.finish_run(run_id, values)
                elif outcome["status"] == "cancelled":
                    store.cancel_run(run_id, outcome.get("error") or "cancelled")
                else:
                    store.fail_run(run_id, outcome.get("error") or "failed", values)
            except StoreError as exc:  # the row is no longer running (another process marked it): never overwrite
                print(f"sweep {sweep_id}: the outcome of cell {cell} was not written: {exc}", file=sys.stderr)
                return
        ran += 1
        if progress is not None:
            progress(done_before + ran, len(sweep), store.get_run(run_id))

    try:
        while pending or in_flight:
            if status != "cancelled" and should_stop is not None and should_stop():
                status = "cancelled"
            while status != "cancelled" and len(in_flight) < backend.slots:
                cell = next_cell()
                if cell is None:
                    break
                dispatch(cell)
            if not in_flight:
                break
            for outcome in backend.outcomes(timeout=0.5):
                record(outcome)
    except BaseException:
        store.mark_interrupted(list(in_flight.values()), "the sweep's driver stopped before this cell finished")
        raise
    return ran, status
