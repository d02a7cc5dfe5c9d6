"""The Gradio app: a header and one tab per step of the study. The only part of lora_demo that imports gradio.

Nothing heavy happens here: torch, transformers' models and the data load lazily inside the handlers, so
the first page is served within seconds.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import gradio as gr

from ..config import DEFAULT_MODEL, PRESETS, STUDY_REPORTED_ACCURACY, get_model_spec, recipe
from . import baseline, classify, compare, dataset, train, whole_study
from .errors import guard
from .session import RUN_SLOTS, UNQUEUED, SessionData, end_session, session_for

TITLE = "LoRA sentiment demo"


def study_text() -> str:
    """The header's account of the original study: its settings from the study preset, its reported accuracies."""
    preset = PRESETS["study"]
    lora, training = recipe(preset.recipe, get_model_spec(preset.model))
    epochs = "one epoch" if training.epochs == 1 else f"{training.epochs:g} epochs"
    return (
        "**What LoRA fine-tuning does to a small language model, on a CPU.** The original study took T5-small, "
        "which zero-shot answered *negative* for every IMDb review, and trained LoRA adapters (rank "
        f"{lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g} on the attention's query and value projections) "
        f"on {preset.train_size} reviews for {epochs}, training under 1% of the weights. It reported accuracy "
        f"{STUDY_REPORTED_ACCURACY['zero-shot']:.2f} before and {STUDY_REPORTED_ACCURACY['lora']:.2f} after; this "
        "app lets you repeat each step, from the data to the comparison, and try your own reviews."
    )


STUDY = study_text()
CSS = """
.gradio-container { max-width: 1240px !important; margin: auto; }
#header p { margin: 0.25em 0; }
/* on a phone a wide table scrolls inside its own box instead of widening the page, and every figure with it:
   its width must not come from its content (gradio lays its rows out in px), hence the containment */
.gradio-container .table-container, .gradio-container .table-wrap {
  max-width: 100%; overflow-x: auto; contain: inline-size;
}
/* and its columns keep a readable width there (they are set in % of the table): it scrolls sideways instead */
.gradio-container .table-wrap .virtual-table-viewport { min-width: 36rem; }
.gradio-container :is(#methods-table, #runs) .virtual-table-viewport { min-width: 64rem; }
.gradio-container .block, .gradio-container .form { min-width: 0; }
"""
QUEUE_SIZE = 16  # events waiting at most, over all sessions; past it users are told the app is busy
CACHE_HOURS = 1  # gradio's copies of uploads and downloads are deleted after this long
LAUNCH_OPTIONS = {
    "theme": gr.themes.Soft(),
    "css": CSS,
    "max_file_size": classify.MAX_BATCH_BYTES,  # every upload: a batch CSV or a data file
    "allowed_paths": [],  # gradio serves only the files it copied into its cache from the app's outputs
    "show_error": False,  # only gr.Error messages reach the browser; `guard` turns every other error into one
}


def header_markdown(model_name: str, data: str, warning: str | None = None) -> str:
    """The page header: the study, the active model and the data in words; `warning` marks the built-in sample."""
    spec = get_model_spec(model_name)
    text = f"# {TITLE}\n{STUDY}\n\n**Active model:** `{spec.name}` ({spec.description}). **Data:** {data}."
    if warning:
        text += f"\n\n> ⚠️ **Built-in sample in use.** {warning}"
    return text


def startup_source() -> str:
    """The source the CLI would use with no `--data`: `$LORA_DEMO_DATA`, else `hub` if it answers, else `sample`."""
    return _startup_source(os.environ.get("LORA_DEMO_DATA"), os.environ.get("HF_HUB_OFFLINE"))


@functools.lru_cache(maxsize=4)
def _startup_source(data_env, offline_env) -> str:
    # keyed by the environment it reads; asked once, not at every page load (the Hub check may take
    # `data.PROBE_TIMEOUT` seconds)
    from ..data import resolve_source

    return resolve_source(None)[0]


def session_header(session: SessionData) -> str:
    """The header for the session's model and data (before any load: the source the CLI would pick)."""
    from ..data import count_builtin

    splits = session.splits
    source = startup_source() if splits is None else splits.source
    data = dataset.source_words(source) if splits is None else dataset.splits_words(splits)
    warning = None
    if source == "builtin":
        warning = (
            f"The data is the {count_builtin():,} hand-written short reviews shipped with the app, not the IMDb data "
            "set: choose another source on the Dataset tab for the study's numbers."
        )
    return header_markdown(session.model_name, data, warning)


def page_load(session: SessionData, key: str | None, request: gr.Request) -> tuple:
    """When a page opens: the session it shows (the browser's own, if it reloads within `reattach_seconds()`;
    else this connection's new one, under a new key the browser keeps), the header, the data source and the loss
    chart.

    Done here rather than at build time so that startup imports no data or plotting libraries.
    """
    from ..plots import loss_figure

    session, key = session_for(key, session, request.session_hash)
    choices = gr.update(choices=dataset.source_choices(startup_source()))
    return session, key, session_header(session), choices, loss_figure([])


def show_session_data(session: SessionData) -> tuple:
    """A page that opens on a session with data (a reload) shows that data on the Dataset tab."""
    if session.splits is None:
        return (gr.skip(),) * 5
    return dataset.data_view(session.splits)


def follow_session_run(session: SessionData, progress=gr.Progress()):
    """A page that opens on a session with a run (a reload, a dropped connection) shows that run from its start
    and follows it: the Train tab's chart, status and details, and for a whole study the first tab's status."""
    run = session.run
    if run is None:
        return
    notes: list[str] = []
    skip = gr.skip()
    if run.kind == "whole":
        for update in whole_study.follow_whole_study(session, run, notes, progress):
            shown = (update.get("details", skip), update.get("status", skip), update.get("chart", skip))
            yield update.get("train_chart", skip), update.get("train_status", skip), *shown, skip
    else:
        for chart, status, details in train.follow_training(session, run, notes, progress):
            yield chart, status, details, skip, skip, skip
    if session.export_zip:
        yield skip, skip, skip, skip, skip, gr.update(value=session.export_zip, visible=True)


def queue_size() -> int:
    value = os.environ.get("LORA_DEMO_QUEUE_SIZE", str(QUEUE_SIZE))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"LORA_DEMO_QUEUE_SIZE must be a whole number of at least 1, got {value!r}")
    return int(value)


def build_demo(max_queue: int | None = None) -> gr.Blocks:
    """Build the app with its queue (`max_queue` waiting events at most); launch it with `launch(**LAUNCH_OPTIONS)`."""
    hour = CACHE_HOURS * 3600
    with gr.Blocks(title=TITLE, delete_cache=(hour, hour)) as demo:
        # one SessionData per browser tab or API client; closed when the tab closes, and when gradio drops the state
        session = gr.State(SessionData(), delete_callback=SessionData.state_deleted)
        # the browser's key to its session: a reload finds the same study and its run (`session_for`)
        browser_key = gr.BrowserState(None, storage_key="lora-demo-session")
        header = gr.Markdown(header_markdown(DEFAULT_MODEL, "(checking …)"), elem_id="header")
        with gr.Tabs() as tabs:
            with gr.Tab("1. Dataset"):
                whole = whole_study.build_whole_study()
                data_tab = dataset.build(session)
            with gr.Tab("2. Baseline"):
                baseline_tab = baseline.build(session)
            with gr.Tab("3. Train LoRA"):
                train_tab = train.build(session, baseline_tab.model, demo)
            with gr.Tab("4. Compare", id=whole_study.COMPARE_TAB) as compare_tab:
                compare_ns = compare.build(session, compare_tab)
            with gr.Tab("5. Classify"):
                classify_tab = classify.build(session)

        demo.load(  # needs no model: outside the queue, so a crowd opening the page never fills it
            guard(page_load),
            inputs=[session, browser_key],
            outputs=[session, browser_key, header, data_tab.source, train_tab.loss_chart],
            api_visibility="private",
            show_progress="hidden",
            **UNQUEUED,
        ).then(
            guard(show_session_data),
            inputs=session,
            outputs=list(data_tab.view),
            api_visibility="private",
            show_progress="hidden",
            **UNQUEUED,
        ).then(
            guard(follow_session_run),
            inputs=session,
            outputs=[
                train_tab.loss_chart,
                train_tab.status,
                train_tab.details,
                whole.status,
                whole.chart,
                train_tab.download,
            ],
            api_visibility="private",
            show_progress="hidden",
            **RUN_SLOTS,
        )
        # the header and the Classify tab follow the session once a load or a model choice has been applied
        train_tab.model_selected.then(
            guard(train.model_markdown),
            inputs=baseline_tab.model,
            outputs=classify_tab.model_info,
            api_visibility="private",
            show_progress="hidden",
        )
        # the study preset sets the model, the recipe, its epochs and 500 / 200 / 100 reviews, then reloads the data
        train_tab.preset.click(
            guard(train.study_preset),
            outputs=[
                baseline_tab.model,
                train_tab.recipe_name,
                *data_tab.sizes,
                *train_tab.recipe_controls,
                train_tab.preset_note,
            ],
            api_visibility="private",
        ).success(**data_tab.load_args, api_visibility="private")
        for event in (data_tab.loaded, train_tab.model_selected):
            event.then(
                guard(session_header), inputs=session, outputs=header, api_visibility="private", show_progress="hidden"
            )
        others = SimpleNamespace(
            data_view=data_tab.view,
            baseline_view=baseline_tab.view,
            train=train_tab,
            compare_refresh=compare_ns.refresh,
        )
        whole_study.wire_whole_study(whole, session, tabs, others)
        demo.unload(guard(end_session(session)))
    return demo.queue(max_size=max_queue or queue_size(), default_concurrency_limit=1)
