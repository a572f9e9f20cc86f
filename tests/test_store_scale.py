"""A study that outgrows a full read (issue 22): the view indexes, the incremental frontier, the cached filter
choices, the Runs table's pages, the streamed CSV and the quiet timer, each checked against what a fresh read of the
whole study gives.

The studies are a few hundred runs cloned (``benchmarks/store_scale.py``'s ``clone_runs``: jittered figures, varied
sweeps, models, prompt sets and statuses) from four real runs of the embedded model, made once for the module.
Nothing here times anything: ``benchmarks/store_scale.py`` does, at 1k to 100k runs.
"""

import datetime as _dt
import random

import gradio as gr
import numpy as np
import pandas as pd
import pytest

from app import plots, tables
from app.handlers import RUNS_PER_PAGE, Studio
from benchmarks.store_scale import build_study, clone_runs
from studio_core.errors import StoreError
from studio_core.store import csv_stream
from studio_core.store.store import RunStore
from studio_core.study import frontier
from studio_core.study.service import StudyService

REF = {"sampler": "DPM++ 2M", "steps": 4}
BASE = {"model": "emoji-sd", "prompts": ["grinning face", "pizza"], "seeds": [0], "warmup": 1, "repeats": 1}
FRONTIER = ("psnr", "latency_median_ms", "configuration", "(none)", "(all)", "(all)", "(all)", [])


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[dict]:
    """Four real runs of the embedded model, as stored: its own sampler, Euler, DPM++ 2M with three repeats, and
    DeepCache."""
    store = RunStore(tmp_path_factory.mktemp("source"))
    service = StudyService(store, reference=REF)
    for spec in ({"steps": 2}, {"steps": 2, "sampler": "Euler"}, {"steps": 3, "sampler": "DPM++ 2M", "repeats": 3},
                 {"steps": 3, "knobs": {"deepcache": {"interval": 2}}}):
        assert service.run({**BASE, **spec})["status"] == "ok"
    rows = store.raw_rows("runs")
    store.close()
    return rows


@pytest.fixture
def study(tmp_path, sources):
    """A study of 300 cloned runs, and the page's handlers over it."""
    store = build_study(tmp_path / "study", sources, 300, seed=1)
    yield store, Studio(StudyService(store, reference=REF))
    store.close()


def _more(store, sources, n, seed, first):
    """``n`` more cloned runs, as a sweep's results would land."""
    rows = clone_runs(sources, n, random.Random(seed), sweep_ids=[s["id"] for s in store.sweeps()],
                      start=_dt.datetime(2026, 6, 1, tzinfo=_dt.timezone.utc), first_index=first)
    store.add_finished_runs(rows)


def _figure(fig) -> dict:
    """A figure as plain values (numpy arrays as lists), to compare two figures."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items() if k != "uid"}
        if isinstance(v, (list, tuple, np.ndarray)):
            return [plain(x) for x in v]
        return v.item() if isinstance(v, np.generic) else v
    return plain(fig.to_dict())


def _fresh_frontier(store, *args, **kwargs) -> dict:
    return _figure(Studio(StudyService(store, reference=REF)).frontier(*args, **kwargs))


def _fresh_ok(store) -> pd.DataFrame:
    return store.runs_frame(matching={"status": "ok"}, columns=plots.FRONTIER_COLUMNS)


# ------------------------------------------------------------------------------------------ the store
def test_the_view_indexes_exist_and_an_older_study_still_opens_read_only(study, tmp_path):
    store, _studio = study
    indexed = {tuple(ix.columns) for ix in store.db["runs"].indexes}
    assert {("model", "status"), ("prompt_set", "status"), ("finished_at",), ("status",)} <= indexed
    # a study written before m008 (a bundle): no view indexes, and the migration not applied
    for ix in ("idx_runs_model_status", "idx_runs_prompt_set_status", "idx_runs_finished_at"):
        store.db.execute(f"DROP INDEX {ix}")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm008_view_indexes'")
    store.close()
    old = RunStore(tmp_path / "study", read_only=True)
    studio = Studio(StudyService(old))
    assert old.runs_version()[0] == 300 and len(studio.runs_page("(all)", "(all)", "(all)")[0]) == RUNS_PER_PAGE
    assert "300 runs" not in studio.frontier(*FRONTIER).layout.title.text  # only the ok ones are drawn
    old.close()
    again = RunStore(tmp_path / "study")  # opened for writing, it is migrated
    assert {("finished_at",)} <= {tuple(ix.columns) for ix in again.db["runs"].indexes}
    again.close()


def test_runs_since_reads_only_the_new_and_the_finished(study, sources):
    store, _studio = study
    first = store.runs_since(None, matching={"status": "ok"}, columns=["id", "psnr"])
    assert list(first.frame.columns) == ["id", "psnr"] and len(first.frame) == first.total
    assert first.total == len(store.runs_frame(matching={"status": "ok"}))
    again = store.runs_since(first.mark, matching={"status": "ok"}, columns=["id", "finished_at"])
    assert set(again.frame["finished_at"]) <= {first.mark[1]}  # nothing happened: only the last finish is read again
    running = store.start_run({"model": "emoji-sd", "prompts": ["a"], "seeds": [0]}, config_hash="r")
    _more(store, sources, 5, seed=2, first=1000)
    second = store.runs_since(first.mark, matching={"status": "ok"}, columns=["id"])
    new = set(second.frame["id"]) - set(first.frame["id"])
    assert len(new) == second.total - first.total <= 5 and len(second.frame) <= len(new) + 1 and running not in new
    store.finish_run(running, {"latency_median_ms": 10.0, "psnr": 20.0})  # an older id finishes, after newer ones
    third = store.runs_since(second.mark, matching={"status": "ok"}, columns=["id"])
    assert set(third.frame["id"]) - set(second.frame["id"]) == {running} and third.total == second.total + 1


def test_add_finished_runs_refuses_a_running_row_or_an_unknown_column(study, sources):
    store, _studio = study
    before = store.run_count()
    with pytest.raises(StoreError, match="only finished runs are added, not one that is 'running'"):
        store.add_finished_runs([{**sources[0], "status": "running"}])
    with pytest.raises(StoreError, match="runs have no column 'colour'"):
        store.add_finished_runs([{**sources[0], "colour": "red"}])
    assert store.run_count() == before


# ------------------------------------------------------------------------------------------ the frontier
def test_the_incremental_frontier_is_the_fresh_one_after_every_change(study, sources):
    """Property: whatever lands in the study (new runs, a running run that finishes after later ones, failures),
    the kept runs are the ones a fresh read gives, column types included, and the figure is a fresh Studio's; only
    the runs new or finished since the last refresh are read."""
    store, studio = study
    rng = random.Random(7)
    args = FRONTIER
    assert _figure(studio.frontier(*args)) == _fresh_frontier(store, *args)
    running, first = [], 2000
    staged = ["start", "clones", "finish", "start", "clones", "fail"]  # an older run finishing after newer ones
    for step in range(14):
        action = staged[step] if step < len(staged) else rng.choice(["clones", "start", "finish", "fail", "nothing"])
        before = store.run_count()
        if action == "clones":
            _more(store, sources, rng.randint(1, 30), seed=step, first=first)
            first += 30
        elif action == "start":
            running.append(store.start_run({"model": "emoji-sd", "prompts": ["a"], "seeds": [0], "steps": 3,
                                            "sampler": "Euler"}, config_hash=f"s{step}"))
        elif action in ("finish", "fail") and running:
            rid = running.pop(0)
            if action == "finish":  # no PSNR: a column the kept runs have numbers in gets a missing value
                store.finish_run(rid, {"latency_median_ms": rng.uniform(50, 300), "psnr": None,
                                       "device_name": "CPU test", "reference_id": 1, "height": 32, "width": 32})
            else:
                store.fail_run(rid, "test failure")
        args = (rng.choice(["psnr", "ssim"]), rng.choice(["latency_median_ms", "per_image_ms"]),
                rng.choice(["configuration", "sampler", "model"]), "(none)", "(all)",
                rng.choice(["(all)", "emoji-4"]), "(all)", [])
        figure = _figure(studio.frontier(*args))
        # read: the runs added, the one finished, and those finished in the last instant seen (read again)
        assert studio._ok_runs.last_read <= store.run_count() - before + 2, action
        assert figure == _fresh_frontier(store, *args), (step, action)
        pd.testing.assert_frame_equal(studio.ok_runs(), _fresh_ok(store))
    assert studio._ok_runs.generation == 0  # never read again from scratch


def test_a_change_that_is_not_a_new_or_finished_run_reads_everything_again(study):
    store, studio = study
    studio.frontier(*FRONTIER)
    ok_id = int(studio.ok_runs()["id"].iloc[5])
    store.db.execute("DELETE FROM runs WHERE id = ?", [ok_id])  # a run gone (as quarantine moves one)
    assert ok_id not in set(studio.ok_runs()["id"]) and studio._ok_runs.generation == 1
    # an outcome written late: a running row finished with a time before the last one seen
    rid = store.start_run({"model": "emoji-sd", "prompts": ["a"], "seeds": [0]}, config_hash="late")
    store.finish_run(store.start_run({"model": "emoji-sd", "prompts": ["b"], "seeds": [0]}, config_hash="now"),
                     {"latency_median_ms": 10.0, "psnr": 20.0})
    studio.ok_runs()
    store.db.execute("UPDATE runs SET status = 'ok', finished_at = '2000-01-01', psnr = 1.0, "
                     "latency_median_ms = 1.0 WHERE id = ?", [rid])
    assert rid in set(studio.ok_runs()["id"]) and studio._ok_runs.generation == 2
    pd.testing.assert_frame_equal(studio.ok_runs(), _fresh_ok(store))
    # both at once, so the count still adds up: the sum of the ids does not
    late = store.start_run({"model": "emoji-sd", "prompts": ["c"], "seeds": [0]}, config_hash="late again")
    store.finish_run(store.start_run({"model": "emoji-sd", "prompts": ["d"], "seeds": [0]}, config_hash="now 2"),
                     {"latency_median_ms": 10.0, "psnr": 20.0})
    studio.ok_runs()
    store.db.execute("DELETE FROM runs WHERE id = ?", [int(studio.ok_runs()["id"].iloc[7])])
    store.db.execute("UPDATE runs SET status = 'ok', finished_at = '2000-01-01' WHERE id = ?", [late])
    assert late in set(studio.ok_runs()["id"]) and studio._ok_runs.generation == 3
    pd.testing.assert_frame_equal(studio.ok_runs(), _fresh_ok(store))
    assert _figure(studio.frontier(*FRONTIER)) == _fresh_frontier(store, *FRONTIER)


def test_classify_by_sorting_gives_what_comparing_every_pair_gives():
    """``classify`` judges a setup by sorting; the rule it implements, pair by pair, must give the same verdicts
    and the same runs named, ties included (equal costs, equal qualities, touching intervals, one repeat)."""
    rng = random.Random(3)
    for trial in range(150):
        rows = []
        for i in range(rng.choice([1, 2, 3, 6, 20, 60])):
            median = rng.choice([100.0, 101.0, 110.0, round(rng.uniform(50, 200), rng.choice([0, 1]))])
            row = {"id": i + 1, "latency_median_ms": median, "psnr": rng.choice([20.0, 25.0, rng.uniform(15, 35)]),
                   "model": rng.choice(["a", "b"]), "threads": rng.choice([2, 2.0, None])}
            if rng.random() < 0.6:
                row.update(latency_iqr_ms=rng.choice([0.0, 10.0, rng.uniform(0, 60)]), latency_min_ms=median - 30,
                           latency_max_ms=median + 30)
            rows.append(row)
        judged = frontier.classify(rows)
        assert _pairwise(pd.DataFrame(rows)) == list(zip(judged["front_status"], judged["tied_with"],
                                                          judged["dominated_by"])), trial


def _pairwise(df: pd.DataFrame) -> list[tuple]:
    """The rule as ``classify`` states it, every run against every other run of its setup."""
    rows = df.to_dict("records")
    cost = [float(r["latency_median_ms"]) for r in rows]
    quality = [float(r["psnr"]) for r in rows]
    lows, highs = zip(*(frontier.cost_interval(r) for r in rows))
    out = [None] * len(rows)
    for _, group in frontier.setups(df):
        members = list(group.index)
        front = set(frontier.pareto_front(group).index)
        for b in members:
            if b in front:
                out[b] = ("front", None, None)
                continue
            beaten = [a for a in members if a != b and frontier.dominates_beyond_noise(
                (lows[a], highs[a], quality[a]), (lows[b], highs[b], quality[b]))]
            if beaten:
                a = min(beaten, key=lambda a: (a not in front, cost[a], -quality[a], a))
                out[b] = ("dominated", None, rows[a]["id"])
                continue
            over = [a for a in front if cost[a] <= cost[b] and quality[a] >= quality[b]]
            out[b] = ("tied", rows[max(over, key=lambda a: (cost[a], quality[a], -a))]["id"], None)
    return out


def test_the_figure_reads_only_its_columns_and_past_the_limit_keeps_the_front_whole(study, monkeypatch):
    store, studio = study
    whole = store.runs_frame(matching={"status": "ok"})
    for color in plots.GROUPS:
        for cost, quality, spread in (("latency_median_ms", "psnr", True), ("peak_mem_bytes", "ssim", False)):
            full = plots.make_frontier_plot(whole, quality, cost, color, "model", [3], spread=spread)
            mine = plots.make_frontier_plot(whole[list(plots.FRONTIER_COLUMNS)], quality, cost, color, "model", [3],
                                            spread=spread)
            assert _figure(full) == _figure(mine), color
    monkeypatch.setattr(plots, "HOVER_LIMIT", 40)
    selected = int(whole["id"].iloc[-1])
    fig = plots.make_frontier_plot(whole, selected=[selected])
    judged = frontier.classify(whole).set_index("id")
    runs = [t for t in fig.data if t.customdata is not None]
    shown = [int(i) for t in runs for i in t.customdata]
    assert sorted(shown) == sorted(judged.index)  # every run once
    detailed = {int(i) for t in runs if t.hovertext is not None for i in t.customdata}
    assert len(detailed) == 40 and selected in detailed
    assert set(judged.index[judged["front_status"] == "front"]) <= detailed
    small = [t for t in runs if t.hovertext is None]
    assert small and all(t.type == "scattergl" and "run %{customdata}: " in t.hovertemplate for t in small)
    assert f"{len(shown) - 40:,} runs off the front drawn small" in fig.layout.title.text


# ------------------------------------------------------------------------------------------ choices and the timer
def test_filter_choices_are_kept_until_the_study_changes_and_follow_a_new_model(study, sources, monkeypatch):
    store, studio = study
    reads = []
    distinct = store.distinct_values
    monkeypatch.setattr(store, "distinct_values", lambda column: reads.append(column) or distinct(column))
    models, sets, sweeps, runs = studio.filter_choices()
    assert models == ["(all)", *sorted(set(store.runs_frame()["model"]))] and "(custom prompts)" in sets
    assert len(sweeps) == 1 + len(store.sweeps()) and [i for _, i in runs] == sorted(
        store.runs_frame(matching={"status": "ok"})["id"], reverse=True)
    assert studio.filter_choices()[0] is models and reads == ["model", "prompt_set"]  # kept: nothing read again
    store.add_finished_runs([{**sources[0], "model": "studio/new-model"}])
    assert "studio/new-model" in studio.filter_choices()[0] and len(reads) == 4
    # the run pickers offer the newest runs, and keep a run they hold from further back
    monkeypatch.setattr("app.handlers.RUN_CHOICES", 10)
    studio._choices = None
    oldest = int(store.runs_frame(matching={"status": "ok"})["id"].iloc[0])
    choices = studio.run_choices([oldest])
    assert len(choices) == 11 and choices[0][1] == oldest and choices[0][0].startswith(f"{oldest}: ")
    full = store.runs_frame(matching={"status": "ok"})
    assert choices[1:] == tables.run_choices(full.tail(10))  # the labels a whole row gives


def test_the_timer_does_nothing_while_the_study_is_unchanged(tmp_path, sources, monkeypatch):
    from app.layout import build_demo

    build_study(tmp_path / "study", sources, 200, seed=4).close()
    demo = build_demo("emoji-sd", tmp_path / "study", reference=REF)
    studio = demo.studio
    tick = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "tick")
    version = studio.study_version()
    for name in ("frontier", "filter_choices", "sweep_choices", "ok_runs"):
        monkeypatch.setattr(studio, name, lambda *a, _n=name, **k: pytest.fail(f"the quiet timer called {_n}"))
    monkeypatch.setattr(studio.store, "runs_since", lambda *a, **k: pytest.fail("the quiet timer read runs"))
    out = tick(version, *FRONTIER, False, False)
    assert all(isinstance(u, type(gr.skip())) and u == gr.skip() for u in out)
    monkeypatch.undo()
    studio.store.add_finished_runs([dict(sources[0])])
    out = tick(version, *FRONTIER, False, False)
    n_ok = len(studio.store.runs_frame(matching={"status": "ok"}))
    assert out[-1] == studio.study_version() != version and f": {n_ok} runs" in out[0].layout.title.text
    studio.store.close()


# ------------------------------------------------------------------------------------------ the Runs table
def test_the_runs_table_pages_newest_first_with_its_totals(study, sources):
    store, studio = study
    _more(store, sources, 50, seed=9, first=5000)
    everything = store.runs_frame()
    newest = list(everything["id"])[::-1]
    table, line, page = studio.runs_page("(all)", "(all)", "(all)")
    assert page == 1 and list(table["run"]) == newest[:RUNS_PER_PAGE]
    assert line == "runs 1–100 of 350 (newest first) · page 1 of 4"
    table, line, page = studio.runs_page("(all)", "(all)", "(all)", 4)
    assert list(table["run"]) == newest[300:] and line.startswith("runs 301–350 of 350")
    assert studio.runs_page("(all)", "(all)", "(all)", 99)[2] == 4  # past the last: the last
    # the page shows what the whole table showed for those runs
    whole = tables.table_view(everything)
    first = studio.runs_page("(all)", "(all)", "(all)", 1)[0]
    pd.testing.assert_frame_equal(first, whole[list(first.columns)].head(RUNS_PER_PAGE), check_dtype=False)
    failed = store.runs_frame(matching={"status": "failed"})
    table, line, _page = studio.runs_page("failed", "(all)", "(all)")
    assert list(table["run"]) == list(failed["id"])[::-1] and f"of {len(failed)} " in line
    sweep = store.sweeps()[0]["id"]
    assert list(studio.runs_page("(all)", str(sweep), "emoji-sd")[0]["run"]) == list(
        store.runs_frame(matching={"sweep_id": sweep, "model": "emoji-sd"})["id"])[::-1][:RUNS_PER_PAGE]
    # the API keeps its shape: the first page, and the CSV of every filtered run
    table, csv_path = studio.runs_table("(all)", "(all)", "(all)")
    assert len(table) == RUNS_PER_PAGE and len(pd.read_csv(csv_path)) == 350
    for bad in ("x", 0, -2, 1.5):
        with pytest.raises(gr.Error, match="page"):
            studio.runs_page("(all)", "(all)", "(all)", bad)
    with pytest.raises(gr.Error, match="no run of model 'no-such'"):  # checked by an index look-up, not a read
        studio.runs_page("failed", "(all)", "no-such")


# ------------------------------------------------------------------------------------------ the CSV
def test_the_streamed_csv_is_what_the_whole_frame_writes(study, tmp_path, monkeypatch):
    """Written a few rows at a time, with whole numbers whose column only later meets a NULL, a float or text, and
    text with quotes, commas and newlines: byte for byte what ``runs_frame().to_csv`` writes."""
    store, studio = study
    monkeypatch.setattr(csv_stream, "CHUNK_ROWS", 7)
    monkeypatch.setattr(csv_stream.write_csv, "__defaults__", (7,))
    odd = [{"status": "ok", "model": 'a "quoted", model\nwith a newline', "nfe": 4, "warmup": 1, "psnr": 0.1 + 0.2},
           {"status": "failed", "model": "ünïcode ✓", "nfe": None, "warmup": "auto", "psnr": 1e-7},
           {"status": "ok", "model": "m", "nfe": 5, "warmup": 2.5, "psnr": 12345678901234567.0}]
    store.add_finished_runs(odd)
    for matching, where in ((None, None), ({"status": "ok"}, None), ({"model": "nothing"}, None),
                            (None, ("warmup IS NOT NULL", []))):
        target = tmp_path / "streamed.csv"
        args = where or ()
        n = store.export_csv(target, *args, matching=matching)
        frame = store.runs_frame(*args, matching=matching)
        frame.to_csv(tmp_path / "whole.csv", index=False)
        assert n == len(frame) and target.read_bytes() == (tmp_path / "whole.csv").read_bytes(), matching
    ro = RunStore(store.data_dir, read_only=True)
    ro.export_csv(tmp_path / "ro.csv")
    ro.runs_frame().to_csv(tmp_path / "whole.csv", index=False)
    assert (tmp_path / "ro.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    ro.close()


def test_a_large_selection_writes_its_csv_when_download_is_pressed(study, monkeypatch):
    _store, studio = study
    assert studio.runs_csv("(all)", "(all)", "(all)")["label"] == "Download CSV"
    monkeypatch.setattr("app.handlers.CSV_AT_ONCE", 100)
    waiting = studio.runs_csv("(all)", "(all)", "(all)")
    assert waiting["value"] is None and waiting["label"] == "Prepare CSV of 300 runs"
    ready = studio.prepare_csv("(all)", "(all)", "(all)", None)
    assert ready["label"] == "Download CSV (ready)" and len(pd.read_csv(ready["value"])) == 300
    assert studio.prepare_csv("(all)", "(all)", "(all)", ready["value"]) == gr.skip()  # held: the browser downloads
