"""Train LoRA tab: the recipe's controls, the live parameter count, and training with a streamed loss chart.

The handler, a generator, lays out the study's stream from training on (`Study.steps`): it redraws the loss chart
from the training job's events at most every `REDRAW_SECONDS`, then shows the comparison. Stop asks the job to end
after its current step.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from types import SimpleNamespace

import gradio as gr

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_RECIPE,
    PRESETS,
    RECIPES,
    LoraSettings,
    TrainConfig,
    UserError,
    describe_recipe,
    field_default,
    field_help,
    field_range,
    get_model_spec,
    recipe,
)
from . import methods
from .errors import guard
from .pictures import build_lora_picture, wire_lora_picture
from .session import RUN_SLOTS, TRAIN_SLOTS, UNQUEUED, SessionData
from .widgets import download_progress, notes_markdown, slider, whole_number

REDRAW_SECONDS = 0.5
LOSS_POINTS = 20  # aim for this many train-loss points, so even a one-epoch run on a few reviews draws a curve


def model_markdown(name: str) -> str:
    spec = get_model_spec(name)
    return f"**Model:** `{spec.name}`: {spec.description}. Choose it on the Baseline tab."


def recipe_markdown(spec) -> str:
    """What each recipe sets for the active model, read from the recipes themselves."""
    return "\n".join(f"- **`{name}`**: {describe_recipe(name, spec)}" for name in RECIPES) + (
        "\n\nChoosing a recipe sets the controls; change any of them from there. With fewer layers adapted, the "
        "frozen layers below run once per review and are cached instead of once per step."
    )


def recipe_updates(recipe_name: str, spec) -> tuple:
    """The controls a recipe sets for `spec`: r, alpha, dropout, targets, top layers, epochs."""
    lora, train = recipe(recipe_name, spec)
    encoder = spec.kind == "encoder"
    top = spec.default_top_layers if lora.top_layers is None else lora.top_layers
    return (
        gr.update(value=lora.r),
        gr.update(value=lora.alpha),
        gr.update(value=lora.dropout),
        gr.update(choices=list(spec.lora_targets), value=list(lora.targets_for(spec))),
        gr.update(maximum=spec.num_layers, value=(top or 0) if encoder else 0, interactive=encoder),
        gr.update(value=train.epochs),
    )


def select_model(name: str, recipe_name: str, session: SessionData):
    """The dropdown on the Baseline tab sets the session's model; the recipe's controls follow it."""
    session.study.select_model(name)
    spec = get_model_spec(name)
    return model_markdown(spec.name), recipe_markdown(spec), *recipe_updates(recipe_name, spec)


def select_recipe(recipe_name: str, model_name: str):
    return recipe_updates(recipe_name, get_model_spec(model_name))


def study_preset():
    """The original study's whole configuration in one click (`--preset study`): model, sizes and recipe."""
    from ..study import preset_model

    preset = PRESETS["study"]
    name, why_not = preset_model(preset.name, None)
    spec = get_model_spec(name)
    if why_not:
        note = f"**{why_not}.** The study's other settings are set: {preset.description}. Press **Start training**."
    else:
        note = f"**The original study's configuration is set:** {preset.description}. Press **Start training**."
    sizes = (preset.train_size, preset.val_size, preset.test_size)
    return spec.name, preset.recipe, *sizes, *recipe_updates(preset.recipe, spec), note


def lora_settings(r, alpha, dropout, targets, top_layers) -> LoraSettings:
    return LoraSettings(
        r=whole_number(r, "r"),
        alpha=float(alpha),
        dropout=float(dropout),
        target_modules=tuple(targets or ()),
        top_layers=whole_number(top_layers, "top_layers"),
    )


def parameter_count(model_name, r, alpha, dropout, targets, top_layers) -> str:
    """Trainable parameters of the recipe as set, counted on the meta device (no weights, instant)."""
    from ..lora import count_parameters_offline

    spec = get_model_spec(model_name)
    if any(t not in spec.lora_targets for t in targets or ()):
        return gr.skip()  # the target list is still being switched to the new model's names
    try:
        counts = count_parameters_offline(spec.name, lora_settings(r, alpha, dropout, targets, top_layers))
    except UserError as err:
        return f"⚠️ {err}"
    return (
        f"**Trainable parameters:** {counts['trainable']:,} of {counts['total']:,} "
        f"(**{counts['percent']:.3f}%** of `{spec.name}`; LoRA matrices"
        f"{' and the classification head' if spec.kind == 'encoder' else ''}). The other "
        f"{counts['total'] - counts['trainable']:,} stay frozen."
    )


def train_config(epochs, learning_rate, batch_size, max_length, n_train: int, seed: int, base: TrainConfig):
    """The controls' values over `base` (a recipe's training settings), with a loss point every few steps."""
    batch = whole_number(batch_size, "batch_size")
    config = replace(
        base,
        epochs=float(epochs),
        learning_rate=float(learning_rate),
        batch_size=batch,
        max_length=whole_number(max_length, "max_length"),
        seed=seed,
    )
    total_steps = math.ceil(n_train / batch) * config.epochs
    logging_steps = max(1, min(config.logging_steps, int(total_steps // LOSS_POINTS)))
    return replace(config, logging_steps=logging_steps)


def running_markdown(name: str, event, seconds: float) -> str:
    return (
        f"**Training `{name}`:** step {event.step} of {event.max_steps} (epoch {event.epoch:.2f}), "
        f"{seconds:.0f} s so far. **Stop** ends it after the current step and keeps the model."
    )


def time_left(steps_timed: int, steps_left: int, seconds: float) -> str:
    """The training time left, from the measured speed of the steps timed so far (`seconds` for `steps_timed`)."""
    if steps_timed <= 0:
        return "time left: measuring"
    left = steps_left * seconds / steps_timed
    return f"about {left:.0f} s left" if left < 90 else f"about {left / 60:.0f} min left"


class LiveChart:
    """The loss chart and the status line of a run, from its `TrainEvent`s, redrawn at most every `REDRAW_SECONDS`.

    Args:
        name: the model's name, for the status line.
        epochs: the run's epochs (the chart's x range).
        progress: gradio's progress bar, moved at every step.
    """

    def __init__(self, name: str, epochs: float, progress):
        self.name, self.epochs, self.progress = name, epochs, progress
        self.history: list[dict] = []
        self.latest = None  # the latest step's event
        self.first = None  # (time, step) of the first step seen: loading the model is not a step's time
        self.started, self._drawn = time.monotonic(), 0.0  # the first step is shown at once
        self._new_points = False

    def add(self, event) -> tuple | None:
        """Take one event; returns (chart or `gr.skip()`, status) when it is time to redraw, else None."""
        from ..plots import loss_figure

        if event.type == "progress":
            self.latest, self.first = event, self.first or (time.monotonic(), event.step)
            self.progress((event.step, event.max_steps), desc="Training", unit="steps")
        else:
            self.history.append(event.to_dict())
            self._new_points = True
        if self.latest is None or time.monotonic() - self._drawn < REDRAW_SECONDS:
            return None
        chart = loss_figure(self.history, self.epochs) if self._new_points else gr.skip()
        self._drawn, self._new_points = time.monotonic(), False
        return chart, running_markdown(self.name, self.latest, time.monotonic() - self.started)

    def time_left(self) -> str:
        """The training time left, from the measured speed of the steps since the first one."""
        if self.latest is None:
            return time_left(0, 0, 0.0)
        done, seconds = self.latest.step - self.first[1], time.monotonic() - self.first[0]
        return time_left(done, self.latest.max_steps - self.latest.step, seconds)


def train(
    r, alpha, dropout, targets, top_layers, epochs, learning_rate, batch_size, max_length, recipe_name: str,
    session: SessionData, progress=gr.Progress(),
):  # fmt: skip
    """Train LoRA on the session's data and model, streaming the loss; then score and compare on the test set.

    The run belongs to the session (`SessionData.start_run`): it waits its turn in the process's line, and goes
    on if this page reloads or loses its connection; this handler follows it.
    """
    study, recipe_name = session.study, recipe_name or DEFAULT_RECIPE
    lora = lora_settings(r, alpha, dropout, targets, top_layers)
    lora.targets_for(study.spec)  # refuse a bad recipe before loading anything
    study.check_model()
    notes = study.ensure_data(download_progress(progress, "Downloading IMDb from the Hugging Face Hub"))
    study.download_model(download_progress(progress, f"Downloading {study.model_name} from the Hugging Face Hub"))
    base = recipe(recipe_name, study.spec)[1]
    splits = study.splits
    config = train_config(epochs, learning_rate, batch_size, max_length, len(splits.train), splits.config.seed, base)
    steps = session_steps(session, lora, config, recipe_name, with_baseline=False)
    run = session.start_run(steps, study.work(config))
    run.kind, run.epochs = "train", config.epochs
    yield from follow_training(session, run, notes, progress)


def session_steps(session: SessionData, lora, config, recipe_name: str, with_baseline: bool):
    """The session's run: the study's stream, with the run's download made as soon as it is compared (so it is
    there for a page that reloads, or comes back after the run ended)."""
    from ..study import Compared

    study = session.study

    def steps(report):
        for event in study.steps(lora, config, recipe_name, with_baseline=with_baseline, progress=report):
            if isinstance(event, Compared):
                session.export_zip = export_run(session, study, event.report)
            yield event

    return steps


def waiting_markdown(event) -> str:
    """A run's place in the line for the machine, and the wait the runs ahead make."""
    runs = "1 run" if event.ahead == 1 else f"{event.ahead} runs"
    minutes = None if event.seconds is None else max(1, round(event.seconds / 60))
    wait = "measuring how long runs take" if minutes is None else f"about {minutes} min"
    return (
        f"**Waiting for the machine:** {runs} ahead of yours ({wait}). You may leave this page and come back; "
        "**Stop** takes your run out of the line."
    )


def follow_training(session: SessionData, run, notes: list[str], progress, start: int = 0):
    """Lay out a session's run for the Train tab: (loss chart, status, details) updates, from event `start` on."""
    from ..live import Progress, Waiting
    from ..plots import loss_figure
    from ..study import Compared, DataReady
    from ..train import TrainEvent

    live = LiveChart(session.model_name, run.epochs, progress)
    for event in run.follow(start):
        session.last_used = time.monotonic()  # a run followed is not an idle session
        if isinstance(event, Waiting):
            yield gr.skip(), waiting_markdown(event), gr.skip()
        elif isinstance(event, Progress):
            progress((event.done, event.total), desc=event.what)
        elif isinstance(event, DataReady):
            notes += event.notes
        elif isinstance(event, TrainEvent) and (update := live.add(event)):
            yield *update, gr.skip()
        elif isinstance(event, Compared):
            tuned = event.tuned
            yield (
                loss_figure(tuned.result.history, run.epochs),
                result_markdown(tuned, event.evaluation.metrics, notes),
                run_details(event.report),
            )
    if run.cancelled:
        yield gr.skip(), "Your run left the line before it started; nothing was trained.", gr.skip()


def export_run(session: SessionData, study, report) -> str:
    """Zip `study`'s run (the session's) and its report into the session's folder, replacing the previous run's."""
    from ..runs import new_run_name, saving_enabled, session_runs_root

    archive = study.export_zip(session.scratch_dir(), report)
    if saving_enabled():  # the operator's choice; off by default, so a public Space never fills its disk
        study.save(session_runs_root(session.runs_key) / new_run_name(), report)  # listed to this session only
    return str(archive)


def download_update(session: SessionData):
    return gr.update(value=session.export_zip, visible=session.export_zip is not None)


def measure_resources(
    model_name, r, alpha, dropout, targets, top_layers, session: SessionData, progress=gr.Progress()
):
    """A few measured steps of LoRA and of full fine-tuning on the same batch, and trainable parameters vs r."""
    from ..plots import trainable_by_rank_figure

    study = session.study
    study.select_model(model_name)
    lora = lora_settings(r, alpha, dropout, targets, top_layers)
    if study.training:
        raise UserError("a training run is going in this session: measure once it has finished")
    study.ensure_data()
    progress(0.1, desc="Measuring a few steps of LoRA and of full fine-tuning")
    result = study.measure_resources(lora)
    return resources_markdown(study.model_name, result), trainable_by_rank_figure(result["trainable_by_rank"], lora.r)


def resources_markdown(name: str, result: dict) -> str:
    lora, full, batch = result["lora"], result["full"], result["batch"]

    def step(row: dict) -> str:
        low, high = row["seconds_middle_half"]
        return f"{row['seconds_per_step']:.3f} s ({low:.3f}-{high:.3f})"

    if result["within_noise"]:
        speed = (
            f"The step times overlap (medians {result['speedup']:.2f}x apart, within the spread of the steps "
            "themselves), so on this batch the speed difference is within the machine's noise; what LoRA "
            f"saves here is memory, and what it stores is **{result['size_ratio']:.0f}x** smaller"
        )
    elif result["speedup"] >= 1:
        speed = (
            f"LoRA's step is **{result['speedup']:.2f}x** as fast here and what it saves is "
            f"**{result['size_ratio']:.0f}x** smaller"
        )
    else:
        speed = (
            f"LoRA's step is slower here (**{1 / result['speedup']:.2f}x** the time of full fine-tuning's) and "
            f"what it saves is **{result['size_ratio']:.0f}x** smaller"
        )
    return (
        f"Measured on `{name}` with one batch of {batch['reviews']} training reviews ({batch['max_length']} tokens "
        f"at most), AdamW: the median of {batch['steps']} steps after {batch.get('warmup', 1)} warm-up steps, and "
        "in brackets the middle half of them.\n\n"
        "| | LoRA | Full fine-tuning |\n|---|---|---|\n"
        f"| Trainable parameters | {lora['trainable']:,} ({lora['percent']:.3f}%) | {full['trainable']:,} (100%) |\n"
        f"| Time per step | {step(lora)} | {step(full)} |\n"
        f"| Memory growth during the steps | {lora['memory_growth_mb']:.0f} MB | {full['memory_growth_mb']:.0f} MB |\n"
        f"| Saved to disk | {lora['saved_mb'] * 1024:.0f} KB (the adapter) "
        f"| {full['saved_mb']:.1f} MB (the whole model) |\n\n"
        f"{speed}: no gradients or optimizer state for the frozen weights, and only the small matrices to store."
    )


def result_markdown(tuned, metrics: dict, notes: list[str]) -> str:
    result, params = tuned.result, tuned.result.params

    def loss(value):
        return "n/a" if value is None else f"{value:.4f}"

    if result.out_of_time:
        how = (
            f"**Stopped at the time limit of one GPU call** after {result.steps} of {result.max_steps} steps; the "
            "partly trained model is kept. Fewer training reviews or epochs fit in one call."
        )
    elif result.stopped:
        how = f"**Stopped** after {result.steps} of {result.max_steps} steps; the partly trained model is kept."
    else:
        how = f"**Done:** {result.steps} steps."
    text = (
        f"{how} Time {result.seconds:.1f} s.\n\n"
        f"| Train loss | Validation loss | Trainable parameters |\n|---|---|---|\n"
        f"| {loss(result.train_loss)} | {loss(result.val_loss)} | {params['trainable']:,} of {params['total']:,} "
        f"({params['percent']:.3f}%) |\n\n"
        f"LoRA `{tuned.name}` on {metrics['n']} test reviews: accuracy **{metrics['accuracy']:.3f}**, "
        f"F1 {metrics['f1']:.3f}. See the **Compare** tab, or try your own text on **Classify**."
    )
    if metrics.get("warning"):
        text += f"\n\n> ⚠️ {metrics['warning']}"
    return text + notes_markdown(notes)


def run_details(report) -> dict:
    """The report as the download holds it, without the long lists (loss history, flipped reviews)."""
    details = report.to_dict()
    details["train"] = {k: v for k, v in details["train"].items() if k != "history"}
    details["comparison"] = {k: v for k, v in details["comparison"].items() if k not in ("fixed", "broken")}
    return details


def stop_training(session: SessionData) -> str:
    """Take the session's run out of the line, or end its training after the current step."""
    return session.stop() or "No training is running in this session."


def _controls(spec) -> SimpleNamespace:
    with gr.Row():
        with gr.Column():
            r = slider(LoraSettings, "r", "Rank r", 1)
            alpha = slider(LoraSettings, "alpha", "Alpha", 1)
            dropout = slider(LoraSettings, "dropout", "LoRA dropout", 0.05)
            targets = gr.CheckboxGroup(
                list(spec.lora_targets),
                value=list(spec.default_targets),
                label="Target modules",
                info=field_help(LoraSettings, "target_modules"),
            )
            top_layers = gr.Slider(
                0,
                spec.num_layers,
                value=spec.default_top_layers or 0,
                step=1,
                label="Top layers to adapt (encoder models; 0 = all)",
                info=field_help(LoraSettings, "top_layers"),
            )
            picture = build_lora_picture()
        with gr.Column():
            epochs = slider(TrainConfig, "epochs", "Epochs", 0.1)
            low, high = field_range(TrainConfig, "learning_rate")
            learning_rate = gr.Number(
                field_default(TrainConfig, "learning_rate"),
                minimum=low,
                maximum=high,
                label="Learning rate",
                info=f"{field_help(TrainConfig, 'learning_rate')}; "
                f"default {field_default(TrainConfig, 'learning_rate'):g}, from {low:g} to {high:g}",
            )
            batch_size = slider(TrainConfig, "batch_size", "Batch size", 1)
            max_length = slider(TrainConfig, "max_length", "Max length (tokens)", 16)
            params = gr.Markdown("Counting trainable parameters …")
    return SimpleNamespace(
        lora=[r, alpha, dropout, targets, top_layers],
        epochs=epochs,
        training=[epochs, learning_rate, batch_size, max_length],
        params=params,
        picture=picture,
    )


def build(session: gr.State, model: gr.Dropdown, demo: gr.Blocks) -> SimpleNamespace:
    """The tab's layout; its events are wired by `_wire`."""
    spec = get_model_spec(DEFAULT_MODEL)
    ui = SimpleNamespace(model=model, session=session, demo=demo)
    ui.model_info = gr.Markdown(model_markdown(DEFAULT_MODEL))
    ui.recipes_info = gr.Markdown(recipe_markdown(spec), elem_id="recipes")
    with gr.Row(equal_height=True):
        ui.recipe_name = gr.Radio(list(RECIPES), value=DEFAULT_RECIPE, label="Recipe", scale=4)
        ui.preset = gr.Button("Original study preset", scale=1)
    ui.preset_note = gr.Markdown(elem_id="preset-note")
    ui.controls = _controls(spec)
    with gr.Row():
        ui.start = gr.Button("Start training", variant="primary", scale=3)
        ui.stop = gr.Button("Stop", variant="stop", scale=1)
    ui.stop_note = gr.Markdown(label="stop")
    with gr.Accordion("Why LoRA saves resources, measured", open=False):
        ui.measure_button = gr.Button("Measure LoRA vs full fine-tuning on a batch of reviews")
        ui.resources = gr.Markdown(elem_id="resources")
        ui.by_rank = gr.Plot(label="Trainable parameters vs r", show_label=False, elem_id="by-rank")
    ui.methods = methods.build()
    ui.download = gr.DownloadButton(
        "Download the adapter (zip: safetensors, adapter config, report)", visible=False, elem_id="download-adapter"
    )
    ui.loss_chart = gr.Plot(label="Loss", show_label=False, elem_id="loss-chart")
    ui.status = gr.Markdown(label="result", value="Training results appear here.", elem_id="train-status")
    with gr.Accordion("Run details (JSON)", open=False):
        ui.details = gr.JSON(label="Training run")
    ui.recipe_controls = [*ui.controls.lora, ui.controls.epochs]
    ui.model_selected = _wire(ui)
    return ui


def _wire(ui: SimpleNamespace):
    """The tab's events; returns the model choice's event, which other tabs follow."""
    controls, session, model = ui.controls, ui.session, ui.model
    model_selected = model.change(
        guard(select_model),
        inputs=[model, ui.recipe_name, session],
        outputs=[ui.model_info, ui.recipes_info, *ui.recipe_controls],
        api_visibility="private",
    )
    ui.recipe_name.change(
        guard(select_recipe),
        inputs=[ui.recipe_name, model],
        outputs=ui.recipe_controls,
        api_visibility="private",
        queue=False,
    )
    gr.on(
        [ui.demo.load, model.change, *(controls.lora[i].change for i in (0, 3, 4))],  # r, targets, top layers
        guard(parameter_count),
        inputs=[model, *controls.lora],
        outputs=controls.params,
        trigger_mode="always_last",
        show_progress="hidden",
        api_visibility="private",
        **UNQUEUED,  # counted on the meta device, no weights: never waits behind training
    )
    wire_lora_picture(controls.picture, ui.demo, model, controls.lora)
    ui.start.click(
        guard(lambda: ""), outputs=ui.stop_note, queue=False, api_visibility="private", show_progress="hidden"
    )
    ui.start.click(
        guard(train),
        inputs=[*controls.lora, *controls.training, ui.recipe_name, session],
        outputs=[ui.loss_chart, ui.status, ui.details],
        api_name="train",
        show_progress_on=[ui.loss_chart],
        **RUN_SLOTS,
    ).success(
        guard(download_update), inputs=session, outputs=ui.download, api_visibility="private", show_progress="hidden"
    )
    ui.measure_button.click(
        guard(measure_resources),
        inputs=[model, *controls.lora, session],
        outputs=[ui.resources, ui.by_rank],
        api_visibility="private",
        **TRAIN_SLOTS,
    )
    methods.wire(ui.methods, [*controls.lora, *controls.training, ui.recipe_name], session, ui.download)
    # outside the queue: a stop never waits behind the run it stops, nor for a place in a full queue
    ui.stop.click(guard(stop_training), inputs=session, outputs=ui.stop_note, api_name="stop_training", queue=False)
    return model_selected
