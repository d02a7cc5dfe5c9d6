"""Figures that explain LoRA: one adapted matrix to scale, where training changed the model, how the reviews moved.

They draw what `lora_demo.anatomy` computes; each has titled axes, a legend or colour bar, and hovers that say
what the jargon means. Nothing here imports gradio.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .anatomy import LoraShapes, describe_module, projection_reading
from .config import LABEL_NAMES
from .plots import LABEL_COLORS, MODEL_COLORS, _layout, empty_figure

FROZEN_COLOR = "#b0b7c3"
PICTURE_HEIGHT = 400
# what a module does, in plain words, for the hovers (keyed by the last part of its name)
MODULE_HELP = {
    "query": "turns each word's vector into the question it asks the other words",
    "key": "turns each word's vector into what it offers to be matched against those questions",
    "value": "turns each word's vector into the content it passes on when another word attends to it",
    "dense": "a plain linear layer (see its name for where it sits)",
    "o": "mixes the attention heads' results back into each word's vector",
    "wi": "the feed-forward network's first layer, applied to each word after attention",
    "wi_0": "the feed-forward network's gate layer, applied to each word after attention",
    "wi_1": "the feed-forward network's first layer, applied to each word after attention",
    "wo": "the feed-forward network's second layer, back to the word vector's size",
}
MODULE_HELP.update(q=MODULE_HELP["query"], k=MODULE_HELP["key"], v=MODULE_HELP["value"])
# two short lines each, so six columns fit side by side at 390 px
SHORT_NAMES = {
    "attention.output.dense": "attn<br>out",
    "intermediate.dense": "FFN<br>in",
    "output.dense": "FFN<br>out",
}
T5_SHORT = {"SelfAttention": "self", "EncDecAttention": "cross", "DenseReluDense": "FFN"}


def short_module(module: str) -> str:
    """A short axis label for a module name of `anatomy.module_key`: "value", "FFN<br>in", "dec<br>cross q"."""
    parts = module.split(".")
    if parts[0] in ("encoder", "decoder") and len(parts) == 3:
        return f"{parts[0][:3]}<br>{T5_SHORT.get(parts[1], parts[1])} {parts[2]}"
    return SHORT_NAMES.get(module, module)


def module_help(module: str) -> str:
    """Hover text for a module: its plain name and what it does."""
    leaf = module.split(".")[-1]
    where = ""
    if "EncDecAttention" in module:
        where = " Cross-attention: the answer being written looks at the review."
    elif "SelfAttention" in module:
        where = " Self-attention: the words of one text look at each other."
    return f"{describe_module(module)}: {MODULE_HELP.get(leaf, 'a linear layer')}.{where}"


def _rectangle(x0, y0, x1, y1, name, color, hover, group, show_legend) -> go.Scatter:
    return go.Scatter(
        x=[x0, x1, x1, x0, x0],
        y=[y0, y0, y1, y1, y0],
        fill="toself",
        fillcolor=color,
        line={"color": "#334155", "width": 1},
        mode="lines",
        name=name,
        legendgroup=group,
        showlegend=show_legend,
        hoveron="fills",
        text=hover,
        hoverinfo="text",
    )


def lora_shapes_figure(shapes: LoraShapes) -> go.Figure:
    """The frozen W and the trained B and A of one adapted matrix, drawn to scale, shapes and counts on them.

    One unit of either axis is one row or column of a matrix, so a rank-8 factor is as thin next to W as it is
    in the model.
    """
    d_out, d_in, r = shapes.d_out, shapes.d_in, shapes.r
    gap = round(0.5 * max(d_in, d_out))  # whole units, so every side is exactly its matrix's size
    b_x0 = d_in + gap
    a_x0 = b_x0 + r + gap
    where = f"{describe_module(shapes.module)} of layer {shapes.layer}"
    fig = go.Figure()
    fig.add_trace(
        _rectangle(
            0,
            0,
            d_in,
            d_out,
            "frozen: pretrained, never changed",
            FROZEN_COLOR,
            f"W, the pretrained weights of the {where}: {d_out} × {d_in} = {shapes.frozen:,} numbers, frozen",
            "frozen",
            True,
        )
    )
    fig.add_trace(
        _rectangle(
            b_x0,
            0,
            b_x0 + r,
            d_out,
            "trained by LoRA: B and A",
            MODEL_COLORS["lora"],
            f"B: {d_out} × {r} = {d_out * r:,} numbers, trained; starts at zero, so training starts from W",
            "trained",
            True,
        )
    )
    fig.add_trace(
        _rectangle(
            a_x0,
            d_out - r,
            a_x0 + d_in,
            d_out,
            "trained by LoRA: B and A",
            MODEL_COLORS["lora"],
            f"A: {r} × {d_in} = {r * d_in:,} numbers, trained; starts random. B·A has W's shape "
            f"but rank {r} at most: the rank r is how many directions the update can use",
            "trained",
            False,
        )
    )
    notes = (
        (d_in / 2, d_out / 2, f"<b>W</b> frozen<br>{d_out} × {d_in}<br>{shapes.frozen:,}", "middle"),
        ((d_in + b_x0) / 2, d_out / 2, f"+ {shapes.alpha / r:.3g} ×", "middle"),
        (b_x0 + r / 2, d_out, f"<b>B</b> {d_out} × {r}<br>{d_out * r:,}", "bottom"),
        (a_x0 + d_in / 2, d_out - r, f"<b>A</b> {r} × {d_in}<br>{r * d_in:,}", "top"),
    )
    for x, y, text, anchor in notes:
        fig.add_annotation(
            x=x,
            y=y,
            text=text,
            showarrow=False,
            yanchor=anchor,
            yshift={"bottom": 4, "top": -4}.get(anchor, 0),
            font={"size": 12},
        )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-gap / 4, a_x0 + d_in + gap / 4])
    fig.update_yaxes(
        showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x", range=[-gap / 5, d_out + gap / 2]
    )
    _layout(
        fig,
        "LoRA, to scale: W + (α / r)·B·A",
        "width: input features (columns)",
        "height: output features (rows)",
        340,
    )
    fig.update_layout(
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0.0},
        margin={"l": 40, "r": 10, "t": 50, "b": 90},
    )
    return fig


def update_norms_figure(norms: Sequence[dict]) -> go.Figure:
    """Layer × module heatmap of each adapter's update size, ‖(alpha / r)·B·A‖_F / ‖W‖_F, in percent.

    Args:
        norms: `anatomy.update_norms`'s rows (`layer`, `module`, `relative_norm`).
    """
    if not norms:
        return empty_figure("Train a LoRA model to see where it changed", "Where LoRA changed the model")
    modules = list(dict.fromkeys(row["module"] for row in norms))
    layers = sorted({row["layer"] for row in norms})
    cell = {(row["layer"], row["module"]): 100 * row["relative_norm"] for row in norms}
    z = [[cell.get((layer, m)) for m in modules] for layer in layers]
    hover = [
        [
            f"layer {layer}, {module_help(m)}<br>update size: {cell[(layer, m)]:.3g}% of the frozen weights' size"
            if (layer, m) in cell
            else f"layer {layer}: {describe_module(m)} not adapted"
            for m in modules
        ]
        for layer in layers
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[short_module(m) for m in modules],
            y=[str(layer) for layer in layers],
            colorscale="Blues",
            zmin=0,  # from zero, so a cell twice as dark is an update twice as large
            zmax=max(cell.values()),
            text=[[f"{v:.2g}" if v is not None else "" for v in row] for row in z],
            texttemplate="%{text}",
            hovertext=hover,
            hoverinfo="text",
            colorbar={"title": {"text": "% of ‖W‖", "side": "top"}, "thickness": 12},
            xgap=2,
            ygap=2,
        )
    )
    fig.update_xaxes(type="category", tickangle=0, tickfont={"size": 11})
    fig.update_yaxes(type="category")
    return _layout(
        fig,
        "Where LoRA changed the model",
        "adapted module",
        "layer (0 = nearest the input)",
        PICTURE_HEIGHT,
    ).update_layout(margin={"l": 60, "r": 10, "t": 60, "b": 70})


def _answer_trace(points, labels, predicted, texts, label: int, right: bool, panel: int) -> go.Scatter:
    picked = [i for i, (y, p) in enumerate(zip(labels, predicted)) if y == label and (p == y) == right]
    name = f"{LABEL_NAMES[label]} review, " + ("answered right" if right else "answered wrong")
    said = {0: "negative", 1: "positive"}
    hover = [
        f"review {i}: truly {LABEL_NAMES[label]}, the model said {said.get(predicted[i], 'neither word')}"
        + (f"<br>{texts[i][:90]}…" if texts else "")
        for i in picked
    ]
    return go.Scatter(
        x=[points[i][0] for i in picked],
        y=[points[i][1] for i in picked],
        mode="markers",
        name=name,
        legendgroup=name,
        showlegend=panel == 1,
        marker={
            "color": LABEL_COLORS[LABEL_NAMES[label]],
            "symbol": "circle" if right else "x-thin-open",
            "size": 6 if right else 9,
            "opacity": 0.55 if right else 1.0,
            "line": {"width": 2, "color": LABEL_COLORS[LABEL_NAMES[label]]},
        },
        hovertext=hover,
        hoverinfo="text",
    )


def projection_figure(
    projection: dict,
    labels: Sequence[int],
    baseline_predicted: Sequence[int],
    finetuned_predicted: Sequence[int],
    texts: Sequence[str] | None = None,
) -> go.Figure:
    """The test reviews on one 2-D map before (zero-shot) and after LoRA: coloured by true label, wrong answers
    crossed.

    Args:
        projection: `anatomy.project_pair`'s result; the two panels share its axes.
        labels: the true labels, in the projection's order.
        baseline_predicted, finetuned_predicted: each model's answers (-1: neither word), same order.
        texts: the reviews, for the hovers (optional).
    """
    labels = [int(y) for y in labels]
    variance = projection.get("explained_variance") or [None, None]
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=("Before: zero-shot", "After: LoRA"),
    )
    for panel, (key, predicted) in enumerate(
        (("baseline", baseline_predicted), ("finetuned", finetuned_predicted)), start=1
    ):
        for label in (0, 1):
            for right in (True, False):
                trace = _answer_trace(projection[key], labels, list(predicted), texts, label, right, panel)
                fig.add_trace(trace, row=1, col=panel)

    def axis_title(i: int) -> str:
        share = f", {100 * variance[i]:.0f}% of variance" if variance[i] is not None else ""
        return f"axis {i + 1} (no unit{share})"

    _layout(fig, "How the test reviews moved", "", "", 440)
    fig.update_annotations(font={"size": 14})  # the panel titles: both fit side by side at 390 px
    fig.update_xaxes(nticks=5)
    fig.update_xaxes(matches="x")  # both panels on the one map's axes (shared_xaxes only links a column)
    # one title per axis, under the left panel: the right panel shares it, and two would collide at 390 px
    fig.update_xaxes(title={"text": axis_title(0), "font": {"size": 12}}, row=1, col=1)
    fig.update_yaxes(title={"text": axis_title(1), "font": {"size": 12}}, row=1, col=1)
    fig.update_layout(
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0.0},
        margin={"l": 60, "r": 10, "t": 70, "b": 120},
    )
    return fig


def projection_caption(projection: dict, labels: Sequence[int]) -> str:
    """The map's reading and what PCA is, for the text next to the figure."""
    return (
        "Each dot is one test review as the model represents it (the vector its answer is computed from), "
        "flattened from hundreds of numbers to two by a PCA (principal component analysis) fitted once on both "
        "models' vectors: its axes are the directions in which the vectors differ most, so both panels share "
        f"them and a review's two dots can be compared. {projection_reading(projection, labels)}"
    )
