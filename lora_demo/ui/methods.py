"""The Train tab's method comparison: full fine-tuning and PEFT's other methods beside LoRA, on the same reviews.

Opt-in: the visitor ticks methods and presses Compare; the comparison (`Study.compare_methods`) is one run of the
session that takes its turn in the process's line like a training run, and its table and Pareto chart show on the
Compare tab (the report's `methods`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import gradio as gr

from ..config import DEFAULT_RECIPE, METHODS, UserError, parse_methods, recipe
from .errors import guard
from .session import RUN_SLOTS, SessionData

CHOICES = ("full", "dora", "rslora", "loraplus", "ia3")  # LoRA always runs: every method is compared with it


@dataclass(frozen=True)
class MethodsCompared:
    """The last event of a method comparison run: the report's `methods`."""

    comparison: dict


def intro_markdown() -> str:
    listed = "\n".join(f"- **{name}**: {METHODS[name].description}" for name in CHOICES)
    return (
        "Is LoRA the right choice here? Once LoRA is trained above, tick methods to train on the same reviews with "
        "the same epochs, each at "
        "the learning rate its validation reviews prefer from a small grid (LoRA too, at its own grid), and "
        "compare them on the same test reviews: accuracy, what trains and what you would ship, time and memory. "
        "The table and the chart show on **Compare**. Each method trains twice (once per rate of its grid): all "
        "six on the default data take about 20 minutes on 2 vCPUs (LoRA's own run takes 1-2).\n\n" + listed
    )


def compare_methods(
    methods, r, alpha, dropout, targets, top_layers, epochs, learning_rate, batch_size, max_length,
    recipe_name: str, session: SessionData, progress=gr.Progress(),
):  # fmt: skip
    """Train LoRA and each ticked method on the session's data, in the line of runs; then say what it found."""
    from ..live import Progress, Waiting
    from .train import lora_settings, train_config, waiting_markdown

    names = ("lora", *(name for name in parse_methods(methods or []) if name != "lora"))
    if len(names) == 1:
        raise UserError("tick at least one method to compare with LoRA")
    study = session.study
    if study.tuned is None:
        raise UserError("train LoRA first (Start training): the methods are compared beside it, on Compare")
    lora = lora_settings(r, alpha, dropout, targets, top_layers)
    lora.targets_for(study.spec)  # refuse a bad recipe before anything loads
    study.check_model()
    notes = study.ensure_data()
    splits = study.splits
    base = recipe(recipe_name or DEFAULT_RECIPE, study.spec)[1]
    config = train_config(epochs, learning_rate, batch_size, max_length, len(splits.train), splits.config.seed, base)
    study.check_methods(names, lora, config)  # every refusal now, not after a wait in the line

    def steps(report):
        def on_method(name, row):
            report(f"Compared {name}", names.index(name) + 1, len(names))

        report(f"Training {len(names)} methods", 0, len(names))
        yield MethodsCompared(study.compare_methods(names, lora, config, on_method=on_method))

    trainings = sum(len(METHODS[name].rates) * METHODS[name].cost for name in names)
    run = session.start_run(steps, study.work(config) * trainings)
    run.kind = "methods"
    for event in run.follow():
        if isinstance(event, Waiting):
            yield waiting_markdown(event)
        elif isinstance(event, Progress):
            progress((event.done, event.total), desc=event.what)
            yield f"**Comparing methods:** {event.done} of {event.total} done ({event.what.lower()})."
        elif isinstance(event, MethodsCompared):
            refresh_download(session, study)
            yield result_markdown(event.comparison, notes)


def refresh_download(session: SessionData, study) -> None:
    """The Train tab's zip again, its report now with the comparison (`methods`); the last one stays when the
    report cannot be made (the data changed since training: the Compare tab says why)."""
    if session.export_zip is None:
        return
    try:
        session.export_zip = str(study.export_zip(session.scratch_dir(), study.report()))
    except UserError:
        pass


def result_markdown(comparison: dict, notes: list[str]) -> str:
    from .widgets import notes_markdown

    rows = comparison["methods"]
    best = max(rows, key=lambda name: rows[name]["accuracy"])
    return (
        f"**Done:** {len(rows)} methods on {comparison['n']} test reviews; the most accurate is **{best}** "
        f"({rows[best]['accuracy']:.3f}; LoRA {rows['lora']['accuracy']:.3f}). {comparison['sentence']} "
        "See the table and the chart on **Compare**." + notes_markdown(notes)
    )


def build() -> SimpleNamespace:
    with gr.Accordion("Is LoRA the right choice? Compare full fine-tuning and other PEFT methods", open=False):
        gr.Markdown(intro_markdown())
        with gr.Row(equal_height=True):
            methods = gr.CheckboxGroup(list(CHOICES), value=[], label="Methods to compare with LoRA", scale=4)
            button = gr.Button("Compare methods", scale=1)
        status = gr.Markdown(elem_id="methods-status")
    return SimpleNamespace(methods=methods, button=button, status=status)


def wire(ui: SimpleNamespace, inputs: list, session: gr.State, download: gr.DownloadButton) -> None:
    """`inputs`: the Train tab's LoRA and training controls and its recipe, as `train.train` takes them;
    `download`: the Train tab's zip, handed the one with the comparison in its report."""
    from .train import download_update

    ui.button.click(
        guard(compare_methods),
        inputs=[ui.methods, *inputs, session],
        outputs=ui.status,
        api_name="compare_methods",
        **RUN_SLOTS,
    ).success(
        guard(download_update), inputs=session, outputs=download, api_visibility="private", show_progress="hidden"
    )
