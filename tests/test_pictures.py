"""The explaining figures: drawn to scale, one cell per adapted module, one dot per review, titles and hovers."""

from __future__ import annotations

import pytest

from lora_demo import pictures
from lora_demo.anatomy import lora_shapes
from lora_demo.config import LoraSettings, get_model_spec


def _extent(trace) -> tuple[float, float]:
    return max(trace.x) - min(trace.x), max(trace.y) - min(trace.y)


@pytest.mark.parametrize(("r", "targets"), [(8, None), (32, ("dense",))])
def test_lora_shapes_figure_draws_w_b_and_a_to_scale(r, targets):
    shapes = lora_shapes(get_model_spec("minilm"), LoraSettings(r=r, target_modules=targets))
    fig = pictures.lora_shapes_figure(shapes)
    w, b, a = fig.data
    assert _extent(w) == (shapes.d_in, shapes.d_out)
    assert _extent(b) == (r, shapes.d_out)
    assert _extent(a) == (shapes.d_in, r)
    assert fig.layout.yaxis.scaleanchor == "x"  # one row is as tall as one column is wide
    notes = " ".join(note.text for note in fig.layout.annotations)
    assert f"{shapes.frozen:,}" in notes and f"{shapes.d_out * r:,}" in notes and f"{r * shapes.d_in:,}" in notes
    assert "frozen" in w.name and "trained" in b.name and b.legendgroup == a.legendgroup
    assert "starts at zero" in b.text and "rank" in a.text
    assert fig.layout.xaxis.title.text == "width: input features (columns)"
    assert fig.layout.yaxis.title.text == "height: output features (rows)"


NORMS = [
    {"layer": 4, "module": "query", "relative_norm": 0.010},
    {"layer": 4, "module": "output.dense", "relative_norm": 0.002},
    {"layer": 5, "module": "query", "relative_norm": 0.030},
    {"layer": 5, "module": "value", "relative_norm": 0.051},
]


def test_update_norms_heatmap_has_one_cell_per_adapted_module():
    fig = pictures.update_norms_figure(NORMS)
    heatmap = fig.data[0]
    assert list(heatmap.x) == ["query", "FFN<br>out", "value"] and list(heatmap.y) == ["4", "5"]
    assert heatmap.z[1][2] == pytest.approx(5.1) and heatmap.z[0][1] == pytest.approx(0.2)
    assert heatmap.z[0][2] is None  # layer 4's value was not adapted
    assert "value projection" in heatmap.hovertext[1][2] and "passes on" in heatmap.hovertext[1][2]
    assert "not adapted" in heatmap.hovertext[0][2]
    assert heatmap.colorbar.title.text == "% of ‖W‖"
    assert fig.layout.xaxis.title.text.startswith("adapted module")
    assert fig.layout.yaxis.title.text == "layer (0 = nearest the input)"


def test_update_norms_heatmap_names_t5_attentions_apart():
    norms = [
        {"layer": 0, "module": m, "relative_norm": 0.01}
        for m in ("encoder.SelfAttention.q", "decoder.SelfAttention.q", "decoder.EncDecAttention.q")
    ]
    heatmap = pictures.update_norms_figure(norms).data[0]
    assert list(heatmap.x) == ["enc<br>self q", "dec<br>self q", "dec<br>cross q"]
    assert "the answer being written looks at the review" in heatmap.hovertext[0][2]


def test_update_norms_heatmap_without_a_run_is_an_empty_state():
    fig = pictures.update_norms_figure([])
    assert not fig.data and "Train a LoRA model" in fig.layout.annotations[0].text


def test_projection_figure_marks_wrong_answers_on_shared_axes():
    projection = {
        "baseline": [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
        "finetuned": [[-2.0, 0.0], [2.0, 0.0], [-2.0, 1.0], [2.0, 1.0]],
        "explained_variance": [0.6, 0.25],
    }
    labels, before, after = [0, 1, 0, 1], [1, 1, -1, 1], [0, 1, 0, 0]
    fig = pictures.projection_figure(projection, labels, before, after, texts=["a", "b", "c", "d"])
    by_panel = {}
    for trace in fig.data:
        by_panel.setdefault(trace.xaxis, {})[trace.name] = list(zip(trace.x, trace.y))
    assert by_panel["x"]["negative review, answered wrong"] == [(0.0, 0.0), (0.0, 1.0)]
    assert by_panel["x"]["positive review, answered right"] == [(1.0, 0.0), (1.0, 1.0)]
    assert by_panel["x2"]["negative review, answered right"] == [(-2.0, 0.0), (-2.0, 1.0)]
    assert by_panel["x2"]["positive review, answered wrong"] == [(2.0, 1.0)]
    assert sum(len(points) for points in by_panel["x2"].values()) == 4
    assert [t.name for t in fig.data if t.showlegend] == [t.name for t in fig.data if t.xaxis == "x"]
    assert fig.layout.xaxis2.matches == "x" and fig.layout.yaxis2.matches == "y"  # shared axes
    assert fig.layout.xaxis.title.text == "axis 1 (no unit, 60% of variance)"
    assert fig.layout.yaxis.title.text == "axis 2 (no unit, 25% of variance)"
    wrong = next(t for t in fig.data if t.xaxis == "x" and t.name == "negative review, answered wrong")
    assert wrong.hovertext[1].startswith("review 2: truly negative, the model said neither word")


def test_projection_caption_reads_the_points():
    projection = {"baseline": [[0, 0], [2, 0], [0, 0], [2, 0]], "finetuned": [[-1, 0], [1, 0], [3, 0], [5, 0]]}
    caption = pictures.projection_caption(projection, [0, 0, 1, 1])
    assert "0.00 spreads apart before training and 4.00 after LoRA" in caption and "PCA" in caption
