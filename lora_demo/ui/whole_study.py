"""The whole study in one click, on the first tab: data, zero-shot baseline, LoRA with the default recipe,
comparison; the visitor ends on the Compare tab.

The first tab fills in as each step finishes (the data's summary, charts and sample rows, the zero-shot score, the
live loss chart with the time so far and the time left), and the other tabs are filled with the same state (the
Dataset and Baseline views, the Train tab's chart, result and download). Stop (here or on the Train tab) and
closing the tab end the training as they do for a run started on the Train tab, and what was trained so far is
compared.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr

from ..config import DEFAULT_RECIPE
from .errors import guard, translate
from .session import RUN_SLOTS, SessionData
from .widgets import notes_markdown

COMPARE_TAB = "compare"  # the id of the Compare tab, selected when the study ends
STEPS = 4
INTRO = (
    "**New here? Run the whole study in one click:** the loaded data (or the default data), the untrained model's "
    "zero-shot answers, LoRA training with the default recipe (`{recipe}`), then both models on the same test "
    "reviews. It ends on **4. Compare**. Every step can also be run by hand on the tabs below."
)


def build_whole_study() -> SimpleNamespace:
    """The button, its Stop, its progress line, the zero-shot score and the live loss chart."""
    gr.Markdown(INTRO.format(recipe=DEFAULT_RECIPE))
    with gr.Row():
        run = gr.Button("Run the whole study", variant="primary", scale=3, elem_id="whole-study")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="whole-study-stop")
    status = gr.Markdown(elem_id="whole-study-status")
    score = gr.Markdown(elem_id="whole-study-score")
    chart = gr.Plot(label="Loss", show_label=False, visible=False, elem_id="whole-study-chart")
    return SimpleNamespace(run=run, stop=stop, status=status, score=score, chart=chart)


def step_markdown(step: int, text: str, started: float) -> str:
    return f"**Step {step} of {STEPS}** ({time.monotonic() - started:.0f} s so far): {text}"


def score_markdown(name: str, metrics: dict) -> str:
    text = f"**Zero-shot `{name}`** on {metrics['n']} test reviews: accuracy **{metrics['accuracy']:.3f}**"
    text += f", F1 (positive) {metrics['f1']:.3f}."
    if metrics.get("warning"):
        text += f" ⚠️ {metrics['warning']}"
    return text


def run_whole_study(session: SessionData, progress=gr.Progress()):
    """Lay out the study's stream (`Study.steps`): data, baseline, training (streamed, stoppable), comparison.

    Yields dicts of the outputs that changed, by name (`status`, `chart`, …, `data:<i>` for the Dataset view,
    `baseline:<i>` for the Baseline view); `wire_whole_study` maps the names to components.
    """
    from ..config import recipe
    from .train import session_steps, train_config

    study = session.study
    study.check_model()
    notes = study.ensure_data()
    lora, base = recipe(DEFAULT_RECIPE, study.spec)
    splits = study.splits
    config = train_config(
        base.epochs, base.learning_rate, base.batch_size, base.max_length, len(splits.train), splits.config.seed, base
    )
    run = session.start_run(
        session_steps(session, lora, config, DEFAULT_RECIPE, with_baseline=True), study.work(config)
    )
    run.kind, run.epochs = "whole", config.epochs
    yield from follow_whole_study(session, run, notes, progress)


def follow_whole_study(session: SessionData, run, notes: list[str], progress, start: int = 0):
    """Lay out a session's whole-study run on the first tab (and the tabs it fills), from event `start` on."""
    from ..live import Progress, Waiting
    from .train import waiting_markdown

    view = WholeStudyView(session, run.epochs, notes, progress)
    for event in run.follow(start):
        session.last_used = time.monotonic()  # a run followed is not an idle session
        if isinstance(event, Waiting):
            yield {"status": waiting_markdown(event)}
        elif isinstance(event, Progress):
            progress((event.done, event.total), desc=event.what)
        elif event is not None and (update := view.show(event)):
            yield update
    if run.cancelled:
        yield {"status": "Your run left the line before it started; nothing was trained."}


class WholeStudyView:
    """What the first tab (and the tabs it fills) shows for each event of the study's stream."""

    def __init__(self, session: SessionData, epochs: float, notes: list[str], progress):
        from .train import LiveChart

        self.session, self.study, self.epochs, self.notes = session, session.study, epochs, notes
        self.started, self.accuracy = time.monotonic(), None
        self.live = LiveChart(self.study.model_name, epochs, progress)

    def show(self, event) -> dict | None:
        from ..study import BaselineScored, Compared, DataReady, Trained

        for kind, show in ((DataReady, self.data), (BaselineScored, self.baseline), (Compared, self.compared)):
            if isinstance(event, kind):
                return show(event)
        if isinstance(event, Trained):
            return {"status": self.status(4, "scoring the LoRA model and the ladder on the test reviews …")}
        return self.training(event)

    def status(self, step: int, text: str) -> str:
        return step_markdown(step, text, self.started)

    def data(self, event) -> dict:
        from .dataset import data_view, describe_splits

        self.notes += event.notes
        return {
            "status": self.status(1, f"data: {describe_splits(event.splits)}. Scoring the untrained model …"),
            **_named("data", data_view(event.splits, self.notes)),
        }

    def baseline(self, event) -> dict:
        from ..plots import loss_figure
        from .baseline import baseline_view

        metrics, name = event.evaluation.metrics, self.study.model_name
        self.accuracy = metrics["accuracy"]
        return {
            "status": self.status(2, f"zero-shot accuracy {self.accuracy:.3f}. Loading {name} …"),
            "score": score_markdown(name, metrics),
            "chart": gr.update(value=loss_figure([], self.epochs), visible=True),
            **_named("baseline", baseline_view(self.study, metrics, self.notes)),
        }

    def training(self, event) -> dict | None:
        update = self.live.add(event)
        if update is None:
            return None
        chart, running = update
        return {"status": self.status(3, f"{running} ({self.live.time_left()})"), "chart": chart, "train_chart": chart}

    def compared(self, event) -> dict:
        from ..plots import loss_figure
        from .train import result_markdown, run_details

        tuned, metrics = event.tuned, event.evaluation.metrics
        done = f"LoRA accuracy {metrics['accuracy']:.3f} (zero-shot {self.accuracy:.3f})."
        done += " The comparison is on **4. Compare**."
        chart = loss_figure(tuned.result.history, self.epochs)
        return {
            "status": self.status(4, done) + notes_markdown(self.notes),
            "chart": chart,
            "train_chart": chart,
            "train_status": result_markdown(tuned, metrics, self.notes),
            "download": gr.update(value=self.session.export_zip, visible=True),
            "tabs": gr.Tabs(selected=COMPARE_TAB),
            "details": run_details(event.report),
        }


def failure_markdown(message: str, session: SessionData) -> str:
    """What the status says when a step failed: what happened, and what the session still has."""
    tuned = session.holds_study and session.study.tuned is not None
    kept = (
        "The trained LoRA model is kept: **Classify** uses it and **Compare** scores it when you open it."
        if tuned
        else "Nothing trained was lost; what was loaded and scored so far is kept."
    )
    return f"**The study stopped:** {message} {kept}"


def _named(prefix: str, values: tuple) -> dict:
    return {f"{prefix}:{i}": value for i, value in enumerate(values)}


def stop_whole_study(session: SessionData) -> str:
    """Take the run out of the line, or end its training after the current step (what was trained is compared)."""
    return session.stop() or "No training is running in this session."


def wire_whole_study(parts: SimpleNamespace, session: gr.State, tabs: gr.Tabs, others: SimpleNamespace) -> None:
    """Run on click, then fill the Compare tab.

    Args:
        others: the other tabs' parts: `data_view` and `baseline_view` (their views' components, in order),
            `train` (the Train tab: `loss_chart`, `status`, `download`, `details`) and `compare_refresh` (the Compare
            tab's event arguments).
    """
    train = others.train
    components = {
        "status": parts.status,
        "score": parts.score,
        "chart": parts.chart,
        "tabs": tabs,
        "train_chart": train.loss_chart,
        "train_status": train.status,
        "download": train.download,
        "details": train.details,
        **_named("data", others.data_view),
        **_named("baseline", others.baseline_view),
    }

    def whole_study(session: SessionData, progress=gr.Progress()):
        try:
            for update in run_whole_study(session, progress):
                yield {components[name]: value for name, value in update.items()}
        except Exception as err:  # said where the visitor looks, not only in a toast that fades; then raised
            error = translate(err, "run_whole_study")
            yield {parts.status: failure_markdown(error.message, session)}
            raise error from None

    whole_study.__name__ = run_whole_study.__name__  # the server log names the handler
    parts.run.click(
        guard(whole_study),
        inputs=session,
        outputs=list(components.values()),
        api_visibility="private",  # the API runs the same steps through load_data, evaluate_baseline and train
        show_progress_on=[parts.status],
        **RUN_SLOTS,
    ).success(**others.compare_refresh)
    # outside the queue, as the Train tab's Stop: it never waits behind the run it stops
    parts.stop.click(
        guard(stop_whole_study), inputs=session, outputs=parts.status, queue=False, api_visibility="private"
    )
