"""Train LoRA tab: the recipe's controls, the live parameter count, and training with a streamed loss chart.

Training runs in a worker thread; its events arrive through a queue and the handler, a generator, redraws
the loss chart at most every `REDRAW_SECONDS`. Stop sets the session's flag, and the Trainer ends after
the current step, keeping what was trained.
"""

from __future__ import annotations

import math
import queue
import shutil
import threading
import time
from dataclasses import asdict, replace
from types import SimpleNamespace

import gradio as gr

from ..config import (
    DEFAULT_MODEL,
    RECIPES,
    LoraSettings,
    TrainConfig,
    UserError,
    field_default,
    field_help,
    field_range,
    get_model_spec,
    recipe,
)
from .state import (
    TRAIN_SLOTS,
    SessionData,
    ensure_splits,
    guard,
    model_markdown,
    progress_callback,
    whole_number,
)

REDRAW_SECONDS = 0.5
LOSS_POINTS = 20  # aim for this many train-loss points, so even a one-epoch run on a few reviews draws a curve


def _control(cls, name: str, label: str, step: float, **kwargs) -> gr.Slider:
    low, high = field_range(cls, name)
    default = field_default(cls, name)
    return gr.Slider(
        low,
        high,
        value=default,
        step=step,
        label=label,
        info=f"{field_help(cls, name)}; default {default:g}",
        **kwargs,
    )


def recipe_updates(recipe_name: str, spec) -> tuple:
    """Set the LoRA controls to a recipe's values for `spec` (r, alpha, dropout, targets, top layers)."""
    lora, _ = recipe(recipe_name, spec)
    encoder = spec.kind == "encoder"
    top = spec.default_top_layers if lora.top_layers is None else lora.top_layers
    return (
        gr.update(value=lora.r),
        gr.update(value=lora.alpha),
        gr.update(value=lora.dropout),
        gr.update(choices=list(spec.lora_targets), value=list(lora.targets_for(spec))),
        gr.update(maximum=spec.num_layers, value=(top or 0) if encoder else 0, interactive=encoder),
    )


def select_model(name: str, recipe_name: str, session: SessionData):
    """The dropdown on the Baseline tab sets the session's model; the LoRA controls follow it."""
    spec = get_model_spec(name)
    session.model_name = spec.name
    return model_markdown(spec.name), *recipe_updates(recipe_name, spec)


def select_recipe(recipe_name: str, model_name: str):
    return recipe_updates(recipe_name, get_model_spec(model_name))


STUDY_SIZES = (500, 200, 100)  # train / validation / test reviews
STUDY_EPOCHS = 1


def study_preset():
    """The original study's configuration in one click: T5-small where it can load, else the bundled model."""
    from ..models import check_available

    spec = get_model_spec("t5-small")
    settings = "500 / 200 / 100 reviews, LoRA r 8, alpha 32, dropout 0.1 on the query and value projections, one epoch"
    try:
        check_available(spec)
        note = f"**The original study's configuration is set:** T5-small, {settings}. Press **Start training**."
    except UserError as err:
        spec = get_model_spec(DEFAULT_MODEL)
        note = (
            f"**T5-small cannot be loaded here:** {err}. The study's settings are set on the bundled `{spec.name}` "
            f"instead: {settings}. Press **Start training**."
        )
    return spec.name, "study", STUDY_EPOCHS, *STUDY_SIZES, *recipe_updates("study", spec), note


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


def train_config(
    epochs, learning_rate, batch_size, max_length, n_train: int, seed: int, base: TrainConfig | None = None
) -> TrainConfig:
    """The controls' values over `base` (a recipe's training settings), with a loss point every few steps."""
    batch = whole_number(batch_size, "batch_size")
    config = replace(
        base or TrainConfig(),
        epochs=float(epochs),
        learning_rate=float(learning_rate),
        batch_size=batch,
        max_length=whole_number(max_length, "max_length"),
        seed=seed,
    )
    total_steps = math.ceil(n_train / batch) * config.epochs
    logging_steps = max(1, min(config.logging_steps, int(total_steps // LOSS_POINTS)))
    return replace(config, logging_steps=logging_steps)


def start_worker(session: SessionData, lora: LoraSettings, config: TrainConfig, events: queue.Queue) -> dict:
    """Train in a thread of its own; `box` receives the tuned model and result, or the error. `None` ends `events`."""
    from ..models import load_bundle
    from ..train import train_lora

    box: dict = {}
    splits, name = session.splits, session.model_name

    def run():
        try:
            bundle = load_bundle(name, seed=config.seed)
            box["tuned"], box["result"] = train_lora(
                bundle, splits.train, splits.val, lora, config, on_event=events.put, stop_event=session.stop_event
            )
        except BaseException as err:  # handed to the handler, which reports it
            box["error"] = err
        finally:
            events.put(None)

    session.stop_event.clear()
    session.worker = threading.Thread(target=run, name=f"lora-train-{name}", daemon=True)
    session.worker.start()
    return box


def stream_events(events: queue.Queue, history: list, progress):
    """Collect the worker's events; every `REDRAW_SECONDS` at most, yield (new loss points?, latest step event).

    Returns when the worker ends.
    """
    last_redraw, new_loss, latest, finished = 0.0, False, None, False
    while not finished:
        try:
            batch = [events.get(timeout=REDRAW_SECONDS)]
        except queue.Empty:
            batch = []
        while True:
            try:
                batch.append(events.get_nowait())
            except queue.Empty:
                break
        for event in batch:
            if event is None:
                finished = True
            elif event["type"] == "progress":
                latest = event
                progress((event["step"], event["max_steps"]), desc="Training", unit="steps")
            else:
                history.append(event)
                new_loss = True
        if latest and time.monotonic() - last_redraw >= REDRAW_SECONDS:
            yield new_loss, latest
            last_redraw, new_loss = time.monotonic(), False


def running_markdown(name: str, step: dict, started: float) -> str:
    return (
        f"**Training `{name}`:** step {step['step']} of {step['max_steps']} (epoch {step['epoch']:.2f}), "
        f"{time.monotonic() - started:.0f} s so far. **Stop** ends it after the current step and keeps the model."
    )


def train(
    r,
    alpha,
    dropout,
    targets,
    top_layers,
    epochs,
    learning_rate,
    batch_size,
    max_length,
    recipe_name: str,
    session: SessionData,
    progress=gr.Progress(),
):
    """Train LoRA on the session's data and model, streaming the loss; then score the tuned model on the test set."""
    from ..inference import serving_copy
    from ..models import check_available
    from ..pipeline import evaluate_model
    from ..plots import loss_figure

    spec = get_model_spec(session.model_name)
    lora = lora_settings(r, alpha, dropout, targets, top_layers)
    # refuse a bad recipe before loading anything
    lora.targets_for(spec)
    lora.layers_for(spec)
    check_available(spec)
    if session.training:
        raise UserError("a training run is already going in this session: wait for it or press Stop")
    notes = ensure_splits(session, progress)
    config = train_config(
        epochs,
        learning_rate,
        batch_size,
        max_length,
        len(session.splits.train),
        session.splits.config.seed,
        recipe(recipe_name or "fast", spec)[1],
    )
    events, history = queue.Queue(), []
    progress(0, desc=f"Loading {spec.name}")
    box = start_worker(session, lora, config, events)
    started = time.monotonic()
    try:
        for new_loss, step in stream_events(events, history, progress):
            session.last_used = time.monotonic()  # a long run is not an idle session
            chart = loss_figure(history, config.epochs) if new_loss else gr.skip()
            yield chart, running_markdown(spec.name, step, started), gr.skip()
    finally:
        if session.training:  # the client went away or the handler failed: end the run, do not orphan it
            session.stop_event.set()
    if "error" in box:
        raise box.pop("error")
    if session.closed:  # the tab closed while the run was ending: nobody is left to use the model
        return
    tuned, result = serving_copy(box["tuned"]), box["result"]  # the app only predicts with it from here
    report = progress_callback(progress, "Scoring the LoRA model on the test reviews")
    metrics, predictions = evaluate_model(
        tuned, session.splits.test, zero_shot=False, max_length=config.max_length, progress=report
    )
    session.export_zip = export_run(session, box.pop("tuned"), lora, config, result, metrics)
    session.tuned, session.tuned_max_length, session.train_result, session.history = (
        tuned,
        config.max_length,
        result,
        list(result.history),
    )
    session.tuned_eval = {"data_version": session.data_version, "metrics": metrics, "predictions": predictions}
    record_run(session, spec.name, recipe_name or "fast", lora, config, result, metrics)
    yield (
        loss_figure(result.history, config.epochs),
        result_markdown(spec.name, result, metrics, notes),
        run_details(result, metrics),
    )


def export_run(session: SessionData, tuned, lora: LoraSettings, config: TrainConfig, result, metrics) -> str:
    """Zip the run's adapter and report into the session's own temporary folder, replacing the previous run's."""
    from ..lora import export_adapter_zip
    from ..pipeline import adapter_metadata, lora_summary
    from ..runs import new_run_name, runs_root, saving_enabled

    report = {
        "model": tuned.spec.name,
        "lora": lora_summary(lora, tuned),
        "train_config": asdict(config),
        **run_details(result, metrics),
        "finetuned": metrics,
        "history": result.history,
    }
    archive = export_adapter_zip(tuned, session.scratch_dir(), adapter_metadata(lora, config, tuned), report)
    if saving_enabled():  # the operator's choice; off by default, so a public Space never fills its disk
        runs_root().mkdir(parents=True, exist_ok=True)
        shutil.copytree(archive.parent / "lora-adapter", runs_root() / new_run_name())
    return str(archive)


def download_update(session: SessionData):
    return gr.update(value=session.export_zip, visible=session.export_zip is not None)


RESOURCE_REVIEWS = 8  # one batch of training reviews for the measured steps


def measure_resources(
    model_name, r, alpha, dropout, targets, top_layers, session: SessionData, progress=gr.Progress()
):
    """A few measured steps of LoRA and of full fine-tuning on the same batch, and trainable parameters vs r."""
    from ..models import check_available
    from ..plots import trainable_by_rank_figure
    from ..resources import measure, trainable_by_rank

    lora = lora_settings(r, alpha, dropout, targets, top_layers)
    spec = get_model_spec(model_name)
    lora.targets_for(spec)
    lora.layers_for(spec)
    check_available(spec)
    if session.training:
        raise UserError("a training run is going in this session: measure once it has finished")
    ensure_splits(session, progress)
    progress(0.1, desc="Measuring a few steps of LoRA and of full fine-tuning")
    frame = session.splits.train.head(RESOURCE_REVIEWS)
    result = measure(spec.name, lora, frame)
    return resources_markdown(spec.name, result), trainable_by_rank_figure(trainable_by_rank(spec.name, lora), lora.r)


def resources_markdown(name: str, result: dict) -> str:
    lora, full, batch = result["lora"], result["full"], result["batch"]
    return (
        f"Measured on `{name}` with one batch of {batch['reviews']} training reviews ({batch['max_length']} tokens "
        f"at most), AdamW, median of {batch['steps']} steps after a warm-up.\n\n"
        "| | LoRA | Full fine-tuning |\n|---|---|---|\n"
        f"| Trainable parameters | {lora['trainable']:,} ({lora['percent']:.3f}%) | {full['trainable']:,} (100%) |\n"
        f"| Time per step | {lora['seconds_per_step']:.3f} s | {full['seconds_per_step']:.3f} s |\n"
        f"| Memory growth during the steps | {lora['memory_growth_mb']:.0f} MB | {full['memory_growth_mb']:.0f} MB |\n"
        f"| Saved to disk | {lora['saved_mb'] * 1024:.0f} KB (the adapter) "
        f"| {full['saved_mb']:.1f} MB (the whole model) |\n\n"
        f"LoRA's step is **{result['speedup']:.2f}x** as fast here and what it saves is "
        f"**{result['size_ratio']:.0f}x** smaller: no gradients or optimizer state for the frozen weights, "
        "and only the small matrices to store."
    )


MAX_RUNS = 20  # per session: the oldest run is dropped beyond this


def record_run(session: SessionData, model: str, recipe_name: str, lora: LoraSettings, config, result, metrics):
    """Keep a finished run's settings, scores and loss history, so the Compare tab can set runs side by side."""
    spec = get_model_spec(model)
    session.runs.append(
        {
            "name": f"run {len(session.runs) + 1}: r {lora.r}, {recipe_name}",
            "model": model,
            "recipe": recipe_name,
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "targets": ", ".join(lora.targets_for(spec)),
            "top_layers": lora.top_layers if lora.top_layers is not None else spec.default_top_layers or 0,
            "epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "trainable": result.params["trainable"],
            "seconds": round(result.seconds, 1),
            "stopped": result.stopped,
            "val_loss": result.val_loss,
            "test_reviews": metrics["n"],
            "accuracy": metrics["accuracy"],
            "f1": metrics["f1"],
            "history": list(result.history),
        }
    )
    del session.runs[:-MAX_RUNS]


def result_markdown(name: str, result, metrics: dict, notes: list[str]) -> str:
    def loss(value):
        return "n/a" if value is None else f"{value:.4f}"

    how = (
        f"**Stopped** after {result.steps} of {result.max_steps} steps; the partly trained model is kept."
        if result.stopped
        else f"**Done:** {result.steps} steps."
    )
    params = result.params
    text = (
        f"{how} Time {result.seconds:.1f} s.\n\n"
        f"| Train loss | Validation loss | Trainable parameters |\n|---|---|---|\n"
        f"| {loss(result.train_loss)} | {loss(result.val_loss)} | {params['trainable']:,} of {params['total']:,} "
        f"({params['percent']:.3f}%) |\n\n"
        f"LoRA `{name}` on {metrics['n']} test reviews: accuracy **{metrics['accuracy']:.3f}**, "
        f"F1 {metrics['f1']:.3f}. See the **Compare** tab, or try your own text on **Classify**."
    )
    if metrics.get("warning"):
        text += f"\n\n> ⚠️ {metrics['warning']}"
    return text + "".join(f"\n\n> **Note:** {note}" for note in notes)


def run_details(result, metrics: dict) -> dict:
    details = {key: value for key, value in result.as_dict().items() if key != "history"}
    return {**details, "loss_points": len(result.history), "test_metrics": metrics}


def stop_training(session: SessionData) -> str:
    """Ask the session's training run to end after its current step."""
    if not session.training:
        return "No training is running in this session."
    session.stop_event.set()
    return "Stopping after the current step; the model trained so far is kept and scored."


def build(session: gr.State, model: gr.Dropdown, demo: gr.Blocks) -> SimpleNamespace:
    spec = get_model_spec(DEFAULT_MODEL)
    model_info = gr.Markdown(model_markdown(DEFAULT_MODEL))
    gr.Markdown(
        "**Recipe `fast`** (the default) adapts query, key, value and dense of the top 3 layers with rank 8, "
        "alpha 32 and no dropout; the frozen bottom 3 layers run once per review and are cached, and bf16 is used "
        "where the CPU runs it natively. On 2 CPU cores it trains on 500 IMDb reviews in about 40 s and scores "
        "about 0.86 accuracy on 2,000 test reviews. **Recipe `study`** is the original study's LoRA: rank 8, "
        "alpha 32, dropout 0.1 on query and value of every layer (bf16 where native). Choosing a recipe sets the "
        "controls; change any of them from there."
    )
    with gr.Row(equal_height=True):
        recipe_name = gr.Radio(
            [(f"{name}: {what}", name) for name, what in RECIPES.items()], value="fast", label="Recipe", scale=4
        )
        preset = gr.Button("Original study preset", scale=1)
    preset_note = gr.Markdown(elem_id="preset-note")
    with gr.Row():
        with gr.Column():
            r = _control(LoraSettings, "r", "Rank r", 1)
            alpha = _control(LoraSettings, "alpha", "Alpha", 1)
            dropout = _control(LoraSettings, "dropout", "LoRA dropout", 0.05)
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
        with gr.Column():
            epochs = _control(TrainConfig, "epochs", "Epochs", 0.1)
            low, high = field_range(TrainConfig, "learning_rate")
            learning_rate = gr.Number(
                field_default(TrainConfig, "learning_rate"),
                minimum=low,
                maximum=high,
                label="Learning rate",
                info=f"{field_help(TrainConfig, 'learning_rate')}; "
                f"default {field_default(TrainConfig, 'learning_rate'):g}, from {low:g} to {high:g}",
            )
            batch_size = _control(TrainConfig, "batch_size", "Batch size", 1)
            max_length = _control(TrainConfig, "max_length", "Max length (tokens)", 16)
            params = gr.Markdown("Counting trainable parameters …")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", scale=3)
        stop = gr.Button("Stop", variant="stop", scale=1)
    stop_note = gr.Markdown(label="stop")
    with gr.Accordion("Why LoRA saves resources, measured", open=False):
        measure_button = gr.Button("Measure LoRA vs full fine-tuning on a batch of reviews")
        resources = gr.Markdown(elem_id="resources")
        by_rank = gr.Plot(label="Trainable parameters vs r", show_label=False, elem_id="by-rank")
    download = gr.DownloadButton(
        "Download the adapter (zip: safetensors, adapter config, report)", visible=False, elem_id="download-adapter"
    )
    loss_chart = gr.Plot(label="Loss", show_label=False, elem_id="loss-chart")
    status = gr.Markdown(label="result", value="Training results appear here.", elem_id="train-status")
    with gr.Accordion("Run details (JSON)", open=False):
        details = gr.JSON(label="Training run")

    lora_controls = [r, alpha, dropout, targets, top_layers]
    model_selected = model.change(
        guard(select_model),
        inputs=[model, recipe_name, session],
        outputs=[model_info, *lora_controls],
        api_visibility="private",
    )
    recipe_name.change(
        guard(select_recipe), inputs=[recipe_name, model], outputs=lora_controls, api_visibility="private", queue=False
    )
    gr.on(
        [demo.load, model.change, r.change, targets.change, top_layers.change],
        guard(parameter_count),
        inputs=[model, *lora_controls],
        outputs=params,
        trigger_mode="always_last",
        show_progress="hidden",
        api_visibility="private",
    )
    start.click(guard(lambda: ""), outputs=stop_note, queue=False, api_visibility="private", show_progress="hidden")
    start.click(
        guard(train),
        inputs=[*lora_controls, epochs, learning_rate, batch_size, max_length, recipe_name, session],
        outputs=[loss_chart, status, details],
        api_name="train_lora",
        show_progress_on=[loss_chart],
        **TRAIN_SLOTS,
    ).success(
        guard(download_update), inputs=session, outputs=download, api_visibility="private", show_progress="hidden"
    )
    measure_button.click(
        guard(measure_resources),
        inputs=[model, *lora_controls, session],
        outputs=[resources, by_rank],
        api_visibility="private",
        **TRAIN_SLOTS,
    )
    # outside the queue: a stop never waits behind the run it stops, nor for a place in a full queue
    stop.click(
        guard(stop_training),
        inputs=session,
        outputs=stop_note,
        api_name="stop_training",
        queue=False,  # answered at once, even when the queue is full
    )
    return SimpleNamespace(
        model_selected=model_selected,
        loss_chart=loss_chart,
        preset=preset,
        preset_note=preset_note,
        recipe_name=recipe_name,
        epochs=epochs,
        lora_controls=lora_controls,
    )
