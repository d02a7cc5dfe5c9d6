"""Inference: mapping generated words, length-sorted batches and predictions returned in input order."""

import pytest
import torch

from lora_demo.inference import (
    Predictions,
    classify_texts,
    fast_bf16,
    length_sorted_batches,
    map_output_word,
    run_batches,
)
from lora_demo.models import encode_head_tail

TEXTS = [
    "the movie was good",
    "bad",
    "a very long story with a good cast and a short ending of the film",
    "the plot was bad and the music was old",
    "good",
    "it was a film",
    "the director and the camera and the light were quite new",
]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("positive", 1),
        ("Positive", 1),
        ("Negative.", 0),
        (" negative ", 0),
        ("positive positive", 1),
        ("maybe", -1),
        ("", -1),
        ("...", -1),
        ("neutral positive", -1),
        ("positively", -1),
    ],
)
def test_map_output_word(text, label):
    assert map_output_word(text) == label


def test_length_sorted_batches_cover_every_index_once():
    encoded = [[0] * n for n in (3, 9, 1, 7, 7, 2, 5)]
    batches = list(length_sorted_batches(encoded, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(7))
    lengths = [len(encoded[i]) for i in flat]
    assert lengths == sorted(lengths, reverse=True)


def test_length_sorted_batches_of_nothing():
    assert list(length_sorted_batches([], batch_size=4)) == []


def test_label_names_with_unmapped():
    predictions = Predictions(labels=[1, 0, -1], confidence=[0.9, 0.8, 0.4])
    assert predictions.label_names() == ["positive", "negative", "unmapped"]


@pytest.mark.parametrize("bundle_name", ["tiny_encoder", "tiny_t5"])
def test_classify_texts_returns_input_order(request, bundle_name):
    bundle = request.getfixturevalue(bundle_name)
    progress = []
    batched = classify_texts(bundle, TEXTS, max_length=32, batch_size=3, progress=lambda d, t: progress.append((d, t)))
    single = [classify_texts(bundle, [text], max_length=32) for text in TEXTS]
    assert batched.labels == [p.labels[0] for p in single]
    assert batched.confidence == pytest.approx([p.confidence[0] for p in single], abs=1e-4)
    assert progress == [(3, 7), (6, 7), (7, 7)]
    if bundle.spec.kind == "seq2seq":
        assert batched.outputs == [p.outputs[0] for p in single]
        assert batched.labels == [map_output_word(w) for w in batched.outputs]
        assert all(0.0 < c <= 1.0 for c in batched.confidence)
    else:
        assert set(batched.labels) <= {0, 1}
        assert all(0.5 <= c <= 1.0 for c in batched.confidence)


def test_run_batches_under_bf16_autocast(tiny_encoder):
    encoded = encode_head_tail(tiny_encoder.tokenizer, TEXTS, 32)

    def step(batch):
        logits = tiny_encoder.model(**batch).logits
        return [(row.dtype, row.float()) for row in logits]

    fp32 = run_batches(tiny_encoder, encoded, 3, step, bf16=False)
    bf16 = run_batches(tiny_encoder, encoded, 3, step, bf16=True)
    assert {dtype for dtype, _ in fp32} == {torch.float32}
    assert {dtype for dtype, _ in bf16} == {torch.bfloat16}
    torch.testing.assert_close(
        torch.stack([r for _, r in bf16]), torch.stack([r for _, r in fp32]), atol=0.05, rtol=0.05
    )
    assert isinstance(fast_bf16.__wrapped__(), bool)  # the real hardware check, not the tests' stand-in
