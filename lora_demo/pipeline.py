"""The study end to end, as the CLI and the app run it: baseline, training, evaluation, report."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .baseline import zero_shot_predict
from .config import LoraSettings, TrainConfig
from .data import Splits
from .inference import Predictions, classify_texts, serving_copy
from .lora import save_adapter
from .metrics import evaluate_predictions
from .models import ModelBundle, load_bundle
from .significance import compare_models
from .train import Event, TrainResult, is_main_process, train_lora


def evaluate_model(
    bundle: ModelBundle,
    frame: pd.DataFrame,
    zero_shot: bool,
    max_length: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, Predictions]:
    """Predict the reviews of `frame` and score them.

    Args:
        bundle: the model to evaluate.
        frame: reviews with `text` and `label`.
        zero_shot: use the untrained model's zero-shot method instead of its classifier / LoRA weights.
        max_length: tokens kept per review.
        progress: called with (done, total).
    """
    predict = zero_shot_predict if zero_shot else classify_texts
    predictions = predict(bundle, frame["text"].tolist(), max_length=max_length, progress=progress)
    return evaluate_predictions(frame["label"].tolist(), predictions.labels), predictions


def lora_summary(settings: LoraSettings, bundle: ModelBundle) -> dict:
    return {
        "r": settings.r,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "target_modules": list(settings.targets_for(bundle.spec)),
        "layers": settings.layers_for(bundle.spec) or "all",
    }


def run_study(
    model_name: str,
    splits: Splits,
    lora: LoraSettings,
    config: TrainConfig,
    output_dir: str | Path | None = None,
    on_event: Callable[[Event], None] | None = None,
    stop_event: threading.Event | None = None,
) -> dict:
    """Baseline on the test set, LoRA training, the tuned model on the same test set; the report.

    Returns:
        The report: model, model_kind, data, lora, params, train, baseline, finetuned, comparison (flips,
        McNemar's test, bootstrap intervals; see `significance.compare_models`) and adapter.
    """
    bundle = load_bundle(model_name, seed=config.seed)
    lora.targets_for(bundle.spec)
    baseline, before = evaluate_model(serving_copy(bundle), splits.test, zero_shot=True, max_length=config.max_length)
    tuned, result = train_lora(bundle, splits.train, splits.val, lora, config, on_event, stop_event)
    finetuned, after = evaluate_model(serving_copy(tuned), splits.test, zero_shot=False, max_length=config.max_length)
    report = build_report(tuned, splits, lora, config, result, baseline, finetuned)
    report["comparison"] = compare_models(splits.test["label"], before.labels, after.labels, seed=config.seed)
    if output_dir and is_main_process():
        report["adapter"] = str(save_adapter(tuned, output_dir, adapter_metadata(lora, config, tuned)))
    return report


def adapter_metadata(lora: LoraSettings, config: TrainConfig, bundle: ModelBundle) -> dict:
    return {"kind": bundle.spec.kind, "lora": lora_summary(lora, bundle), "train_config": asdict(config)}


def build_report(bundle, splits, lora, config, result: TrainResult, baseline: dict, finetuned: dict) -> dict:
    return {
        "model": bundle.spec.name,
        "model_kind": bundle.spec.kind,
        "data": splits.summary(),
        "lora": lora_summary(lora, bundle),
        "train_config": asdict(config),
        "params": result.params,
        "train": {key: value for key, value in result.as_dict().items() if key != "params"},
        "baseline": baseline,
        "finetuned": finetuned,
    }


def comparison_table(report: dict) -> str:
    """The study's table: one row per model, accuracy / precision / recall / F1."""
    rows = [("Baseline (zero-shot)", report["baseline"]), ("LoRA fine-tuned", report["finetuned"])]
    lines = [
        f"| Model ({report['model']}, {report['baseline']['n']} test reviews) | Accuracy | Precision | Recall "
        f"| F1 | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        counts = m["prediction_counts"]
        note = (
            "collapsed: " + m["warning"].split(":")[1].split(",")[0].strip()
            if m["collapsed"]
            else (
                f"{counts['negative']} negative / {counts['positive']} positive predicted"
                + (f" / {counts['unmapped']} unmapped" if counts["unmapped"] else "")
            )
        )
        lines.append(
            f"| {name} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {note} |"
        )
    return "\n".join(lines)
