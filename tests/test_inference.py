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
    serving_copy,
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


def logits_of(bundle, texts=TEXTS) -> torch.Tensor:
    encoded = encode_head_tail(bundle.tokenizer, texts, 32)
    return torch.stack(run_batches(bundle, encoded, 8, lambda batch: bundle.model(**batch).logits.float()))


@pytest.mark.parametrize("factory", ["tiny_encoder_factory", "tiny_t5_factory"])
def test_serving_copy_merges_lora_and_leaves_the_adapter_alone(factory, request):
    from peft import PeftModel

    from lora_demo.config import LoraSettings
    from lora_demo.lora import apply_lora

    bundle = request.getfixturevalue(factory)(0)
    tuned = apply_lora(bundle, LoraSettings(r=4, top_layers=0))
    with torch.no_grad():  # a trained-looking adapter: B is zero at the start, which would hide a lost merge
        for name, param in tuned.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    served = serving_copy(tuned)
    assert not isinstance(served.model, PeftModel) and "lora_" not in str(served.model)
    assert isinstance(tuned.model, PeftModel) and any("lora_" in n for n, _ in tuned.model.named_parameters())
    if bundle.spec.kind == "encoder":
        torch.testing.assert_close(logits_of(served), logits_of(tuned), atol=1e-4, rtol=1e-4)
    else:
        assert (
            classify_texts(served, TEXTS, max_length=32).outputs == classify_texts(tuned, TEXTS, max_length=32).outputs
        )


def test_serving_copy_holds_bf16_weights_where_bf16_is_native(tiny_encoder, monkeypatch):
    from lora_demo import inference

    assert serving_copy(tiny_encoder) is tiny_encoder  # nothing to merge, no bf16: no copy
    monkeypatch.setattr(inference, "fast_bf16", lambda: True)
    served = serving_copy(tiny_encoder)
    assert {p.dtype for p in served.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny_encoder.model.parameters()} == {torch.float32}  # the original is untouched
    fp32, bf16 = classify_texts(tiny_encoder, TEXTS, max_length=32), classify_texts(served, TEXTS, max_length=32)
    assert bf16.confidence == pytest.approx(fp32.confidence, abs=0.05)
