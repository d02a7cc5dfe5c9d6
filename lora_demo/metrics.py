"""Accuracy, precision, recall and F1 (positive class), the per-class report and the confusion matrix."""

from __future__ import annotations

from collections import Counter

from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support

from .config import LABEL_NAMES
from .inference import UNMAPPED


def evaluate_predictions(y_true: list[int], y_pred: list[int]) -> dict:
    """Score predictions against the true labels.

    Unmapped predictions (-1: an answer that is neither label word, from `inference.map_output_word`; the models'
    own predictions always name a label) count as wrong and are reported
    in `prediction_counts["unmapped"]`; the confusion matrix has a third column for them when any occur.

    Returns:
        accuracy, precision, recall, f1 (positive class), per_class (precision / recall / f1 / support
        per label), confusion (rows: true negative/positive; columns: predicted), prediction_counts,
        collapsed (every review got the same label) and a plain-words `warning` when collapsed.
    """
    y_true, y_pred = [int(y) for y in y_true], [int(y) for y in y_pred]
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"need as many predictions as labels, got {len(y_pred)} and {len(y_true)}")
    # per-label scores of the positive class: average="binary" refuses the third class unmapped predictions make
    (precision,), (recall,), (f1,), _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[1], average=None, zero_division=0
    )
    report = classification_report(
        y_true, y_pred, labels=[0, 1], target_names=list(LABEL_NAMES), output_dict=True, zero_division=0
    )
    counts = Counter(y_pred)
    has_unmapped = counts[UNMAPPED] > 0
    columns = [0, 1, UNMAPPED] if has_unmapped else [0, 1]
    confusion = confusion_matrix(y_true, y_pred, labels=columns)[:2].tolist()
    prediction_counts = {name: counts[k] for k, name in enumerate(LABEL_NAMES)}
    prediction_counts["unmapped"] = counts[UNMAPPED]
    distinct = [k for k, n in counts.items() if n > 0]
    collapsed = len(distinct) == 1
    result = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "per_class": {
            name: {
                "precision": float(report[name]["precision"]),
                "recall": float(report[name]["recall"]),
                "f1": float(report[name]["f1-score"]),
                "support": int(report[name]["support"]),
            }
            for name in LABEL_NAMES
        },
        "confusion": confusion,
        "confusion_columns": [LABEL_NAMES[k] if k != UNMAPPED else "unmapped" for k in columns],
        "prediction_counts": prediction_counts,
        "collapsed": collapsed,
        "n": len(y_true),
    }
    if collapsed:
        only = "unmapped" if distinct[0] == UNMAPPED else LABEL_NAMES[distinct[0]]
        result["warning"] = (
            f"The model collapsed to one answer: it said {only!r} for all {len(y_true)} reviews, so its "
            f"accuracy only reflects the share of {only} reviews, and precision/recall for the other class are 0."
        )
    return result
