"""A sweep worker: runs the cells a driver hands it and sends back what the driver records.

A sweep spread over devices (``sweep --devices``) or a Ray cluster (``sweep --ray``) has one writer, its driver:
only the driver's process writes the study's SQLite file. A worker measures a cell with the ordinary ``Engine``
against a private scratch store (a temporary folder of its own), then returns the run's row, its images as PNG
bytes and any reference it had to make, and forgets the run's images. The driver writes them into the study
(``studio_core.study.dispatch``). References the driver already has arrive with the cell and are put in the scratch
store first, so a reference is made once per key and shared by every worker.

Before any work a worker checks that it has the model the driver resolved: an embedded model is shipped to it
(Ray's object store) when its own copy is missing or differs; a model folder must be on a path the worker reads
(a shared filesystem), and a worker without it, or with other weights there, answers with the path and the
reason, and the cell is recorded failed.

Two ways in:

* ``python -m studio_core.measure.worker --fd-in R --fd-out W`` is one device's worker process on this
  machine (``dispatch.DevicePool`` starts it with ``CUDA_VISIBLE_DEVICES`` pinned): it reads payloads from one
  pipe and writes results to the other (``multiprocessing.connection``'s framing), until the pipe closes.
* ``ray_cell(payload)`` is the body of a Ray task; a Ray worker process keeps its ``CellWorker`` (and so its
  loaded pipelines) between tasks.

``payload["engine"]`` is ``"engine"`` (the real one) or ``"stand-in:<ms>"``: a stand-in that sleeps a fixed time
and returns a made-up row, used to exercise dispatch, faults and resume at scale without models
(``benchmarks/dispatch_scale.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from studio_core.errors import ModelLoadError, SpecError

__all__ = ["CellWorker", "model_archive", "ray_cell", "worker_main"]

# the row's columns the driver writes itself when it dispatches a cell (or that belong to the scratch store)
DRIVER_COLUMNS = frozenset({"id", "created_at", "pid", "host", "sweep_id", "sweep_index", "status", "error",
                            "finished_at", "reference_id", "images"})
STAND_IN = "stand-in:"


def model_archive(folder: str | Path) -> bytes:
    """A model folder as tar bytes (what the driver ships to workers through Ray's object store)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(folder), arcname=Path(folder).name)
    return buf.getvalue()


class CellWorker:
    """One worker's state: its scratch store and engine (made on first use), and the models it unpacked."""

    def __init__(self, device: str | None = None, threads: int | None = None, label: str = ""):
        self.device = device  # what this worker pins: "cuda" (its one visible device) or "cpu"; None: the spec's
        self.threads = threads
        self.label = label  # how the driver names this worker's device ("cuda:1", "cpu", "GPU 0 on node ...")
        self.scratch = Path(tempfile.mkdtemp(prefix="studio-worker-"))
        self._engine = None
        self._unpacked: dict[str, str] = {}  # model fingerprint -> the folder it was unpacked into

    @property
    def engine(self):
        """The engine over the scratch store, made at the first real cell (a stand-in never imports torch)."""
        if self._engine is None:
            import torch

            from studio_core.measure.engine import Engine
            from studio_core.store.store import RunStore

            if self.threads:
                torch.set_num_threads(int(self.threads))

            self._engine = Engine(RunStore(self.scratch / "study"))
        return self._engine

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------ the model
    def _model_here(self, model: dict, archive) -> tuple[str | None, str | None]:
        """(the spec's model as this worker resolves it, None) or (None, why it cannot run the cell)."""
        from studio_core.spec import model_info

        node = socket.gethostname()
        try:
            info = model_info(model["name"])
            if info.fingerprint == model["fingerprint"]:
                return model["name"], None
            differs = f"has other weights at {info.path} (fingerprint {info.fingerprint}, the driver's is " \
                      f"{model['fingerprint']})"
        except (SpecError, ModelLoadError) as exc:
            differs = f"lacks the model folder {model['path']} ({exc})"
        if archive is None:
            return None, (f"worker on {node} {differs}: put the model on a path every worker reads (a shared "
                          "filesystem), at the same path as on the driver")
        folder = self._unpacked.get(model["fingerprint"])
        if folder is None:
            import ray

            data = ray.get(archive) if not isinstance(archive, bytes) else archive
            target = self.scratch / "models" / model["fingerprint"]
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(target, filter="data")
            folder = self._unpacked[model["fingerprint"]] = str(next(target.iterdir()))
        return folder, None

    # ------------------------------------------------------------------ one cell
    def run(self, payload: dict) -> dict:
        """Run one cell; the outcome the driver records (see the module docstring)."""
        started = time.perf_counter()
        out = {"cell": payload["cell"], "attempt": payload.get("attempt", 1), "node": socket.gethostname(),
               "worker_device": self.label, "pid": os.getpid()}
        engine = payload.get("engine", "engine")
        if engine.startswith(STAND_IN):
            out.update(_stand_in(payload, float(engine[len(STAND_IN):])))
        else:
            out.update(self._measure(payload))
        out["seconds"] = time.perf_counter() - started
        return out

    def _measure(self, payload: dict) -> dict:
        from studio_core.spec import RunSpec

        model, why = self._model_here(payload["model"], payload.get("model_archive"))
        if why:
            return {"status": "failed", "error": why, "results": {}, "images": [], "references": []}
        spec = dict(payload["spec"])
        if model != spec["model"]:  # an embedded model unpacked here: run that folder, record the spec's name
            spec["model"] = model
        if self.device:
            spec["device"] = self.device
        store = self.engine.store
        for ref in payload.get("references") or []:
            if not isinstance(ref, dict):  # a Ray object reference: the record sits in the object store
                import ray

                ref = ray.get(ref)
            store.keep_reference_record(ref)
        before = {r["ref_key"] for r in store.raw_rows("refs")}
        try:
            result = self.engine.run(RunSpec.from_dict(spec), reference=payload.get("reference"))
        except SpecError as exc:  # the driver resolved it: here it means this worker's copy differs
            return {"status": "failed", "error": f"the worker on {socket.gethostname()} refused the cell: {exc}",
                    "results": {}, "images": [], "references": []}
        row = result.row
        made = [r for r in store.raw_rows("refs") if r["ref_key"] not in before]
        ref_key = None
        if row.get("reference_id") is not None:
            ref = store.raw_rows("refs", "id = ?", [int(row["reference_id"])])
            ref_key = ref[0]["ref_key"] if ref else None
        images = [store.image_bytes(h) for h in row.get("images") or []]
        self._forget_run_images(store, row)
        return {"status": row["status"], "error": row.get("error"), "reference_key": ref_key, "images": images,
                "results": {k: v for k, v in row.items() if k not in DRIVER_COLUMNS},
                "references": [store.reference_record(r["ref_key"]) for r in made]}

    @staticmethod
    def _forget_run_images(store, row: dict) -> None:
        """Delete the run's image files from the scratch store (the driver keeps them); references' stay."""
        kept = {h for r in store.raw_rows("refs") for h in json.loads(r["images"] or "[]")}
        for digest in row.get("images") or []:
            if digest not in kept:
                store.image_path(digest).unlink(missing_ok=True)


def _stand_in(payload: dict, ms: float) -> dict:
    """A fixed-cost fake run: sleeps ``ms``, then returns a row as the engine would (no images, no reference)."""
    time.sleep(ms / 1000)
    steps = int(payload["spec"].get("steps") or 1)
    latency = ms * (0.9 + 0.01 * (steps % 20))
    return {"status": "ok", "error": None, "images": [], "references": [], "reference_key": None,
            "results": {"latency_median_ms": latency, "latency_iqr_ms": 0.0, "per_image_ms": latency,
                        "psnr": 20.0 + steps / 10, "device_name": "stand-in engine", "threads": 1,
                        "metrics_note": f"stand-in engine: a {ms:g} ms sleep, no model ran"}}


# ---------------------------------------------------------------------------------------------- Ray
_RAY_WORKER: CellWorker | None = None


def ray_cell(payload: dict, tracker=None) -> dict:
    """A Ray task's body: runs the cell on this Ray worker's ``CellWorker`` (kept between tasks). Tells
    ``tracker`` (an actor) where the attempt runs first, so a worker that dies mid-cell is named by its node."""
    global _RAY_WORKER
    import ray

    ctx = ray.get_runtime_context()
    gpus = ray.get_gpu_ids()
    device = "cuda" if gpus else "cpu"
    label = f"cuda:{gpus[0]}" if gpus else "cpu"
    if tracker is not None:
        ray.get(tracker.started.remote(payload["cell"], payload.get("attempt", 1), socket.gethostname(),
                                       ctx.get_node_id(), os.getpid(), label))
    if _RAY_WORKER is None or _RAY_WORKER.label != label:
        _RAY_WORKER = CellWorker(device, payload.get("threads"), label)
    out = _RAY_WORKER.run(payload)
    out["node_id"] = ctx.get_node_id()
    return out


# ---------------------------------------------------------------------------------------------- a device's process
def worker_main(argv: list[str] | None = None) -> int:
    """One device's worker process: payloads in on ``--fd-in``, outcomes out on ``--fd-out``, until EOF."""
    from multiprocessing.connection import Connection

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fd-in", type=int, required=True)
    p.add_argument("--fd-out", type=int, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--label", default="")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    inbox, outbox = Connection(a.fd_in, writable=False), Connection(a.fd_out, readable=False)
    worker = CellWorker(a.device, a.threads, a.label)
    try:
        while True:
            try:
                payload = inbox.recv()
            except EOFError:
                return 0
            try:
                outbox.send(worker.run(payload))
            except Exception as exc:  # the worker's own fault (not a failed run): say so, and go on
                outbox.send({"cell": payload.get("cell"), "attempt": payload.get("attempt", 1),
                             "status": "failed", "error": f"worker error: {type(exc).__name__}: {exc}",
                             "results": {}, "images": [], "references": [], "node": socket.gethostname(),
                             "worker_device": a.label, "pid": os.getpid()})
    finally:
        worker.close()


if __name__ == "__main__":
    sys.exit(worker_main())
