"""Baseline tab: the chosen model's zero-shot answers on the test reviews, before any fine-tuning."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..config import DEFAULT_MODEL, LABEL_NAMES, MODEL_REGISTRY
from .errors import guard
from .session import EVALUATE_SLOTS, SessionData
from .widgets import download_progress, notes_markdown, study_progress

PER_CLASS_HEADERS = ["class", "precision", "recall", "F1", "support (true)", "predicted"]


def model_choices() -> list[tuple[str, str]]:
    return [(f"{spec.name}: {spec.description}", spec.name) for spec in MODEL_REGISTRY.values()]


def metrics_markdown(metrics: dict) -> str:
    """The four headline numbers, the prediction counts and, for a collapsed model, the warning."""
    counts = metrics["prediction_counts"]
    predicted = ", ".join(f"{counts[name]} {name}" for name in (*LABEL_NAMES, "unmapped") if counts.get(name))
    text = (
        "| Accuracy | Precision | Recall | F1 |\n|---|---|---|---|\n"
        f"| {metrics['accuracy']:.3f} | {metrics['precision']:.3f} | {metrics['recall']:.3f} | {metrics['f1']:.3f} |"
        f"\n\nPrecision, recall and F1 are for the positive class. Predicted: {predicted} "
        f"(of {metrics['n']} test reviews)."
    )
    if metrics.get("warning"):
        text += f"\n\n> ⚠️ **Collapsed model.** {metrics['warning']}"
    return text


def per_class_rows(metrics: dict) -> list[list]:
    counts = metrics["prediction_counts"]
    rows = [
        [name, round(m["precision"], 3), round(m["recall"], 3), round(m["f1"], 3), m["support"], counts[name]]
        for name, m in metrics["per_class"].items()
    ]
    if counts.get("unmapped"):
        rows.append(["unmapped (neither word)", None, None, None, 0, counts["unmapped"]])
    return rows


def evaluate_baseline(model_name, session: SessionData, progress=gr.Progress()):
    """Score the untouched model on the test reviews; it becomes the session's model."""
    study = session.study
    study.select_model(model_name)
    study.check_model()
    notes = study.ensure_data(download_progress(progress, "Downloading IMDb from the Hugging Face Hub"))
    study.download_model(download_progress(progress, f"Downloading {study.model_name} from the Hugging Face Hub"))
    metrics = study.baseline(progress=study_progress(progress)).metrics
    return baseline_view(study, metrics, notes)


def baseline_view(study, metrics: dict, notes=()) -> tuple:
    """What the tab shows of a zero-shot score: the summary, the per-class rows, the confusion matrix, the JSON.

    The whole-study button fills the tab with it too.
    """
    from ..plots import confusion_figure

    heading = f"**Zero-shot `{study.model_name}`** on {metrics['n']} test reviews from `{study.splits.source}`.\n\n"
    return (
        heading + metrics_markdown(metrics) + notes_markdown(notes),
        per_class_rows(metrics),
        confusion_figure(metrics, f"Baseline confusion matrix ({study.model_name}, zero-shot)"),
        metrics,
    )


def build(session: gr.State) -> SimpleNamespace:
    gr.Markdown(
        "How good is the pretrained model **before** any fine-tuning? Seq2seq models (T5) answer the study's "
        "prompt with the more probable of the words `positive` and `negative`; the MiniLM encoder compares each "
        "review with short descriptions of each label. The model you choose here is also the one trained and used "
        "on the next tabs."
    )
    with gr.Row():
        model = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model", scale=3)
        evaluate = gr.Button("Evaluate baseline", variant="primary", scale=1)
    summary = gr.Markdown(label="summary", value="Press **Evaluate baseline** to score the model on the test reviews.")
    with gr.Row():
        per_class = gr.Dataframe(headers=PER_CLASS_HEADERS, label="Per-class report", interactive=False)
        confusion = gr.Plot(label="Confusion matrix", show_label=False)
    with gr.Accordion("All metrics (JSON)", open=False):
        details = gr.JSON(label="Baseline metrics")

    view = [summary, per_class, confusion, details]  # baseline_view's outputs, in its order
    evaluate.click(
        guard(evaluate_baseline),
        inputs=[model, session],
        outputs=view,
        api_name="evaluate_baseline",
        **EVALUATE_SLOTS,
    )
    return SimpleNamespace(model=model, view=view)
