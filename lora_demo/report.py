"""The one report of a study: the same keys in `train --report`, `report.json` beside a saved adapter and the
app's downloaded zip, and the table and sentences the CLI prints from it.

Keys scripts already read stay where they were (`data.sizes`, `baseline` / `finetuned` with `n`,
`comparison.p_value`, ...); new figures are added beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# the comparison ladder, bottom to top: each rung is scored on the same test reviews
RUNGS = (
    ("baseline", "Baseline (zero-shot)"),
    ("tfidf", "TF-IDF + logistic regression"),
    ("head_only", "Head only (encoder frozen)"),
    ("finetuned", "LoRA fine-tuned"),
)


@dataclass
class Report:
    """Everything one study measured. `None` fields are left out of the JSON (a rung that was not run).

    Attributes:
        model, model_kind: the registry model and its kind.
        data: the split the models were scored on (`Splits.summary()`).
        trained_on: what the LoRA model trained and validated on (`SplitRecord.to_dict()`, hashes left out).
        lora, train_config, params, train: the run's settings, parameter counts and training figures.
        baseline, tfidf, head_only, finetuned: the ladder's metrics on the test reviews (`evaluate_predictions`).
        comparison: LoRA vs zero-shot on the same reviews (`significance.compare_models`); its verdict also says
            what LoRA adds over the head alone.
        rungs: how the TF-IDF and head-only rungs were made (the head's training figures), or why they are missing.
        calibration: per rung, its temperature and "not sure" threshold fitted on validation reviews, and its
            accuracy and expected calibration error (ECE, 10 bins) on the test reviews before and after
            (`Study.calibration_report`).
        short_reviews: the short-review test sets (`Study.short_reviews`): the hand-written reviews' `dev` and
            `test` halves and `imdb_sentences`, each scored by every rung, or why it was left out.
        resources: LoRA vs full fine-tuning, measured (`resources.measure`), when asked for.
        update_norms, projection: where the adapter changed the model and how the reviews moved, when computed.
        methods: full fine-tuning and other PEFT methods against LoRA on the same reviews, when asked for
            (`Study.compare_methods`, `methods.compare_runs`).
        runtime: where the compute ran: `device`, `device_name`, `dtype` (of training's products), `runner` and
            `jobs_in_workers` (how many jobs crossed a process boundary: ZeroGPU, or its stand-in).
        adapter: the folder the adapter was saved to.
    """

    model: str
    model_kind: str
    data: dict
    lora: dict
    train_config: dict
    params: dict
    train: dict
    baseline: dict
    finetuned: dict
    comparison: dict
    trained_on: dict
    tfidf: dict | None = None
    head_only: dict | None = None
    rungs: dict | None = None
    calibration: dict | None = None
    short_reviews: dict | None = None
    resources: dict | None = None
    update_norms: list | None = None
    projection: dict | None = None
    methods: dict | None = None
    runtime: dict | None = None
    adapter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def train_summary(result) -> dict:
    """The `train` key: a `TrainResult` without its parameter counts (they are `params`)."""
    return {key: value for key, value in result.as_dict().items() if key != "params"}


def _note(metrics: dict) -> str:
    counts = metrics.get("prediction_counts")
    if counts is None:
        return ""
    if metrics.get("collapsed"):
        return "collapsed: " + metrics["warning"].split(":")[1].split(",")[0].strip()
    unmapped = f" / {counts['unmapped']} unmapped" if counts.get("unmapped") else ""
    return f"{counts['negative']} negative / {counts['positive']} positive predicted{unmapped}"


def _cell(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.3f}" if key in metrics else "–"


def comparison_table(report: dict) -> str:
    """The study's table, one row per rung of the ladder that was run: accuracy / precision / recall / F1."""
    lines = [
        f"| Model ({report['model']}, {report['baseline']['n']} test reviews) | Accuracy | Precision | Recall "
        f"| F1 | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for key, title in RUNGS:
        metrics = report.get(key)
        if metrics:
            cells = " | ".join(_cell(metrics, name) for name in ("accuracy", "precision", "recall", "f1"))
            lines.append(f"| {title} | {cells} | {_note(metrics)} |")
    return "\n".join(lines)


SHORT_SETS = (("test", "the hand-written reviews' test half"), ("imdb_sentences", "endings of IMDb test reviews"))


def short_review_sets(report: dict) -> list[tuple[str, dict]]:
    """The short-review test sets a report shows, as (title, scores or reason): the hand-written test half and
    the IMDb test endings (a report saved before the halves holds all 160 hand-written reviews as one set)."""
    short = report.get("short_reviews")
    if not short:
        return []
    if "dev" not in short and "test" not in short:  # saved before the halves
        return [("the hand-written reviews", short)]
    return [(title, short[key]) for key, title in SHORT_SETS if key in short]


def short_reviews_line(report: dict) -> str | None:
    """Every rung on the short-review test sets in one line, or why a set was left out."""
    parts = []
    for title, scores in short_review_sets(report):
        if "reason" in scores:
            parts.append(f"{title}: left out ({scores['reason']})")
            continue
        rungs = ", ".join(
            f"{name.split(' (')[0].lower()} {scores[key]['accuracy']:.3f}"
            + (f" (ECE {scores[key]['ece']:.3f})" if "ece" in scores[key] else "")
            for key, name in RUNGS
            if key in scores
        )
        parts.append(f"{scores['n']} from {title}: {rungs}")
    return f"Reviews like the ones you type, accuracy: {'; '.join(parts)}." if parts else None


def methods_table(report: dict) -> str:
    """The method comparison, one row per method: test accuracy with its interval, p against LoRA, what trains
    and ships, time, memory, short reviews and how far the sentence vectors moved."""
    comparison = report["methods"]
    lines = [
        f"| Method ({comparison['n']} test reviews) | Accuracy (95% interval) | F1 | p vs LoRA | Trainable "
        "| Shipped | Train s | Peak MB | Short reviews | Vectors kept (on / off) | lr |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in comparison["methods"].items():
        low, high = row["accuracy_interval"]
        p_value = "–" if row["p_value_vs_lora"] is None else f"{row['p_value_vs_lora']:.3f}"
        shift = row["embedding_shift"]
        off = "–" if shift["adapter_off"] is None else f"{shift['adapter_off']:.3f}"
        short = "–" if row["short_reviews_accuracy"] is None else f"{row['short_reviews_accuracy']:.3f}"
        lines.append(
            f"| {name} | {row['accuracy']:.3f} ({low:.3f}-{high:.3f}) | {row['f1']:.3f} | {p_value} "
            f"| {row['trainable_params']:,} | {readable_size(row['shipped_bytes'])} | {row['train_seconds']:.0f} "
            f"| {row['peak_memory_mb']:.0f} | {short} | {shift['adapter_on']:.3f} / {off} | {row['chosen_lr']:g} |"
        )
    return "\n".join(lines)


def readable_size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.0f} KB"


def calibration_line(report: dict) -> str | None:
    """Each rung's ECE on the test reviews before -> after its temperature, in one line."""
    calibration = report.get("calibration")
    if not calibration:
        return None
    parts = [
        f"{title.split(' (')[0].lower()} {figures['ece_before']:.3f} -> {figures['ece_after']:.3f} "
        f"(T {figures['temperature']:.2f})"
        for key, title in RUNGS
        if "temperature" in (figures := calibration.get(key, {}))
    ]
    return (
        "Calibration error (ECE, 10 bins) on the test reviews, before -> after temperature scaling: "
        f"{'; '.join(parts)}."
    )


def head_only_sentence(head: dict, tuned: dict) -> str:
    """What LoRA adds over training the classification head alone, on the same reviews (two metrics dicts)."""
    added = tuned["accuracy"] - head["accuracy"]
    return (
        f" A head trained alone on the frozen model reaches {head['accuracy']:.3f}, so the adapters add "
        f"{added:+.3f} accuracy over the head alone."
    )


def train_line(report: dict) -> str:
    train, params = report["train"], report["params"]
    val = "n/a" if train.get("val_loss") is None else f"{train['val_loss']:.4f}"
    return (
        f"trained {train['steps']} steps in {train['seconds']:.1f} s: train loss {train['train_loss']:.4f}, "
        f"validation loss {val}; {params['trainable']:,} trainable of {params['total']:,} parameters "
        f"({params['percent']:.3f}%)"
    )


def resources_line(report: dict) -> str | None:
    resources = report.get("resources")
    if not resources:
        return None
    lora, full = resources["lora"], resources["full"]
    return (
        f"LoRA vs full fine-tuning, measured on {resources['batch']['reviews']} reviews: "
        f"{lora['seconds_per_step']:.3f} s vs {full['seconds_per_step']:.3f} s per step (median"
        f"{', within noise' if resources.get('within_noise') else ''}), "
        f"{lora['memory_growth_mb']:.0f} MB vs {full['memory_growth_mb']:.0f} MB memory growth, "
        f"{lora['saved_mb'] * 1024:.0f} KB vs {full['saved_mb']:.1f} MB saved"
    )
