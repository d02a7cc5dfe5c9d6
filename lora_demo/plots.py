"""Plotly figures of the data, the metrics and the training run; the app shows them, tests read their data.

Every figure has a title, labelled axes and a fixed height, so it reads the same in a 1280x800 window and
in a test. Nothing here imports gradio.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import plotly.graph_objects as go

from .config import LABEL_NAMES

FIGURE_HEIGHT = 360
LABEL_COLORS = {"negative": "#d62728", "positive": "#2ca02c", "unmapped": "#7f7f7f"}
MODEL_COLORS = {"baseline": "#8c8c8c", "lora": "#1f77b4"}
METRIC_NAMES = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = FIGURE_HEIGHT) -> go.Figure:
    fig.update_layout(
        # the title on the top line and the legend on its own line under it: on a phone's width they would overlap
        title={"text": title, "x": 0.02, "xanchor": "left", "y": 0.985, "yanchor": "top", "yref": "container"},
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=height,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "xanchor": "right", "x": 1.0},
        font={"size": 13},
    )
    return fig


def empty_figure(message: str, title: str = "") -> go.Figure:
    """A blank figure that says why there is nothing to show yet."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, "", "")


def label_balance_figure(label_counts: Mapping[str, Mapping[str, int]]) -> go.Figure:
    """Reviews per label in each split, as grouped bars.

    Args:
        label_counts: `{split: {label name: count}}`, as `Splits.label_counts()` returns it.
    """
    splits = list(label_counts)
    fig = go.Figure()
    for label in LABEL_NAMES:
        counts = [label_counts[split].get(label, 0) for split in splits]
        fig.add_bar(
            name=label, x=splits, y=counts, text=counts, textposition="outside", marker_color=LABEL_COLORS[label]
        )
    fig.update_layout(barmode="group")
    tallest = max((n for counts in label_counts.values() for n in counts.values()), default=0)
    fig.update_yaxes(range=[0, max(1, tallest) * 1.15])  # room for the counts above the bars
    return _layout(fig, "Label balance per split", "split", "reviews")


def length_histogram_figure(lengths: Iterable[int], max_length: int) -> go.Figure:
    """Review lengths in tokens, with the truncation length marked.

    Args:
        lengths: full token count of each review.
        max_length: tokens kept per review; longer reviews keep their head and tail.
    """
    lengths = list(lengths)
    if not lengths:
        return empty_figure("No reviews loaded", "Review length in tokens")
    longer = sum(1 for n in lengths if n > max_length)
    fig = go.Figure(go.Histogram(x=lengths, nbinsx=40, name="reviews", marker_color="#1f77b4"))
    fig.add_vline(x=max_length, line_dash="dash", line_color="#d62728", line_width=2)
    fig.add_annotation(
        x=max_length,
        y=1.0,
        yref="paper",
        xanchor="left",
        yanchor="top",
        showarrow=False,
        xshift=6,
        text=f"max_length {max_length}: {longer} of {len(lengths)} reviews<br>are longer (head + tail kept)",
        font={"color": "#d62728"},
        align="left",
        bgcolor="rgba(255,255,255,0.8)",
    )
    fig.update_layout(showlegend=False)
    return _layout(fig, "Review length in tokens", "tokens per review", "reviews")


def confusion_figure(metrics: Mapping, title: str = "Confusion matrix") -> go.Figure:
    """Heatmap of true against predicted labels, with the counts written in the cells.

    Args:
        metrics: the result of `evaluate_predictions`: `confusion` (rows: true labels) and `confusion_columns`
            (predicted labels, with `unmapped` when a seq2seq model answered neither word).
    """
    z = [list(row) for row in metrics["confusion"]]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(metrics["confusion_columns"]),
            y=list(LABEL_NAMES),
            colorscale="Blues",
            showscale=False,
            text=z,
            texttemplate="%{text}",
            textfont={"size": 18},
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="bottom")
    return _layout(fig, title, "predicted label", "true label")


def loss_figure(history: Iterable[Mapping], epochs: float | None = None) -> go.Figure:
    """Training loss per logging step, validation loss and accuracy per evaluation, against epochs.

    Args:
        history: training events, `{"type": "log", "epoch", "loss"}` and `{"type": "eval", "epoch", "val_loss",
            "val_accuracy"}`; other events are ignored. Accuracy is drawn on its own axis, on the right.
        epochs: the planned number of epochs; fixes the x-axis so a running chart shows how far training is.
    """
    history = list(history)
    train = [e for e in history if e.get("type") == "log" and e.get("loss") is not None]
    val = [e for e in history if e.get("type") == "eval" and e.get("val_loss") is not None]
    if not train and not val:
        return empty_figure(
            "No loss yet: press Start training and it is drawn here as training runs", "Loss during training"
        )
    fig = go.Figure()
    fig.add_scatter(
        name="train loss",
        x=[e["epoch"] for e in train],
        y=[e["loss"] for e in train],
        mode="lines+markers",
        line_color=MODEL_COLORS["lora"],
    )
    fig.add_scatter(
        name="validation loss",
        x=[e["epoch"] for e in val],
        y=[e["val_loss"] for e in val],
        mode="lines+markers",
        line={"color": "#ff7f0e", "dash": "dash"},
        marker_size=9,
    )
    scored = [e for e in val if e.get("val_accuracy") is not None]
    if scored:
        fig.add_scatter(
            name="validation accuracy (right axis)",
            x=[e["epoch"] for e in scored],
            y=[e["val_accuracy"] for e in scored],
            text=[f"{e['val_accuracy']:.3f}" for e in scored],
            mode="lines+markers+text",
            textposition="top center",
            yaxis="y2",
            line={"color": "#2ca02c", "dash": "dot"},
            marker={"size": 9, "symbol": "diamond"},
        )
        fig.update_layout(
            yaxis2={"title": "validation accuracy", "range": [0, 1.05], "overlaying": "y", "side": "right"}
        )
    fig.update_layout(yaxis={"rangemode": "tozero"})  # the loss axis; accuracy keeps its 0-1 range
    fig.update_xaxes(range=[0, epochs * 1.02] if epochs else None, rangemode="tozero")
    title = "Loss and validation accuracy during training" if scored else "Loss during training"
    return _layout(fig, title, "epoch", "loss")


def metrics_comparison_figure(baseline: Mapping, finetuned: Mapping) -> go.Figure:
    """Accuracy, precision, recall and F1 (positive class) of the baseline and the LoRA model, side by side."""
    names = [title for _, title in METRIC_NAMES]
    fig = go.Figure()
    for label, metrics, color in (
        ("baseline (zero-shot)", baseline, MODEL_COLORS["baseline"]),
        ("LoRA fine-tuned", finetuned, MODEL_COLORS["lora"]),
    ):
        values = [float(metrics[key]) for key, _ in METRIC_NAMES]
        fig.add_bar(
            name=label,
            x=names,
            y=values,
            text=[f"{v:.2f}" for v in values],
            textposition="outside",
            marker_color=color,
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.12])
    return _layout(
        fig, "Baseline vs LoRA on the same test reviews", "metric (precision / recall / F1: positive class)", "score"
    )


RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def runs_loss_figure(runs: list[Mapping]) -> go.Figure:
    """The train-loss curves of a session's runs on one chart, to compare settings.

    Args:
        runs: dicts with `name` and `history` (the training events, as `TrainResult.history`).
    """
    fig = go.Figure()
    for i, run in enumerate(runs):
        points = [event for event in run["history"] if event["type"] == "log"]
        fig.add_scatter(
            x=[event["epoch"] for event in points],
            y=[event["loss"] for event in points],
            mode="lines+markers",
            name=run["name"],
            line={"color": RUN_COLORS[i % len(RUN_COLORS)]},
            marker={"size": 5},
        )
    if not runs:
        return empty_figure("No training runs yet", "Train loss of each run")
    return _layout(fig, "Train loss of each run", "epoch", "train loss")


def trainable_by_rank_figure(rows: list[Mapping], chosen_r: int | None = None) -> go.Figure:
    """Trainable parameters against the LoRA rank r, for the chosen target modules (log-2 x axis)."""
    fig = go.Figure(
        go.Scatter(
            x=[row["r"] for row in rows],
            y=[row["trainable"] for row in rows],
            mode="lines+markers+text",
            text=[f"{row['percent']:.2f}%" for row in rows],
            textposition="top left",
            name="trainable parameters",
            line={"color": MODEL_COLORS["lora"]},
        )
    )
    if chosen_r is not None:
        fig.add_vline(x=chosen_r, line_dash="dash", line_color="#d62728")
    fig.update_xaxes(type="log", tickvals=[row["r"] for row in rows], ticktext=[str(row["r"]) for row in rows])
    fig.update_yaxes(range=[0, max((row["trainable"] for row in rows), default=1) * 1.15])  # room for the labels
    return _layout(fig, "Trainable parameters vs rank r (labels: % of the model)", "rank r", "trainable parameters")


def reliability_figure(calibration: Mapping) -> go.Figure:
    """The reliability diagram of the zero-shot and LoRA models on the test reviews: accuracy against confidence
    per bin, before (dotted, hollow) and after (solid) temperature scaling, with the diagonal a calibrated model
    follows. Marker size grows with the bin's share of the reviews.

    Args:
        calibration: a report's `calibration` (`Study.calibration_report`).
    """
    fig = go.Figure()
    fig.add_scatter(
        x=[0.5, 1.0], y=[0.5, 1.0], mode="lines", name="calibrated", line={"color": "#bbbbbb", "dash": "dash"}
    )
    drawn, lowest = False, 1.0
    for key, name, color in (
        ("baseline", "zero-shot", MODEL_COLORS["baseline"]),
        ("finetuned", "LoRA", MODEL_COLORS["lora"]),
    ):
        figures = calibration.get(key, {})
        if "temperature" not in figures:
            continue
        drawn = True
        for when, dash, fill in (("before", "dot", "circle-open"), ("after", "solid", "circle")):
            points = figures[f"reliability_{when}"]
            total = sum(point["n"] for point in points)
            lowest = min([lowest, *(point["accuracy"] for point in points)])
            label = f"{name} {when} (ECE {figures[f'ece_{when}']:.3f})"
            fig.add_scatter(
                x=[point["confidence"] for point in points],
                y=[point["accuracy"] for point in points],
                mode="lines+markers",
                name=label,
                line={"color": color, "dash": dash},
                marker={"symbol": fill, "size": [6 + 18 * (point["n"] / total) ** 0.5 for point in points]},
                customdata=[[point["n"], point["low"], point["high"]] for point in points],
                hovertemplate="%{customdata[0]} reviews %{customdata[1]:.1f}-%{customdata[2]:.1f} sure: "
                "%{x:.2f} confidence, %{y:.2f} right<extra>" + label + "</extra>",
            )
    if not drawn:
        return empty_figure("No calibration: no validation reviews the models never trained on", "Reliability")
    fig.update_xaxes(range=[0.48, 1.01])
    fig.update_yaxes(range=[max(0.0, min(0.45, lowest - 0.05)), 1.02])
    fig.update_layout(legend={"font": {"size": 11}})
    return _layout(
        fig,
        "Reliability on the test reviews: is a 90%-sure answer right 90% of the time?",
        "confidence of the answer (bin mean)",
        "share of answers right",
        height=FIGURE_HEIGHT + 60,
    )


def methods_pareto_figure(comparison: Mapping) -> go.Figure:
    """Each training method's test accuracy (with its 95% interval) against its trainable parameters on a log
    axis, the point's area growing with its training time; the Pareto frontier joined by a line.

    Args:
        comparison: the report's `methods` (`methods.compare_runs`).
    """
    rows = comparison["methods"]
    longest = max(row["train_seconds"] for row in rows.values()) or 1.0
    frontier = comparison["frontier"]
    fig = go.Figure()
    fig.add_scatter(
        name="frontier",
        x=[rows[name]["trainable_params"] for name in frontier],
        y=[rows[name]["accuracy"] for name in frontier],
        mode="lines",
        line={"color": "#9ecae1", "dash": "dot", "width": 2},
        hoverinfo="skip",
    )
    for name, row in rows.items():
        low, high = row["accuracy_interval"]
        fig.add_scatter(
            name=name,
            x=[row["trainable_params"]],
            y=[row["accuracy"]],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [high - row["accuracy"]],
                "arrayminus": [row["accuracy"] - low],
                "thickness": 1.2,
            },  # fmt: skip
            mode="markers+text",
            text=[name],
            textposition="top right",
            marker={
                "size": 12 + 28 * (row["train_seconds"] / longest) ** 0.5,
                "color": MODEL_COLORS["lora"] if name == "lora" else "#ff7f0e" if name in frontier else "#8c8c8c",
                "line": {"width": 1, "color": "white"},
            },
            hovertemplate=(
                f"{name}: accuracy %{{y:.3f}} ({low:.3f}-{high:.3f})<br>%{{x:,}} trainable parameters<br>"
                f"trained in {row['train_seconds']:.0f} s<extra></extra>"
            ),
            showlegend=False,
        )
    fig.update_xaxes(type="log")
    return _layout(
        fig,
        f"Accuracy against trainable parameters ({comparison['n']} test reviews; bigger = longer training)",
        "trainable parameters (log scale)",
        "test accuracy",
        height=420,
    )
