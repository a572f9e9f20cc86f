"""The study database's schema: its tables and columns, as registered migrations applied in order, once.

A new column or table is a new ``@migrations()`` function after the last one (``m002_...``); existing
studies get it the next time they are opened for writing.
"""

from __future__ import annotations

import datetime as _dt

import sqlite_utils
from sqlite_utils.migrations import Migrations

__all__ = ["JSON_COLUMNS", "RUN_STATUSES", "TABLES", "migrations", "now"]

RUN_STATUSES = ("running", "ok", "failed", "interrupted", "cancelled")
TABLES = ("runs", "refs", "sweeps", "images")
JSON_COLUMNS = ("prompts", "seeds", "knobs", "latencies_ms", "knob_report", "images", "config_json", "env_json")

migrations = Migrations("studio")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create({
        # identity and lifecycle
        "id": int, "created_at": str, "finished_at": str, "status": str, "error": str,
        "pid": int, "host": str, "sweep_id": int, "sweep_index": int,
        # configuration: every RunSpec field as a column, plus the whole spec as JSON
        "config_hash": str, "config_json": str, "model": str, "model_path": str, "model_fingerprint": str,
        "pipeline_class": str, "prompt_set": str, "prompts": str, "n_prompts": int, "seeds": str,
        "n_images": int, "steps": int, "sampler": str, "scheduler_class": str, "timestep_spacing": str,
        "guidance": float, "height": int, "width": int, "batch_size": int, "precision": str, "device": str,
        "knobs": str, "knobs_label": str, "warmup": int, "repeats": int,
        # timing (milliseconds; median and spread over the timed repeats)
        "load_ms": float, "cold_ms": float, "latency_median_ms": float, "latency_iqr_ms": float,
        "latency_min_ms": float, "latency_max_ms": float, "latency_mean_ms": float, "latencies_ms": str,
        "per_image_ms": float, "text_encode_ms": float, "denoise_ms": float, "step_mean_ms": float,
        "decode_ms": float, "nfe": int, "repeats_identical": int,
        # memory
        "peak_mem_bytes": int, "mem_baseline_bytes": int, "peak_mem_kind": str,
        # quality against the reference, and prompt fidelity
        "reference_id": int, "psnr": float, "psnr_std": float, "ssim": float, "ssim_std": float,
        "lpips": float, "fidelity_top1": float, "fidelity_top5": float, "fidelity_n": int, "metrics_note": str,
        # what the knobs did, the images, the environment
        "knob_report": str, "knobs_inactive": str, "images": str,
        "device_name": str, "torch_version": str, "diffusers_version": str, "threads": int,
        "git_commit": str, "python_version": str, "env_json": str,
    }, pk="id")
    db["runs"].create_index(["status"])
    db["runs"].create_index(["sweep_id", "sweep_index"])
    db["runs"].create_index(["config_hash"])
    db["refs"].create({
        "id": int, "ref_key": str, "created_at": str, "model_fingerprint": str, "config_json": str,
        "images": str, "generate_ms": float, "env_json": str,
    }, pk="id")
    db["refs"].create_index(["ref_key"], unique=True)
    db["sweeps"].create({
        "id": int, "sweep_key": str, "name": str, "preset": str, "question": str, "config_json": str,
        "n_total": int, "status": str, "pid": int, "created_at": str, "finished_at": str,
    }, pk="id")
    db["sweeps"].create_index(["sweep_key"])
    db["images"].create({"hash": str, "width": int, "height": int, "n_bytes": int, "created_at": str}, pk="hash")


@migrations()
def m002_quarantine(db: sqlite_utils.Database) -> None:
    """Rows moved out of their table because a text value in them is not valid UTF-8 (``quarantine.py``)."""
    db["quarantine"].create({
        "id": int, "table_name": str, "row_key": str, "column_name": str, "raw_json": str, "reason": str,
        "quarantined_at": str,
    }, pk="id")


# what measurements record since issue 18: how PSNR and SSIM were computed, the memory method, the adaptive timing's
# counts and confidence interval, and energy; declared so their types never depend on the first value written
MEASUREMENT_COLUMNS = {
    "psnr_method": str, "psnr_image_mean": float, "psnr_min": float, "psnr_max": float, "identical_images": int,
    "ssim_method": str, "peak_mem_method": str, "warmup_done": int, "repeats_done": int, "timing_converged": int,
    "latency_ci_low_ms": float, "latency_ci_high_ms": float, "timing_note": str, "energy_j_per_image": float,
    "energy_method": str, "energy_note": str,
}


def _add_run_columns(db: sqlite_utils.Database, columns: dict[str, type]) -> None:
    """Add each of ``columns`` to ``runs`` with its declared type, keeping any a write (``alter=True``) already
    made: the body of every migration that only adds run columns."""
    have = set(db["runs"].columns_dict)
    for name, kind in columns.items():
        if name not in have:
            db["runs"].add_column(name, kind)


@migrations()
def m003_measurement_columns(db: sqlite_utils.Database) -> None:
    """The measurement columns (``MEASUREMENT_COLUMNS``), kept if a write already made them."""
    _add_run_columns(db, MEASUREMENT_COLUMNS)


# the emoji feature network's scores and the standard metrics from local weights (issue 19): the run's distribution
# set size and its timing, FD/KID/precision/recall, the perceptual distance, classifier fidelity, FID/KID and CLIP
QUALITY_COLUMNS = {
    "distribution": int, "dist_n": int, "dist_gen_ms": float, "dist_score_ms": float, "dist_method": str,
    "fd_emoji": float, "kid_emoji": float, "kid_emoji_std": float, "precision_emoji": float, "recall_emoji": float,
    "dist_classifier_top1": float, "dist_classifier_top5": float, "dist_classifier_n": int,
    "perceptual_emoji": float, "perceptual_emoji_std": float,
    "classifier_top1": float, "classifier_top5": float, "classifier_n": int,
    "lpips_std": float, "lpips_method": str, "fid": float, "fid_kid": float, "fid_kid_std": float, "fid_n": int,
    "fid_method": str, "clip_score": float, "clip_score_std": float, "clip_method": str,
}


@migrations()
def m004_quality_columns(db: sqlite_utils.Database) -> None:
    """The distribution and feature-network columns (``QUALITY_COLUMNS``), kept if a write already made them."""
    _add_run_columns(db, QUALITY_COLUMNS)


@migrations()
def m005_flow_shift_column(db: sqlite_utils.Database) -> None:
    """``flow_shift``, the run spec's field for a flow model's schedule shift (issue 20), kept if a write made it."""
    _add_run_columns(db, {"flow_shift": float})


@migrations()
def m006_lineage_columns(db: sqlite_utils.Database) -> None:
    """``model_family`` (a student's teacher, else the model itself) and ``lineage`` (how a student was made),
    read from the model folder when the run starts (issue 21): a bundle without the folders still shows them."""
    _add_run_columns(db, {"model_family": str, "lineage": str})


# where a run ran when a sweep spreads its cells over devices or machines (issue 22): the worker's host, the device
# it pinned ("cuda:1", "cpu") and how the cell reached it ("local", "devices" or "ray"); ``shared_cpu`` is how many
# workers shared that host's CPU cores while it was timed (NULL or 1: it had them to itself)
PLACEMENT_COLUMNS = {"node": str, "worker_device": str, "dispatch": str, "shared_cpu": int}


@migrations()
def m007_placement_columns(db: sqlite_utils.Database) -> None:
    """The placement columns (``PLACEMENT_COLUMNS``), kept if a write already made them."""
    _add_run_columns(db, PLACEMENT_COLUMNS)


@migrations()
def m008_view_indexes(db: sqlite_utils.Database) -> None:
    """Indexes for what the page reads at every refresh of a large study (issue 22): a model's or prompt set's runs
    of one status (the Frontier's and the Runs tab's filters, and their choices from distinct values), and the newest
    finish time (``RunStore.runs_version`` and the runs finished since the last look, ``RunStore.runs_since``).
    ``status`` alone and ``sweep_id`` have had theirs since ``m001``."""
    for columns in (["model", "status"], ["prompt_set", "status"], ["finished_at"]):
        db["runs"].create_index(columns, if_not_exists=True)
