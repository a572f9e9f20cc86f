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

Demo mode (``read_only=True``): the study is opened read-only and no engine is made. Frontier, sweep
grids, Compare, Runs, details and CSV work; under a banner ("Read-only demo of <study>: generation
and sweeps are off") the Generate form and the sweep builder are hidden and disabled, and every
endpoint that would run or write (``/build_spec``, ``/generate``, ``/build_sweep``, ``/sweep``,
``/cancel_sweep``) answers with the banner's message. The page names the study by its folder,
never by its path on the server.
"""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from app import tables, widgets
from app.handlers import NO_AXIS, Studio
from studio_core.errors import ModelLoadError, SpecError
from studio_core.models import EMBEDDED_MODEL_NAME, list_cached_pipelines
from studio_core.prompts import PROMPT_SETS
from studio_core.spec import DEVICES, model_info
from studio_core.store.store import RunStore
from studio_core.study.frontier import COSTS, QUALITIES
from studio_core.study.service import StudyService

__all__ = ["FRONTIER_CLICK_JS", "build_demo"]

COLOR_COLUMNS = ["sampler", "steps", "precision", "guidance", "knobs_label", "height", "sweep_id", "model",
                 "prompt_set", "device_name"]
STATUSES = [tables.ALL, "ok", "failed", "running", "interrupted"]
# the page-load hook that turns a click on a frontier point into that run's id (plotly has no gradio click event)
FRONTIER_CLICK_JS = Path(__file__).parent / "static" / "frontier_click.js"


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
                            for line in widgets.widget_lines(builtin_knobs):
                                with gr.Row():
                                    for knob in line:
                                        for s in widgets.knob_settings(knob):
                                            setting_boxes.append(widgets.setting_widget(knob, s, defaults))
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
                                                setting_boxes.append(widgets.setting_widget(knob, s, defaults))
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
            gen_inputs = [model_box, prompts, prompt_set, seeds, warmup, repeats, device, batch, *setting_boxes,
                          *enables]

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
                    f_model = gr.Dropdown([tables.ALL], value=tables.ALL, label="Model")
                    f_set = gr.Dropdown([tables.ALL], value=tables.ALL, label="Prompt set")
                    f_sweep = gr.Dropdown([(tables.ALL, tables.ALL)], value=tables.ALL, label="Sweep")
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
                    r_status = gr.Dropdown(STATUSES, value=tables.ALL, label="Status", elem_id="r-status")
                    r_sweep = gr.Dropdown([(tables.ALL, tables.ALL)], value=tables.ALL, label="Sweep")
                    r_model = gr.Dropdown([tables.ALL], value=tables.ALL, label="Model")
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
                    gr.update(choices=studio.sweep_choices()), store.runs_version())

        def newest_sweep(current):
            """A demo opens the Sweep tab on its newest sweep's grid."""
            choices = studio.sweep_choices()
            return gr.update(choices=choices, value=current or (choices[0][1] if choices else None))

        def run_choices():
            return gr.update(choices=studio.filter_choices()[3])

        # the timer never writes the run pickers: an update racing a click could undo it. They refresh
        # their choices when focused, and a click sets choices and value together.
        filter_outputs = [f_model, f_set, f_sweep, r_sweep, r_model, sweep_pick, version]

        def tick(ver, *f_values):
            if store.runs_version() == ver:
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
        demo.load(None, None, None, js=FRONTIER_CLICK_JS.read_text(encoding="utf-8"), api_visibility="private")

    demo.studio = studio  # for tests and scripts: the engine and store behind this page
    demo.queue(max_size=queue_size, default_concurrency_limit=4)
    return demo
