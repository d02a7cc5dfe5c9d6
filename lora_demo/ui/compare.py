"""Compare tab: the zero-shot baseline and the LoRA model on the same test reviews."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..config import LABEL_NAMES
from .errors import guard
from .pictures import NO_PICTURES, build_change_pictures, build_result_sentence, compare_pictures, result_outputs
from .runs import build_loader
from .session import EVALUATE_SLOTS, SessionData
from .widgets import study_progress

BEFORE_TRAINING = (
    "Nothing to compare yet. First train a LoRA adapter on the **Train LoRA** tab (loading data on **Dataset** "
    "and evaluating on **Baseline** are optional: missing steps run with the defaults); then come back here."
)
TABLE_HEADERS = ["metric", "baseline (zero-shot)", "LoRA fine-tuned", "change"]
LADDER_HEADERS = [
    "model",
    "accuracy",
    "F1 (positive)",
    "short reviews, hand-written (test half): accuracy",
    "short reviews, IMDb test endings: accuracy",
    "how it was made",
]
RUNG_NOTES = {
    "baseline": "no training: the pretrained model as it is",
    "tfidf": "word counts and a linear classifier, on the same training reviews",
    "head_only": "the same classification head, trained with the model frozen",
    "finetuned": "LoRA adapters and the head, trained together",
}


def ladder_rows(report: dict) -> list[list]:
    """One row per rung of the ladder, bottom to top, on the same test reviews; the short reviews beside them."""
    from ..report import RUNGS

    short = report.get("short_reviews") or {}
    if "dev" not in short and "test" not in short:  # a report saved before the halves: all 160 as one set
        short = {"test": short}
    rows = []
    for key, title in RUNGS:
        if key not in report:
            continue
        on_short = [short.get(name, {}).get(key, {}).get("accuracy") for name in ("test", "imdb_sentences")]
        rows.append(
            [
                title,
                round(report[key]["accuracy"], 3),
                round(report[key]["f1"], 3),
                *("–" if value is None else round(value, 3) for value in on_short),
                RUNG_NOTES[key],
            ]
        )
    return rows


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


RUN_HEADERS = [
    "run", "accuracy", "F1", "val loss", "seconds", "recipe", "r", "alpha", "dropout", "targets", "top layers",
    "epochs", "lr", "trainable", "model", "test reviews",
]  # fmt: skip


def run_rows(runs) -> list[list]:
    """One row per training run of the session (`study.RunRecord`): its scores first, then its settings."""
    return [
        [
            run.name,
            round(run.accuracy, 3),
            round(run.f1, 3),
            None if run.val_loss is None else round(run.val_loss, 4),
            run.seconds,
            run.recipe,
            run.lora["r"],
            run.lora["alpha"],
            run.lora["dropout"],
            ", ".join(run.lora["target_modules"]),
            run.lora["layers"] if run.lora["layers"] == "all" else len(run.lora["layers"]),
            run.config.epochs,
            run.config.learning_rate,
            run.trainable,
            run.model,
            run.test_reviews,
        ]
        for run in runs
    ]


METHOD_HEADERS = [
    "method", "accuracy (95% interval)", "F1", "p vs LoRA", "trainable", "shipped", "train s", "peak MB",
    "short reviews", "vectors kept (on / off)", "lr chosen (grid)",
]  # fmt: skip


def method_rows(comparison: dict) -> list[list]:
    """One row per training method of the report's `methods`, LoRA first."""
    from ..report import readable_size

    rows = []
    for name, row in comparison["methods"].items():
        low, high = row["accuracy_interval"]
        shift = row["embedding_shift"]
        off = "–" if shift["adapter_off"] is None else f"{shift['adapter_off']:.3f}"
        short = row["short_reviews_accuracy"]
        rows.append(
            [
                name,
                f"{row['accuracy']:.3f} ({low:.3f}–{high:.3f})",
                round(row["f1"], 3),
                "–" if row["p_value_vs_lora"] is None else round(row["p_value_vs_lora"], 3),
                f"{row['trainable_params']:,}",
                readable_size(row["shipped_bytes"]),
                round(row["train_seconds"]),
                round(row["peak_memory_mb"]),
                "–" if short is None else round(short, 3),
                f"{shift['adapter_on']:.3f} / {off}",
                f"{row['chosen_lr']:g} ({', '.join(f'{lr:g}' for lr in row['lr_grid'])})",
            ]
        )
    return rows


def methods_markdown(comparison: dict) -> str:
    """What the method comparison shows, its conditions, and how to read the columns."""
    conditions, work = comparison["conditions"], comparison["work"]
    sizes = conditions["sizes"]
    described = "\n".join(f"- **{name}**: {row['description']}" for name, row in comparison["methods"].items())
    cost = f" ({work['lora_runs']:.1f} LoRA runs of training in all)" if work.get("lora_runs") else ""
    return (
        f"**Is LoRA the right choice?** {comparison['sentence']}\n\n"
        f"Every method trained the same head on the same {sizes['train']} training reviews for "
        f"{conditions['epochs']:g} epoch{'' if conditions['epochs'] == 1 else 's'}, at the learning rate its "
        f"{sizes['val']} validation reviews preferred "
        f"from its grid{cost}; all are scored on the same {comparison['n']} test reviews. *p vs LoRA*: McNemar's "
        "exact test on the reviews the two answered differently. *Shipped*: the adapter file, or the whole model. "
        "*Peak memory*: the most memory training held above its start. *Sentence vectors*: the mean cosine "
        "between the untouched model's pooled vectors of test reviews and the trained model's, with its adapter on "
        "and off (1 = unmoved; full fine-tuning has no adapter to turn off).\n\n" + described
    )


def methods_outputs(report: dict) -> tuple:
    """(the section's visibility, its text, the table, the Pareto chart) for a report with or without `methods`."""
    from ..plots import methods_pareto_figure

    comparison = report.get("methods")
    if not comparison:
        return gr.update(visible=False), None, None, None
    return (
        gr.update(visible=True),
        methods_markdown(comparison),
        method_rows(comparison),
        methods_pareto_figure(comparison),
    )


FLIP_HEADERS = ["review", "true label", "baseline", "LoRA"]
REVIEW_CHARS = 300


def _answer(predictions, i: int) -> str:
    return f"{predictions.label_names()[i]} ({predictions.confidence[i]:.0%})"


def flip_rows(test, indices: list[int], before, after) -> list[list[str]]:
    """One row per review: its text (shortened), the true label and both models' answers with confidence."""
    rows = []
    for i in indices:
        text = test["text"].iloc[i]
        short = text if len(text) <= REVIEW_CHARS else text[: REVIEW_CHARS - 1] + "…"
        rows.append([short, LABEL_NAMES[int(test["label"].iloc[i])], _answer(before, i), _answer(after, i)])
    return rows


def calibration_markdown(report: dict) -> str:
    """What calibration did to each rung on the test reviews, and from which confidence each is "sure"."""
    from ..calibration import SURE_ACCURACY
    from ..report import RUNGS

    calibration = report.get("calibration") or {}
    rows = [
        f"| {title} | {figures['temperature']:.2f} | {figures['ece_before']:.3f} → {figures['ece_after']:.3f} | "
        f"{figures['sure_from']:.0%} |"
        for key, title in RUNGS
        if "temperature" in (figures := calibration.get(key, {}))
    ]
    if not rows:
        return (
            "**Confidence.** Not calibrated: no validation reviews the models never trained on, or too few, are "
            "known; Classify shows each model's raw softmax confidence."
        )
    return "\n".join(
        [
            "**How much is a confidence worth?** Each model's logit is divided by one temperature fitted on the "
            "validation reviews (above 1: it was too sure of itself); the expected calibration error (ECE, 10 "
            "bins) is the gap between confidence and accuracy on the test reviews. Classify shows the calibrated "
            f"confidence and says *not sure* below the confidence from which validation answers were right "
            f"{SURE_ACCURACY:.0%} of the time.",
            "",
            "| model | temperature | ECE on test, before → after | *not sure* below |",
            "|---|---|---|---|",
            *rows,
        ]
    )


def significance_markdown(result: dict) -> str:
    """The verdict in words, then both models' bootstrap intervals."""
    level = f"{result['confidence']:.0%}"
    lines = [
        f"**Is the gain real?** {result['verdict']}",
        "",
        f"| {level} bootstrap interval | Baseline (zero-shot) | LoRA fine-tuned |",
        "|---|---|---|",
    ]
    for metric, title in (("accuracy", "Accuracy"), ("f1", "F1 (positive)")):
        (b_low, b_high), (t_low, t_high) = (result["intervals"][metric][who] for who in ("baseline", "finetuned"))
        lines.append(f"| {title} | {b_low:.3f} – {b_high:.3f} | {t_low:.3f} – {t_high:.3f} |")
    return "\n".join(lines)


def compare(session: SessionData, progress=gr.Progress()):
    """Both models' metrics side by side; before any training, only a message saying what to do."""
    from ..plots import confusion_figure, metrics_comparison_figure, reliability_figure, runs_loss_figure

    study = session.study
    if study.tuned is None:
        return BEFORE_TRAINING, gr.update(visible=False), *([None] * 12), *methods_outputs({}), *NO_PICTURES
    study.ensure_data()  # a saved run may be loaded before any data
    report = study.report(progress=study_progress(progress)).to_dict()
    baseline, finetuned, result = report["baseline"], report["finetuned"], report["comparison"]
    # the flipped reviews' answers with the confidences Classify would show (calibrated where the model is)
    before, after = study.baseline(max_length=study.tuned.config.max_length).predictions, study.finetuned().predictions
    before, after = (
        fitted.apply(answers) if (fitted := study.calibration(rung)) else answers
        for rung, answers in (("baseline", before), ("finetuned", after))
    )
    test = study.splits.test
    return (
        summary_markdown(report),
        gr.update(visible=True),
        ladder_rows(report),
        comparison_rows(baseline, finetuned),
        confusion_figure(baseline, "Baseline (zero-shot)"),
        confusion_figure(finetuned, "LoRA fine-tuned"),
        metrics_comparison_figure(baseline, finetuned),
        significance_markdown(result),
        reliability_figure(report.get("calibration") or {}),
        calibration_markdown(report),
        gr.update(
            value=flip_rows(test, result["fixed"], before, after),
            label=f"Fixed by LoRA: {result['n_fixed']} reviews the baseline got wrong and LoRA got right",
        ),
        gr.update(
            value=flip_rows(test, result["broken"], before, after),
            label=f"Broken by LoRA: {result['n_broken']} reviews the baseline got right and LoRA got wrong",
        ),
        runs_loss_figure([{"name": run.name, "history": run.history} for run in study.runs]),
        run_rows(study.runs),
        *methods_outputs(report),
        *compare_pictures(report, test["label"].tolist(), before.labels, after.labels, test["text"].tolist()),
    )


def summary_markdown(report: dict) -> str:
    baseline, finetuned = report["baseline"], report["finetuned"]
    warnings = "".join(
        f"\n\n> ⚠️ **{who}:** {m['warning']}"
        for who, m in (("Baseline", baseline), ("LoRA", finetuned))
        if m.get("warning")
    )
    from ..report import short_reviews_line

    short = short_reviews_line(report)
    return (
        f"`{report['model']}` on the same {baseline['n']} test reviews from `{report['data']['source']}`: accuracy "
        f"**{baseline['accuracy']:.3f} → {finetuned['accuracy']:.3f}**, F1 (positive) "
        f"**{baseline['f1']:.3f} → {finetuned['f1']:.3f}**." + (f"\n\n{short}" if short else "") + warnings
    )


def build(session: gr.State, tab: gr.Tab) -> SimpleNamespace:
    loaded_run = build_loader(session, "saved-runs-compare")
    sentence = build_result_sentence()
    summary = gr.Markdown(BEFORE_TRAINING)
    with gr.Column(visible=False) as results:
        ladder = gr.Dataframe(
            headers=LADDER_HEADERS,
            label="The ladder: what each step up buys, on the same test reviews",
            interactive=False,
            wrap=True,
            column_widths=["26%", "11%", "12%", "17%", "34%"],
            elem_id="ladder",
        )
        bars = gr.Plot(label="Metrics", show_label=False)
        with gr.Row():
            baseline_confusion = gr.Plot(label="Baseline confusion matrix", show_label=False)
            lora_confusion = gr.Plot(label="LoRA confusion matrix", show_label=False)
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Baseline vs LoRA", interactive=False)
        significance = gr.Markdown(elem_id="significance")
        reliability = gr.Plot(label="Reliability", show_label=False, elem_id="reliability")
        calibration = gr.Markdown(elem_id="calibration")
        pictures = build_change_pictures()
        fixed, broken = (
            gr.Dataframe(
                headers=FLIP_HEADERS,
                label=label,
                interactive=False,
                wrap=True,
                max_height=420,
                column_widths=["64%", "12%", "12%", "12%"],
            )
            for label in ("Fixed by LoRA", "Broken by LoRA")
        )
        gr.Markdown(
            "**Your runs.** Every training run of this session, newest last: change r, the targets or the recipe "
            "on **Train LoRA**, train again, and compare here. The LoRA model above is the latest run."
        )
        runs_chart = gr.Plot(label="Runs", show_label=False, elem_id="runs-chart")
        runs_table = gr.Dataframe(headers=RUN_HEADERS, label="Training runs", interactive=False, elem_id="runs")
        with gr.Column(visible=False, elem_id="methods") as methods_section:
            methods_text = gr.Markdown(elem_id="methods-text")
            methods_chart = gr.Plot(label="Methods", show_label=False, elem_id="methods-chart")
            methods_table = gr.Dataframe(
                headers=METHOD_HEADERS,
                label="Training methods on the same reviews",
                interactive=False,
                wrap=True,
                column_widths=["8%", "15%", "6%", "7%", "10%", "8%", "6%", "7%", "8%", "12%", "13%"],
                elem_id="methods-table",
            )

    compare_args = dict(
        fn=guard(compare),
        inputs=session,
        outputs=[
            summary,
            results,
            ladder,
            table,
            baseline_confusion,
            lora_confusion,
            bars,
            significance,
            reliability,
            calibration,
            fixed,
            broken,
            runs_chart,
            runs_table,
            methods_section,
            methods_text,
            methods_table,
            methods_chart,
            *result_outputs(sentence, pictures),
        ],
        api_visibility="private",
        **EVALUATE_SLOTS,
    )
    tab.select(**compare_args)
    loaded_run.success(**compare_args)  # a saved run compared at once
    return SimpleNamespace(summary=summary, refresh=compare_args)
