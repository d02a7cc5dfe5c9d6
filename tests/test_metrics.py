"""Metrics against values worked out by hand, the collapse warning and unmapped predictions."""

import json

import pytest

from lora_demo.metrics import evaluate_predictions
from lora_demo.report import comparison_table

# 4 positive, 6 negative reviews: TP 3, FN 1, FP 2, TN 4
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
Y_PRED = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]


def test_scores_match_hand_computed_values():
    m = evaluate_predictions(Y_TRUE, Y_PRED)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert m["per_class"]["positive"] == pytest.approx({"precision": 0.6, "recall": 0.75, "f1": 2 / 3, "support": 4})
    neg_f1 = 2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)
    assert m["per_class"]["negative"] == pytest.approx({"precision": 0.8, "recall": 4 / 6, "f1": neg_f1, "support": 6})
    assert m["confusion"] == [[4, 2], [1, 3]]
    assert m["confusion_columns"] == ["negative", "positive"]
    assert m["prediction_counts"] == {"negative": 5, "positive": 5, "unmapped": 0}
    assert m["collapsed"] is False and "warning" not in m
    assert m["n"] == 10
    json.dumps(m)  # the report is written as JSON


def test_collapsed_to_negative_is_flagged():
    m = evaluate_predictions([0, 1, 0, 1, 1], [0, 0, 0, 0, 0])
    assert m["collapsed"] is True
    assert m["accuracy"] == pytest.approx(0.4)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["per_class"]["negative"]["recall"] == 1.0
    assert "'negative' for all 5 reviews" in m["warning"]
    assert m["confusion"] == [[2, 0], [3, 0]]


def test_collapsed_to_positive_is_flagged():
    m = evaluate_predictions([0, 1, 0, 1], [1, 1, 1, 1])
    assert m["collapsed"] is True
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == 1.0
    assert "'positive' for all 4 reviews" in m["warning"]


def test_unmapped_predictions_are_counted_and_never_correct():
    m = evaluate_predictions([1, 1, 0, 0], [1, -1, -1, 0])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["negative"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["prediction_counts"] == {"negative": 1, "positive": 1, "unmapped": 2}
    assert m["confusion_columns"] == ["negative", "positive", "unmapped"]
    assert m["confusion"] == [[1, 0, 1], [0, 1, 1]]
    assert m["collapsed"] is False


def test_all_unmapped_is_a_collapse_with_zero_accuracy():
    m = evaluate_predictions([1, 0, 1], [-1, -1, -1])
    assert m["accuracy"] == 0.0 and m["collapsed"] is True
    assert m["prediction_counts"] == {"negative": 0, "positive": 0, "unmapped": 3}
    assert m["confusion"] == [[0, 0, 1], [0, 0, 2]]
    assert "'unmapped' for all 3 reviews" in m["warning"]


def test_perfect_predictions():
    m = evaluate_predictions([0, 1, 1, 0], [0, 1, 1, 0])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["confusion"] == [[2, 0], [0, 2]]


@pytest.mark.parametrize(("y_true", "y_pred"), [([0, 1], [0]), ([], [])])
def test_lengths_must_match(y_true, y_pred):
    with pytest.raises(ValueError, match="need as many predictions as labels"):
        evaluate_predictions(y_true, y_pred)


def test_comparison_table_rows():
    report = {
        "model": "t5-small",
        "baseline": evaluate_predictions([0, 1, 0, 1], [0, 0, 0, 0]),
        "finetuned": evaluate_predictions([0, 1, 0, 1], [0, 1, -1, 1]),
    }
    lines = comparison_table(report).splitlines()
    assert lines[0].startswith("| Model (t5-small, 4 test reviews) | Accuracy |")
    assert (
        lines[2]
        == "| Baseline (zero-shot) | 0.500 | 0.000 | 0.000 | 0.000 | collapsed: it said 'negative' for all 4 reviews |"
    )
    assert lines[3] == (
        "| LoRA fine-tuned | 0.750 | 1.000 | 1.000 | 1.000 | 1 negative / 2 positive predicted / 1 unmapped |"
    )
