"""Saved runs: adapters the CLI (or an operator-enabled app) wrote under `$LORA_DEMO_RUNS`, loaded by name."""

from __future__ import annotations

import gradio as gr

from .errors import guard
from .session import EVALUATE_SLOTS, SessionData


def run_choices(session: SessionData | None = None) -> list[tuple[str, str]]:
    """The operator's runs and, with `session`, the runs the app saved for that session."""
    from ..runs import list_runs

    def describe(run):
        score = f", accuracy {run['accuracy']:.3f}" if isinstance(run["accuracy"], (int, float)) else ""
        return f"{run['name']} ({run['model']}{score})"

    return [(describe(run), run["name"]) for run in list_runs(session_key=session and session.runs_key)]


def refresh_runs(session: SessionData):
    return gr.update(choices=run_choices(session))


def load_run(name, session: SessionData) -> str:
    """Make a saved run the session's LoRA model: Classify and Compare use it from now on."""
    from ..config import UserError
    from ..runs import run_folder, runs_root

    if not name:
        raise UserError(f"choose a saved run first (runs are listed from {str(runs_root())!r})")
    if session.training:
        raise UserError("a training run is going in this session: wait for it or press Stop")
    tuned = session.study.load_adapter(run_folder(name, session_key=session.runs_key))
    return f"Loaded the saved run `{name}` (`{tuned.name}`): it is now this session's LoRA model."


def build_loader(session: gr.State, elem_id: str):
    """A dropdown of the saved runs and a Load button; returns the load event, to chain on."""
    from ..runs import runs_root

    label = f"Saved runs (from {runs_root()}/, e.g. python -m lora_demo train --output {runs_root()}/NAME)"
    with gr.Accordion(label, open=False):
        with gr.Row():
            choice = gr.Dropdown(choices=[], label="Saved run", scale=3, elem_id=elem_id)
            load = gr.Button("Load the run", scale=1)
        note = gr.Markdown()
    choice.focus(guard(refresh_runs), inputs=session, outputs=choice, api_visibility="private", show_progress="hidden")
    return load.click(
        guard(load_run), inputs=[choice, session], outputs=note, api_visibility="private", **EVALUATE_SLOTS
    )
