"""The studio in the browser: Generate, Sweep, Frontier, Compare and Runs over one study.

``build_demo`` lays out the tabs first and wires the events last; what each event does is a method
of ``app.handlers.Studio``, which reaches the engine and the store through one
``studio_core.study.service.StudyService``. Building the page never imports torch or diffusers.

Load: generations and sweeps pass the service's device queue (at most ``max_waiting`` admitted, one
on the device; one more is refused at once with "The studio is busy ..."). Their gradio events have
no concurrency limit so a request reaches that check at once; the device lock, not gradio's queue,
puts them in line, so a measurement is never timed beside another. Reads (frontier, tables, compare,
details, CSV) never pass the device queue and answer while a run goes on; gradio's queue holds at
most ``queue_size`` events in all.

Sweep grids are drawn from the store (a sweep's recorded axes and its runs), so any recorded sweep's
grid can be shown without running anything: the Sweep tab's picker, ``/sweep_grid``.

A study of 100k runs stays live (issue 22): the timer reads only the study's version while nothing changes; the
Frontier reads only the runs new or finished since its last draw (``app.kept_runs``); the filters' choices are the
distinct values the store keeps indexed; the run pickers offer the newest runs (and those they hold); the Runs tab
shows a page of 100 runs; and a large selection's CSV is written when Download is pressed.

Demo mode (``read_only=True``): the study is opened read-only and no engine is made. Frontier, sweep
grids, Compare, Runs, details and CSV work; under a banner ("Read-only demo of <study>: generation
and sweeps are off") the Generate form and the sweep builder are hidden and disabled, and every
endpoint that would run or write (``/build_spec``, ``/generate``, ``/build_sweep``, ``/sweep``,
``/cancel_sweep``, ``/cancel_generation``) answers with the banner's message. The page names the study by its folder,
never by its path on the server.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import gradio as gr

from app import cards, compare, grid, plots, tables, widgets
from app.handlers import NO_AXIS, RUNS_PER_PAGE, THUMB_PX, Studio
from studio_core.errors import ModelLoadError, SpecError
from studio_core.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODELS, list_cached_pipelines, shipped_embedded_models
from studio_core.prompts import PROMPT_SETS
from studio_core.spec import DEVICES, model_info
from studio_core.store.store import RunStore
from studio_core.study import labels
from studio_core.study.frontier import COSTS, QUALITIES
from studio_core.study.service import StudyService

__all__ = ["FRONTIER_CLICK_JS", "PAGE_CSS", "build_demo"]

# (label, value) of what frontier points can be coloured or marked by; the values are the run columns the API has
# always taken, plus "configuration" (sampler and active knobs)
COLOR_COLUMNS = [(label, value) for value, label in plots.GROUPS.items()]
STATUSES = [tables.ALL, "ok", "failed", "running", "interrupted", "cancelled"]
# the page's own CSS rules (component HTML cannot carry <style>): one comment per rule, tab by tab
PAGE_CSS = """
/* Generate: the results column stays in view beside the form while the knob groups opened make it longer */
#generate-results { position: sticky; top: 8px; align-self: flex-start; }
/* Generate: while a run goes, its progress bar replaces the hint beside the button instead of covering it */
#generate-progress .pending { visibility: hidden; }
/* Runs: the pager's buttons, page box and "runs 101–200 of ..." line sit on one line, centred on it */
#runs-pager { align-items: center; }
"""
# the page-load hook that turns a click on a frontier point into that run's id (plotly has no gradio click event)
FRONTIER_CLICK_JS = Path(__file__).parent / "static" / "frontier_click.js"
# the page-load hook that turns a click on a sweep grid's cell into that run's id (HTML has no click event)
GRID_CLICK_JS = Path(__file__).parent / "static" / "grid_click.js"


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
    store = RunStore(data_dir, read_only=read_only)  # read-only: StoreError naming the path when there is no study
    studio = Studio(StudyService(store, reference=reference, max_waiting=max_waiting))  # the engine comes later
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
    axes = [(labels.axis_label(a), a) for a in widgets.axis_choices()]  # named for people, sent as paths
    models = [model] if read_only else shipped_embedded_models() + [repo for repo, _ in list_cached_pipelines()]
    if model not in models:
        models.insert(0, model)
    off = not read_only  # the Generate and Sweep controls work
    active_text = widgets.active_summary({s.axis: defaults.get(s.name, s.default) for s in settings}, {})

    with warnings.catch_warnings():  # gradio 6 takes css= in launch(); given here, every launcher gets it
        warnings.filterwarnings("ignore", message="The parameters have been moved", category=UserWarning)
        demo = gr.Blocks(title="Diffusion Efficiency Studio", css=PAGE_CSS)
    with demo:
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
                with gr.Row(visible=off, equal_height=False):  # kept (hidden) in a demo: its endpoints answer
                    with gr.Column(scale=5, min_width=420, elem_id="generate-form"):
                        with gr.Row():
                            model_box = gr.Dropdown(models, value=model, allow_custom_value=True, label="Model",
                                                    info=f"{' or '.join(EMBEDDED_MODELS)} (embedded), a diffusers "
                                                         "folder, or a cached repo id", elem_id="model", scale=3)
                            prompt_set = gr.Dropdown([widgets.NO_PROMPT_SET, *PROMPT_SETS], label="Prompt set",
                                                     value=widgets.NO_PROMPT_SET, elem_id="prompt-set", scale=2,
                                                     min_width=160)
                        model_text = gr.Markdown(elem_id="model-line")
                        with gr.Row():
                            prompts = gr.Textbox("grinning face", lines=2, label="Prompts (one per line)",
                                                 elem_id="prompts", scale=3)
                            seeds = gr.Textbox("0", label="Seeds", info="e.g. 0, 1, 2 or 0-3", elem_id="seeds",
                                               scale=1, min_width=120)
                        boxes: dict = {}  # setting axis -> its widget, made in the form's order
                        with gr.Row():  # what every run sets, from the model's defaults: always in view
                            for knob in builtin_knobs:
                                for s in widgets.knob_settings(knob):
                                    if widgets.is_core(s):
                                        boxes[s.axis] = widgets.setting_widget(knob, s, defaults)
                        with gr.Row(equal_height=True, elem_id="generate-bar"):
                            generate_btn = gr.Button("Generate" if off else "Generate (off in this read-only demo)",
                                                     variant="primary", elem_id="generate-btn", interactive=off,
                                                     scale=1, min_width=150)
                            gen_cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-generate", scale=0,
                                                       min_width=90, visible=off)
                            # the run's progress shows here, beside the button (show_progress_on below)
                            gen_progress = gr.Markdown("A run waits in line for the device, warms up, then times its "
                                                       "repeats; its progress shows here.", elem_id="generate-progress",
                                                       scale=2, min_width=240, min_height=48)
                        active_md = gr.Markdown(active_text, elem_id="active-knobs")
                        enabled_by: dict = {}  # knob name -> its "use" box
                        for group, members in widgets.knob_groups(knobs):  # closed: the button stays near the top
                            with gr.Accordion(widgets.group_label(group, members), open=False,
                                              elem_id="group-" + "-".join(group.replace("&", " ").split())):
                                for knob in members:
                                    own = [s for s in widgets.knob_settings(knob) if not widgets.is_core(s)]
                                    with gr.Group():
                                        if not knob.builtin_field:
                                            enabled_by[knob.name] = gr.Checkbox(False, label=f"use {knob.title}",
                                                                                info=knob.description,
                                                                                elem_id=f"use-{knob.name}")
                                        for line in widgets.setting_rows(own):
                                            with gr.Row():
                                                for s in line:
                                                    boxes[s.axis] = widgets.setting_widget(knob, s, defaults)
                        with gr.Accordion("Measurement", open=False, elem_id="measurement"):
                            with gr.Row():
                                warmup = gr.Number(0, precision=0, minimum=0, label="Warm-up calls (0 = auto)", elem_id="warmup")
                                repeats = gr.Number(0, precision=0, minimum=0, label="Timed repeats (0 = auto)",
                                                    info="auto: until the median's 95% CI is within ±5% (6-30)",
                                                    elem_id="repeats")
                            with gr.Row():
                                device = gr.Dropdown(list(DEVICES), value="auto", label="Device")
                                batch = gr.Number(None, precision=0, minimum=0, label="Batch size", elem_id="batch",
                                                  placeholder="all", info="images per pipeline call; blank or 0 = "
                                                                          "all images in one call")
                            distribution = gr.Number(0, precision=0, minimum=0, label="Distribution set (images)",
                                                     elem_id="distribution",
                                                     info="emoji models: also draw this many images over as many "
                                                          "training captions, timed apart, for FD-emoji, KID and "
                                                          "precision/recall (0 = none; 500 recommended)")
                        with gr.Accordion("Run spec (what the engine receives)", open=False):
                            spec_json = gr.JSON(label="run spec", elem_id="spec-json")
                    with gr.Column(scale=6, min_width=480, elem_id="generate-results"):
                        gallery = gr.Gallery(label="Images (nearest-neighbour upscaled)", format="png", columns=4,
                                             height=230, object_fit="contain", fit_columns=False,
                                             elem_id="gallery")
                        baseline_box = gr.Dropdown([], value=None, label="Baseline run",
                                                   info="pin a finished run: the card compares against it",
                                                   elem_id="baseline-run")
                        card = gr.Markdown(cards.EMPTY_CARD, elem_id="metrics-card")
                        shown_run = gr.State(None)  # the run the card shows: redrawn when the baseline changes
            setting_boxes = [boxes[s.axis] for s in settings]  # the order widgets.split_values reads them in
            enables = [enabled_by[name] for name in knob_names]
            gen_inputs = [model_box, prompts, prompt_set, seeds, warmup, repeats, device, batch, distribution,
                          *setting_boxes, *enables]

            # ---------------------------------------------------------------- 2. Sweep
            with gr.Tab("Sweep", id="sweep") as sweep_tab:
                with gr.Column(visible=off):  # a demo shows recorded grids only
                    gr.Markdown("Runs a grid over the **Generate tab's settings** as the base: pick up to three axes "
                                "(X across, Y down, Z one table each) and comma-separated values. A knob's axis "
                                "also takes `off`: that cell runs without the knob, the baseline in the same grid.")
                    axis_rows = []
                    for name, axis, vals in (("X", "steps", "4, 8"), ("Y", "sampler", "DDIM, DPM++ 2M"),
                                             ("Z", NO_AXIS, "")):
                        with gr.Row():
                            a = gr.Dropdown([(NO_AXIS, NO_AXIS), *axes] if name != "X" else axes, value=axis,
                                            label=f"{name} axis", elem_id=f"axis-{name.lower()}", scale=1)
                            v = gr.Textbox(vals, label=f"{name} values", elem_id=f"values-{name.lower()}", scale=2,
                                           info=widgets.axis_hint(axis) if axis != NO_AXIS else "")
                        axis_rows += [a, v]
                    with gr.Row():
                        sweep_name = gr.Textbox("", label="Name", placeholder="ui sweep: <axes>", scale=1,
                                                elem_id="sweep-name")
                        question = gr.Textbox("", label="Question it answers", scale=2, elem_id="sweep-question")
                        rerun = gr.Checkbox(False, label="run again even if this sweep already finished", scale=1)
                    workers = gr.Textbox("", label="Workers", placeholder="this process", elem_id="sweep-workers",
                                         interactive=off, info="blank: this process · cuda:0,cuda:1: one pinned worker "
                                         "per GPU · ray:auto, ray:HOST:PORT or ray:local: a Ray cluster (README)")
                    estimate_md = gr.Markdown(elem_id="sweep-estimate")
                    with gr.Accordion("Sweep spec as YAML: save it under presets/ to run it with "
                                      "python -m studio_core sweep", open=False, elem_id="sweep-spec-box"):
                        sweep_yaml = gr.Code(language="yaml", interactive=False, show_label=False,
                                             elem_id="sweep-spec")
                    sweep_json = gr.JSON(visible=False)  # the sweep Start sends on (the /sweep API takes it)
                    with gr.Row():
                        start_btn = gr.Button("Start sweep" if off else "Start sweep (off in this read-only demo)",
                                              variant="primary", elem_id="start-sweep", interactive=off)
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-sweep", visible=off)
                    sweep_status = gr.Markdown(elem_id="sweep-status")
                with gr.Row(equal_height=True):
                    sweep_pick = gr.Dropdown([], value=None, label="Show the grid of a recorded sweep",
                                             elem_id="sweep-pick", scale=3)
                    thumb_size = gr.Radio(list(grid.THUMB_SIZES), value=THUMB_PX, label="Thumbnail size (px)",
                                          elem_id="thumb-size", scale=1, min_width=220)
                grid_html = gr.HTML(elem_id="sweep-grid")
                grid_sweep = gr.State(None)  # the id of the sweep the grid shows: redrawn at another size
                grid_click = gr.Textbox(visible="hidden", elem_id="grid-click")  # written by grid_click.js
                cell_gallery = gr.Gallery(label="A cell's images at full size", format="png", columns=6, height=560,
                                          object_fit="contain", preview=True, fit_columns=False, visible=False,
                                          elem_id="grid-cell")  # shown once a cell is clicked

            # ---------------------------------------------------------------- 3. Frontier
            with gr.Tab("Frontier", id="frontier"):
                with gr.Row():
                    quality = gr.Dropdown([(plots.QUALITY_LABELS.get(q, q), q) for q in QUALITIES], value="psnr",
                                          label="Quality", elem_id="f-quality")
                    cost = gr.Dropdown([(v, k) for k, v in COSTS.items()], value="latency_median_ms", label="Cost",
                                       elem_id="f-cost")
                    color = gr.Dropdown(COLOR_COLUMNS, value="configuration", label="Colour by", elem_id="f-color")
                    symbol = gr.Dropdown([(NO_AXIS, NO_AXIS), *COLOR_COLUMNS], value=NO_AXIS, label="Symbol by",
                                         elem_id="f-symbol")
                    with gr.Column(scale=0, min_width=190):
                        log_x = gr.Checkbox(False, label="log cost axis", elem_id="f-log-x")
                        spread = gr.Checkbox(False, label="latency spread (IQR bars)", elem_id="f-spread")
                with gr.Row():
                    # the filters' choices arrive after the page loads, so any value is let through and the
                    # handler checks it (``Studio._filters``): API callers filter by real sweep ids and models
                    f_model = gr.Dropdown([tables.ALL], value=tables.ALL, label="Model", allow_custom_value=True)
                    f_set = gr.Dropdown([tables.ALL], value=tables.ALL, label="Prompt set", allow_custom_value=True)
                    f_sweep = gr.Dropdown([(tables.ALL, tables.ALL)], value=tables.ALL, label="Sweep",
                                          allow_custom_value=True)
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

            # ---------------------------------------------------------------- 4. Compare
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    compare_ids = gr.Dropdown([], value=[], multiselect=True, max_choices=4, scale=4,
                                              label="Runs (2-4; the first is the baseline)", elem_id="compare-ids")
                    compare_btn = gr.Button("Compare", scale=1, elem_id="compare-btn")
                compare_view = gr.HTML(compare.compare_html([], {}), elem_id="compare-view")
                # hidden until two runs are compared: an empty table would show placeholder headers
                settings_df = gr.Dataframe(label="Settings that differ", interactive=False, wrap=True, visible=False,
                                           elem_id="compare-settings", max_height=600)
                deltas_df = gr.Dataframe(label="Metrics (later runs: change vs the first)", interactive=False,
                                         wrap=True, visible=False, elem_id="compare-metrics", max_height=800)

            # ---------------------------------------------------------------- 5. Runs
            with gr.Tab("Runs", id="runs") as runs_tab:
                with gr.Row():
                    r_status = gr.Dropdown(STATUSES, value=tables.ALL, label="Status", elem_id="r-status")
                    r_sweep = gr.Dropdown([(tables.ALL, tables.ALL)], value=tables.ALL, label="Sweep",
                                          allow_custom_value=True)  # checked by the handler, as the Frontier's
                    r_model = gr.Dropdown([tables.ALL], value=tables.ALL, label="Model", allow_custom_value=True)
                    refresh_btn = gr.Button("Refresh", scale=0)
                    download = gr.DownloadButton("Download CSV", elem_id="download-csv", scale=0)
                table = gr.Dataframe(interactive=False, max_height=420, elem_id="runs-table", pinned_columns=1,
                                     label=f"Runs, newest first, {RUNS_PER_PAGE} to a page: click a row for its "
                                           "details, a header to sort the page. The CSV has every column of every "
                                           "run the filters pick.")
                with gr.Row(elem_id="runs-pager"):  # where the page lies, and the way to the next
                    newer_btn = gr.Button("◀ Newer", size="sm", scale=0, min_width=90, elem_id="runs-newer")
                    r_page = gr.Number(1, precision=0, minimum=1, label="Page", show_label=False, container=False,
                                       scale=0, min_width=80, elem_id="r-page")
                    older_btn = gr.Button("Older ▶", size="sm", scale=0, min_width=90, elem_id="runs-older")
                    page_line = gr.Markdown(elem_id="runs-page-line")
                with gr.Row():
                    # text, not a number box: an empty number box would read "0", which is no run
                    run_id = gr.Textbox("", label="Run id", placeholder="click a row, or type an id", scale=0,
                                        min_width=200, elem_id="run-id")
                    show_btn = gr.Button("Show details", scale=0)
                with gr.Row():
                    with gr.Column(scale=3):
                        detail_card = gr.Markdown(elem_id="run-details")
                        with gr.Accordion("Full configuration (the run spec as JSON, to copy)", open=False):
                            detail_json = gr.JSON(label="full configuration")
                    with gr.Column(scale=2):
                        detail_gallery = gr.Gallery(label="Images", format="png", columns=4, height=320,
                                                    object_fit="contain", fit_columns=False)

        # outside the tabs, so it ticks whichever tab is open: a tab's components mount only once it is shown, and
        # a timer inside the Frontier tab left the recorded sweeps and the filters stale until it was opened
        timer = gr.Timer(timer_s, active=off)  # a demo's study never changes
        version = gr.State(None)  # study_version() when the filters were last refreshed
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

        def sweep_parts(values):
            """The Sweep tab's values (the Generate form, three axes, name, question) as ``sweep_dict`` takes them."""
            xa, xv, ya, yv, za, zv, name, q = values[n_gen:]
            return (widgets.split_values(values[:n_gen], settings, knob_names), [(xa, xv), (ya, yv), (za, zv)],
                    name, q)

        def build_sweep(*values):
            studio.refuse_in_demo()
            try:
                sweep = studio.sweep_dict(*sweep_parts(values))
                return sweep, studio.estimate(sweep)
            except Exception as exc:
                raise studio.error(exc) from None

        def preview(*values):
            return studio.sweep_preview(*sweep_parts(values))

        def model_changed(m):
            return studio.model_changed(m, settings, extra_knobs)

        def active_line(*values):
            return widgets.active_summary(dict(zip((s.axis for s in settings), values[:n_settings])),
                                          dict(zip(knob_names, values[n_settings:])))

        # Generate: check the spec at once (outside the device queue), then measure it. No gradio limit:
        # the handler admits or refuses at once, and the device lock puts admitted runs in line. Progress
        # shows once, beside the button; the card compares with the pinned baseline, and is redrawn when
        # another is pinned. The "Active:" line follows the knob widgets.
        if not read_only:
            model_box.change(model_changed, model_box, [*setting_boxes[:n_settings], model_text, *enables],
                             api_visibility="private", trigger_mode="always_last")
            knob_widgets = [b for s, b in zip(settings, setting_boxes) if not widgets.is_core(s)] + enables
            gr.on([b.change for b in knob_widgets], active_line, [*setting_boxes, *enables], active_md,
                  api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        generate_btn.click(build_spec, gen_inputs, spec_json, api_name="build_spec", show_progress="hidden").success(
            studio.generate, [spec_json, baseline_box], [gallery, card, shown_run], api_name="generate",
            concurrency_id="gpu", concurrency_limit=None, show_progress_on=gen_progress)
        # Cancel: out of the line, or stopped after the denoiser step in progress (recorded "cancelled")
        gen_cancel_btn.click(studio.cancel_generation, None, gen_progress, api_name="cancel_generation",
                             concurrency_limit=None, show_progress="hidden")
        baseline_box.focus(lambda held: gr.update(choices=studio.run_choices(held)), baseline_box, baseline_box,
                           api_visibility="private", show_progress="hidden")
        baseline_box.change(studio.shown_card, [shown_run, baseline_box], card, api_visibility="private",
                            show_progress="hidden")

        # Sweep: number of runs, estimate and YAML spec before starting, checked again on every change of any input
        # (the Generate form is the base); grid after every run; Cancel between runs; a clicked cell's images
        sweep_inputs = gen_inputs + axis_rows + [sweep_name, question]
        if not read_only:
            # one listener for all of them: "always_last" then runs the newest values after the check in flight,
            # so an older check (an error since corrected) can never land after a newer one
            gr.on([sweep_tab.select, *[c.change for c in sweep_inputs]], preview, sweep_inputs,
                  [estimate_md, sweep_yaml], api_visibility="private", trigger_mode="always_last",
                  show_progress="hidden")
            for a, v in zip(axis_rows[::2], axis_rows[1::2]):
                a.change(lambda axis: gr.update(info=widgets.axis_hint(axis) if axis != NO_AXIS else ""), a, v,
                         api_visibility="private", show_progress="hidden")
        sweep_run = start_btn.click(build_sweep, sweep_inputs, [sweep_json, estimate_md],
                                    api_name="build_sweep").success(
            studio.run_sweep, [sweep_json, rerun, thumb_size, workers], [grid_html, sweep_status, grid_sweep],
            api_name="sweep",
            concurrency_id="gpu", concurrency_limit=None)
        cancel_btn.click(studio.cancel, None, sweep_status, api_name="cancel_sweep", concurrency_limit=None)
        # any recorded sweep's grid, without running anything (ids come raw: parse_id checks them)
        sweep_pick.change(studio.picked_grid, [sweep_pick, thumb_size], [grid_html, grid_sweep], api_name="sweep_grid",
                          preprocess=False)
        thumb_size.change(studio.grid, [grid_sweep, thumb_size], grid_html, api_visibility="private",
                          show_progress="hidden")
        grid_click.change(studio.cell_images, grid_click, cell_gallery, api_visibility="private")
        demo.load(None, None, None, js=GRID_CLICK_JS.read_text(encoding="utf-8"), api_visibility="private")

        # Frontier: redraw on any control, and when the store changes (polled; also during a sweep)
        f_inputs = [quality, cost, color, symbol, f_model, f_set, f_sweep, selection, log_x, spread]

        def refresh_filters():
            models_, sets_, sweeps_, _runs = studio.filter_choices()
            return (gr.update(choices=models_), gr.update(choices=sets_), gr.update(choices=sweeps_),
                    gr.update(choices=sweeps_), gr.update(choices=models_),
                    gr.update(choices=studio.sweep_choices()), studio.study_version())

        def newest_sweep(current):
            """A demo opens the Sweep tab on its newest sweep's grid."""
            choices = studio.sweep_choices()
            return gr.update(choices=choices, value=current or (choices[0][1] if choices else None))

        def run_choices(held):
            """A run picker's choices: the newest runs, and those it holds (``Studio.run_choices``)."""
            return gr.update(choices=studio.run_choices(held))

        # the timer never writes the run pickers: an update racing a click could undo it. They refresh
        # their choices when focused, and a click sets choices and value together.
        filter_outputs = [f_model, f_set, f_sweep, r_sweep, r_model, sweep_pick, version]

        def tick(ver, *f_values):  # nothing read but the study's version while it does not change
            if studio.study_version() == ver:
                return [gr.skip()] * (len(filter_outputs) + 1)
            return [studio.frontier(*f_values), *refresh_filters()]

        for comp in f_inputs:
            comp.change(studio.frontier, f_inputs, plot, api_visibility="private", show_progress="hidden")
        timer.tick(tick, [version, *f_inputs], [plot, *filter_outputs], api_visibility="private",
                   show_progress="hidden", concurrency_limit=None)
        # the recorded sweeps and sweep filters follow a sweep's start (the timer) and its end at once, the picker
        # then naming the sweep the grid shows; the Runs tab's Refresh brings them up to date too
        sweep_run.then(refresh_filters, None, filter_outputs, api_visibility="private", show_progress="hidden").then(
            lambda sid: gr.update(choices=studio.sweep_choices(), value=sid), grid_sweep, sweep_pick,
            api_visibility="private", show_progress="hidden")
        refresh_btn.click(refresh_filters, None, filter_outputs, api_visibility="private", show_progress="hidden")
        for picker in (selection, compare_ids):
            picker.focus(run_choices, picker, picker, api_visibility="private", show_progress="hidden")
        click_box.change(studio.clicked, [click_box, selection], [thumb, thumb_md, selection],
                         api_visibility="private")
        to_compare.click(lambda ids: (gr.update(choices=studio.run_choices(ids), value=ids),
                                      gr.Tabs(selected="compare")),
                         selection, [compare_ids, tabs], api_visibility="private").then(
            studio.compare, compare_ids, [compare_view, settings_df, deltas_df], api_visibility="private").then(
            studio.compare_tables, compare_ids, [settings_df, deltas_df], api_visibility="private")
        gr.Button(visible=False).click(studio.frontier, f_inputs, plot, api_name="plot_frontier")

        # Compare
        compare_btn.click(studio.compare, compare_ids, [compare_view, settings_df, deltas_df], api_name="compare_runs",
                          preprocess=False).then(studio.compare_tables, compare_ids, [settings_df, deltas_df],
                                                 api_visibility="private")

        # Runs: a page of the table follows the filters and the pager; the CSV on the Download button follows the
        # filters (written with the table up to CSV_AT_ONCE runs, past that when Download is pressed); a row click
        # shows that run
        r_inputs = [r_status, r_sweep, r_model]
        paged = [table, page_line, r_page]

        def first_page(status, sweep, model):
            return studio.runs_view(status, sweep, model, 1)

        def turn(by: int):
            return lambda status, sweep, model, page: studio.runs_page(status, sweep, model,
                                                                       max(1, studio.page_number(page) + by))

        for comp in r_inputs:
            comp.change(first_page, r_inputs, [*paged, download], api_visibility="private")
        refresh_btn.click(studio.runs_view, [*r_inputs, r_page], [*paged, download], api_visibility="private")
        runs_tab.select(studio.runs_view, [*r_inputs, r_page], [*paged, download], api_visibility="private")
        newer_btn.click(turn(-1), [*r_inputs, r_page], paged, api_visibility="private")
        older_btn.click(turn(+1), [*r_inputs, r_page], paged, api_visibility="private")
        r_page.submit(studio.runs_page, [*r_inputs, r_page], paged, api_visibility="private")
        download.click(studio.prepare_csv, [*r_inputs, download], download, api_visibility="private")
        # the API: a page of the table (the first unless asked) and the CSV of every filtered run
        gr.Button(visible=False).click(studio.runs_table, [*r_inputs, r_page], [table, download], api_name="runs")
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
            run_choices, selection, selection, api_visibility="private").then(
            run_choices, compare_ids, compare_ids, api_visibility="private").then(
            studio.frontier, f_inputs, plot, api_visibility="private").then(
            studio.runs_view, [*r_inputs, r_page], [*paged, download], api_visibility="private")
        demo.load(None, None, None, js=FRONTIER_CLICK_JS.read_text(encoding="utf-8"), api_visibility="private")

    demo.studio = studio  # for tests and scripts: the engine and store behind this page
    demo.queue(max_size=queue_size, default_concurrency_limit=4)
    return demo
