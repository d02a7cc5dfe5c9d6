"""Compare tab: the zero-shot baseline and the LoRA model on the same test reviews."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..config import LABEL_NAMES
from .baseline import baseline_for
from .state import SessionData, guard, progress_callback

BEFORE_TRAINING = (
    "Nothing to compare yet. First train a LoRA adapter on the **Train LoRA** tab (loading data on **Dataset** "
    "and evaluating on **Baseline** are optional: missing steps run with the defaults); then come back here."
)
TABLE_HEADERS = ["metric", "baseline (zero-shot)", "LoRA fine-tuned", "change"]


def tuned_metrics(session: SessionData, progress=None) -> dict:
    """The LoRA model's metrics on the session's current test reviews, recomputed after a data reload."""
    from ..pipeline import evaluate_model

    if session.tuned_eval and session.tuned_eval["data_version"] == session.data_version:
        return session.tuned_eval["metrics"]
    report = progress_callback(progress, "Scoring the LoRA model on the test reviews") if progress else None
    metrics, predictions = evaluate_model(
        session.tuned, session.splits.test, zero_shot=False, max_length=session.tuned_max_length, progress=report
    )
    session.tuned_eval = {"data_version": session.data_version, "metrics": metrics, "predictions": predictions}
    return metrics


def comparison_rows(baseline: dict, finetuned: dict) -> list[list]:
    """Headline metrics (positive class) then precision / recall / F1 of each class, with the change."""
    pairs = [
        (f"{title} (positive)" if key != "accuracy" else title, baseline[key], finetuned[key])
        for key, title in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"))
    ]
    for name in LABEL_NAMES:
        for key, title in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
            pairs.append((f"{name}: {title}", baseline["per_class"][name][key], finetuned["per_class"][name][key]))
    return [[title, round(before, 3), round(after, 3), f"{after - before:+.3f}"] for title, before, after in pairs]


def compare(session: SessionData, progress=gr.Progress()):
    """Both models' metrics side by side; before any training, only a message saying what to do."""
    from ..plots import confusion_figure, metrics_comparison_figure

    if session.tuned is None:
        return BEFORE_TRAINING, gr.update(visible=False), None, None, None, None
    name = session.tuned.spec.name
    baseline = baseline_for(session, name, progress)["metrics"]
    finetuned = tuned_metrics(session, progress)
    warnings = "".join(
        f"\n\n> ⚠️ **{who}:** {m['warning']}"
        for who, m in (("Baseline", baseline), ("LoRA", finetuned))
        if m.get("warning")
    )
    summary = (
        f"`{name}` on the same {baseline['n']} test reviews from `{session.splits.source}`: accuracy "
        f"**{baseline['accuracy']:.3f} → {finetuned['accuracy']:.3f}**, F1 (positive) "
        f"**{baseline['f1']:.3f} → {finetuned['f1']:.3f}**." + warnings
    )
    return (
        summary,
        gr.update(visible=True),
        comparison_rows(baseline, finetuned),
        confusion_figure(baseline, "Baseline (zero-shot)"),
        confusion_figure(finetuned, "LoRA fine-tuned"),
        metrics_comparison_figure(baseline, finetuned),
    )


def build(session: gr.State, tab: gr.Tab) -> SimpleNamespace:
    summary = gr.Markdown(BEFORE_TRAINING)
    with gr.Column(visible=False) as results:
        bars = gr.Plot(label="Metrics", show_label=False)
        with gr.Row():
            baseline_confusion = gr.Plot(label="Baseline confusion matrix", show_label=False)
            lora_confusion = gr.Plot(label="LoRA confusion matrix", show_label=False)
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Baseline vs LoRA", interactive=False)

    tab.select(
        guard(compare),
        inputs=session,
        outputs=[summary, results, table, baseline_confusion, lora_confusion, bars],
        api_visibility="private",
    )
    return SimpleNamespace(summary=summary)
