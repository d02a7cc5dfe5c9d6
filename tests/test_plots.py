"""The figures: titles, axis labels and the data they are drawn from."""

from __future__ import annotations

import pytest

from lora_demo import plots
from lora_demo.metrics import evaluate_predictions


def _titles(fig) -> tuple[str, str, str]:
    layout = fig.layout
    return layout.title.text, layout.xaxis.title.text, layout.yaxis.title.text


def _assert_labelled(fig, x_title: str, y_title: str):
    title, x, y = _titles(fig)
    assert title, "every figure needs a title"
    assert (x, y) == (x_title, y_title)
    assert fig.layout.height == plots.FIGURE_HEIGHT


def test_label_balance_counts_each_split_and_label():
    counts = {
        "train": {"negative": 3, "positive": 5},
        "val": {"negative": 2, "positive": 1},
        "test": {"negative": 4, "positive": 4},
    }
    fig = plots.label_balance_figure(counts)
    _assert_labelled(fig, "split", "reviews")
    bars = {trace.name: dict(zip(trace.x, trace.y)) for trace in fig.data}
    assert bars == {"negative": {"train": 3, "val": 2, "test": 4}, "positive": {"train": 5, "val": 1, "test": 4}}


def test_length_histogram_marks_the_truncation_length():
    lengths = [10, 50, 300, 400, 120]
    fig = plots.length_histogram_figure(lengths, max_length=256)
    _assert_labelled(fig, "tokens per review", "reviews")
    assert list(fig.data[0].x) == lengths
    line = [shape for shape in fig.layout.shapes if shape.type == "line"]
    assert len(line) == 1 and line[0].x0 == line[0].x1 == 256
    note = fig.layout.annotations[0].text
    assert "max_length 256" in note and "2 of 5" in note


def test_length_histogram_without_reviews_is_an_empty_state():
    fig = plots.length_histogram_figure([], max_length=256)
    assert not fig.data
    assert "No reviews" in fig.layout.annotations[0].text


@pytest.mark.parametrize(
    ("y_pred", "columns"),
    [([0, 1, 1, 0, 1], ["negative", "positive"]), ([0, -1, 1, 0, -1], ["negative", "positive", "unmapped"])],
)
def test_confusion_heatmap_shows_the_matrix(y_pred, columns):
    metrics = evaluate_predictions([0, 0, 1, 1, 1], y_pred)
    fig = plots.confusion_figure(metrics, "Baseline")
    _assert_labelled(fig, "predicted label", "true label")
    heatmap = fig.data[0]
    assert [list(row) for row in heatmap.z] == metrics["confusion"]
    assert list(heatmap.x) == columns
    assert list(heatmap.y) == ["negative", "positive"]
    assert heatmap.texttemplate == "%{text}" and [list(row) for row in heatmap.text] == metrics["confusion"]
    assert fig.layout.title.text == "Baseline"


def test_loss_chart_plots_train_and_validation_loss_against_epochs():
    history = [
        {"type": "log", "step": 5, "epoch": 0.25, "loss": 0.7},
        {"type": "progress", "step": 6, "epoch": 0.3, "max_steps": 20},
        {"type": "eval", "step": 10, "epoch": 0.5, "val_loss": 0.6},
        {"type": "log", "step": 10, "epoch": 0.5, "loss": 0.5},
        {"type": "eval", "step": 20, "epoch": 1.0, "val_loss": 0.4},
    ]
    fig = plots.loss_figure(history)
    _assert_labelled(fig, "epoch", "loss")
    train, val = fig.data
    assert (train.name, list(train.x), list(train.y)) == ("train loss", [0.25, 0.5], [0.7, 0.5])
    assert (val.name, list(val.x), list(val.y)) == ("validation loss", [0.5, 1.0], [0.6, 0.4])


def test_loss_chart_draws_validation_accuracy_on_its_own_axis():
    history = [
        {"type": "log", "step": 5, "epoch": 0.5, "loss": 0.7},
        {"type": "eval", "step": 10, "epoch": 1.0, "val_loss": 0.6, "val_accuracy": 0.81},
        {"type": "eval", "step": 20, "epoch": 2.0, "val_loss": 0.4, "val_accuracy": 0.86},
    ]
    fig = plots.loss_figure(history, epochs=2)
    accuracy = fig.data[2]
    assert (list(accuracy.x), list(accuracy.y), accuracy.yaxis) == ([1.0, 2.0], [0.81, 0.86], "y2")
    assert fig.layout.yaxis2.title.text == "validation accuracy" and tuple(fig.layout.yaxis2.range) == (0, 1.05)
    assert "validation accuracy" in fig.layout.title.text


def test_loss_chart_before_any_loss_says_so():
    fig = plots.loss_figure([{"type": "progress", "step": 1, "epoch": 0.1, "max_steps": 10}])
    assert not fig.data
    assert "No loss" in fig.layout.annotations[0].text
    assert fig.layout.title.text


def test_metrics_comparison_groups_the_four_metrics():
    baseline = {"accuracy": 0.49, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    lora = {"accuracy": 0.67, "precision": 0.97, "recall": 0.36, "f1": 0.53}
    fig = plots.metrics_comparison_figure(baseline, lora)
    title, x_title, y_title = _titles(fig)
    assert title and x_title.startswith("metric") and y_title == "score"
    assert fig.layout.barmode == "group"
    before, after = fig.data
    assert list(before.x) == ["Accuracy", "Precision", "Recall", "F1"]
    assert list(before.y) == [0.49, 0.0, 0.0, 0.0] and list(after.y) == [0.67, 0.97, 0.36, 0.53]
    assert "baseline" in before.name and "LoRA" in after.name


def test_empty_figure_carries_the_message_and_title():
    fig = plots.empty_figure("Train first", "Loss")
    assert fig.layout.annotations[0].text == "Train first"
    assert fig.layout.title.text == "Loss"
    assert fig.layout.xaxis.visible is False


def test_runs_chart_overlays_each_runs_train_loss():
    history = [
        {"type": "log", "epoch": 0.5, "loss": 0.6},
        {"type": "eval", "epoch": 1.0, "val_loss": 0.5},
        {"type": "log", "epoch": 1.0, "loss": 0.4},
    ]
    runs = [{"name": "run 1: r 8, fast", "history": history}, {"name": "run 2: r 4, study", "history": history[:1]}]
    fig = plots.runs_loss_figure(runs)
    assert [trace.name for trace in fig.data] == ["run 1: r 8, fast", "run 2: r 4, study"]
    assert list(fig.data[0].x) == [0.5, 1.0] and list(fig.data[0].y) == [0.6, 0.4]  # train loss only
    assert fig.data[0].line.color != fig.data[1].line.color
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis.title.text == "train loss"
    assert plots.runs_loss_figure([]).layout.annotations[0].text == "No training runs yet"


def test_trainable_by_rank_chart_marks_the_chosen_rank():
    rows = [{"r": 4, "trainable": 100, "percent": 0.1}, {"r": 8, "trainable": 200, "percent": 0.2}]
    fig = plots.trainable_by_rank_figure(rows, chosen_r=8)
    assert list(fig.data[0].x) == [4, 8] and list(fig.data[0].y) == [100, 200]
    assert list(fig.data[0].text) == ["0.10%", "0.20%"]
    assert fig.layout.shapes[0].x0 == 8 and fig.layout.xaxis.type == "log"
    assert fig.layout.xaxis.title.text == "rank r" and fig.layout.yaxis.title.text == "trainable parameters"
