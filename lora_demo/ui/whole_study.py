"""The whole study in one click, on the first tab: data, zero-shot baseline, LoRA with the default recipe,
comparison; the visitor ends on the Compare tab.

Each step's progress shows as it happens; Stop (here or on the Train tab) and closing the tab end the training
as they do for a run started on the Train tab, and what was trained so far is compared.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..config import DEFAULT_RECIPE
from .errors import guard
from .session import TRAIN_SLOTS, SessionData
from .widgets import notes_markdown, study_progress

COMPARE_TAB = "compare"  # the id of the Compare tab, selected when the study ends
INTRO = (
    "**New here? Run the whole study in one click:** the loaded data (or the default data), the untrained model's "
    "zero-shot answers, LoRA training with the default recipe (`{recipe}`), then both models on the same test "
    "reviews. It ends on **4. Compare**. Every step can also be run by hand on the tabs below."
)


def build_whole_study() -> SimpleNamespace:
    """The button, its Stop and its progress line (placed where the caller is in the layout)."""
    gr.Markdown(INTRO.format(recipe=DEFAULT_RECIPE))
    with gr.Row():
        run = gr.Button("Run the whole study", variant="primary", scale=3, elem_id="whole-study")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="whole-study-stop")
    status = gr.Markdown(elem_id="whole-study-status")
    return SimpleNamespace(run=run, stop=stop, status=status)


def step_markdown(step: int, text: str, started: float) -> str:
    return f"**Step {step} of 4** ({time.monotonic() - started:.0f} s so far): {text}"


def run_whole_study(session: SessionData, progress=gr.Progress()):
    """Data, baseline, training (streamed, stoppable), comparison; yields (status, tab selection)."""
    from ..config import recipe
    from .train import export_run, stream, train_config

    study, started = session.study, time.monotonic()
    study.check_model()
    notes = study.ensure_data()
    splits = study.splits
    sizes = splits.sizes()
    data = (
        f"{sizes['train']} / {sizes['val']} / {sizes['test']} train / validation / test reviews from `{splits.source}`"
    )
    yield step_markdown(1, f"data: {data}. Scoring the untrained model …", started), gr.skip()
    lora, base = recipe(DEFAULT_RECIPE, study.spec)
    config = train_config(
        base.epochs, base.learning_rate, base.batch_size, base.max_length, sizes["train"], splits.config.seed, base
    )
    baseline = study.baseline(max_length=config.max_length, progress=study_progress(progress))
    accuracy = baseline.metrics["accuracy"]
    yield step_markdown(2, f"zero-shot accuracy {accuracy:.3f}. Training LoRA …", started), gr.skip()
    progress(0, desc=f"Loading {study.model_name}")
    job = study.start_training(lora, config, DEFAULT_RECIPE)
    for _, running in stream(job, study.model_name, config.epochs, session, progress):
        yield step_markdown(3, running, started), gr.skip()
    job.result()
    if session.closed:  # the tab closed while the run was ending: nobody is left to see the comparison
        return
    evaluation, report = study.finish_run(progress=study_progress(progress))
    session.export_zip = export_run(session, report)
    done = (
        f"LoRA accuracy {evaluation.metrics['accuracy']:.3f} (zero-shot {accuracy:.3f}). The comparison is on "
        "**4. Compare**."
    )
    yield step_markdown(4, done, started) + notes_markdown(notes), gr.Tabs(selected=COMPARE_TAB)


def stop_whole_study(session: SessionData) -> str:
    """Ask the study's training to end after its current step (the comparison then runs on what was trained)."""
    if not session.study.training:
        return "No training is running in this session."
    session.study.stop_training()
    return "Stopping after the current step; the model trained so far is compared."


def wire_whole_study(parts: SimpleNamespace, session: gr.State, tabs: gr.Tabs, compare_refresh: dict) -> None:
    """Run on click, then fill the Compare tab (`compare_refresh`: the Compare tab's event arguments)."""
    parts.run.click(
        guard(run_whole_study),
        inputs=session,
        outputs=[parts.status, tabs],
        api_visibility="private",  # the API runs the same steps through load_data, evaluate_baseline and train
        show_progress_on=[parts.status],
        **TRAIN_SLOTS,
    ).success(**compare_refresh)
    # outside the queue, as the Train tab's Stop: it never waits behind the run it stops
    parts.stop.click(
        guard(stop_whole_study), inputs=session, outputs=parts.status, queue=False, api_visibility="private"
    )
