"""The pictures' handlers without a browser: the Train tab's picture; the Compare tab's sentence, heatmap, map."""

from __future__ import annotations

import re

from lora_demo.ui.pictures import compare_pictures, lora_picture
from lora_demo.ui.train import parameter_count


def _numbers(text: str, pattern: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return match.groups()


def test_lora_picture_counts_equal_the_parameter_line():
    controls = ("minilm", 4, 16, 0.0, ["value", "dense"], 2)
    figure, text = lora_picture(*controls)
    line = parameter_count(*controls)
    assert _numbers(text, r"([\d,]+) trained of ([\d,]+)") == _numbers(line, r"parameters:\*\* ([\d,]+) of ([\d,]+)")
    assert "r = 4" in text and "alpha 16 / r 4 = 4" in text and "Drawn: the value projection of layer 4" in text
    b = figure.data[1]
    assert max(b.x) - min(b.x) == 4


def test_lora_picture_waits_for_the_targets_of_a_new_model_and_reports_bad_settings():
    figure, text = lora_picture("t5-small", 8, 32, 0.0, ["query"], 0)  # the minilm names, not yet switched
    assert figure == text == {"__type__": "update"}  # gr.skip(): the picture stays until the targets match
    _, warning = lora_picture("t5-small", 8, 32, 0.0, ["q"], 2)
    assert warning.startswith("⚠️") and "encoder models only" in warning


REPORT = {
    "params": {"percent": 0.73},
    "train": {"seconds": 41.0},
    "data": {"sizes": {"train": 500}},
    "baseline": {"accuracy": 0.5, "n": 4},
    "finetuned": {"accuracy": 1.0, "n": 4},
    "comparison": {"accuracy_gain": 0.5},
    "update_norms": [{"layer": 5, "module": "value", "relative_norm": 0.03}],
    "projection": {"baseline": [[0, 0], [2, 0], [0, 0], [2, 0]], "finetuned": [[-1, 0], [1, 0], [3, 0], [5, 0]]},
}


def test_compare_pictures_fill_the_sentence_the_heatmap_and_the_map():
    sentence, norms_text, heatmap, map_text, review_map = compare_pictures(
        REPORT, [0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1], texts=["a", "b", "c", "d"]
    )
    assert sentence.startswith("**In one sentence:** LoRA trained 0.73% of the weights for 41 s on 500 reviews")
    assert "value projection of layer 5" in norms_text and list(map(list, heatmap.data[0].z)) == [[3.0]]
    assert "0.00 spreads apart before training and 4.00 after LoRA" in map_text
    assert sum(len(trace.x) for trace in review_map.data) == 8  # four reviews, two panels


def test_compare_pictures_of_a_report_without_them_say_so():
    report = {k: v for k, v in REPORT.items() if k not in ("update_norms", "projection")}
    _, norms_text, heatmap, map_text, review_map = compare_pictures(report, [0, 0, 1, 1], [0] * 4, [0] * 4)
    assert "no update sizes" in norms_text and not heatmap.data
    assert "no map" in map_text and not review_map.data
