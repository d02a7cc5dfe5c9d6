"""Inference: two-word scoring for seq2seq, mapped words, length-sorted batches, predictions in input order."""

import pytest
import torch
from conftest import first_token_labels, reference_label_log_probs, sample_reviews

from lora_demo.config import UserError
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
    assert batched.positive == pytest.approx([p.positive[0] for p in single], abs=1e-4)
    assert set(batched.labels) <= {0, 1}
    assert all(0.5 <= c <= 1.0 for c in batched.confidence)
    if bundle.spec.kind == "seq2seq":
        assert batched.outputs == [p.outputs[0] for p in single]
        assert batched.labels == [map_output_word(w) for w in batched.outputs]


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


def test_unigram_vocabulary_splits_the_label_words(unigram_t5_factory):
    tokenizer = unigram_t5_factory().tokenizer
    pieces = {word: tokenizer.tokenize(word) for word in ("positive", "negative")}
    assert max(len(p) for p in pieces.values()) >= 2, pieces  # as in T5's vocabulary: several pieces per word
    assert len(tokenizer) == 400 and tokenizer("positive")["input_ids"][-1] == tokenizer.eos_token_id


def test_seq2seq_labels_by_the_whole_label_sequences(unigram_t5_factory):
    """The label is the argmax of both label words' sequence log-probabilities, computed here apart; the two
    words' probabilities (a softmax over those two) sum to 1, and `positive` is the positive word's."""
    bundle = unigram_t5_factory(0)
    texts = sample_reviews(12)["text"].tolist()
    predictions = classify_texts(bundle, texts, max_length=64, batch_size=5)
    reference = reference_label_log_probs(bundle, texts, max_length=64)
    probs = torch.softmax(reference, dim=-1)
    assert predictions.labels == reference.argmax(dim=-1).tolist()
    assert predictions.positive == pytest.approx(probs[:, 1].tolist(), abs=1e-5)
    for label, confidence, row in zip(predictions.labels, predictions.confidence, probs, strict=True):
        assert confidence + float(row[1 - label]) == pytest.approx(1.0, abs=1e-5)  # P(chosen) + P(other)
    assert predictions.outputs == [("negative", "positive")[k] for k in predictions.labels]
    # this model's first tokens say otherwise for some reviews, so a first-token rule would fail this test
    assert first_token_labels(bundle, texts, max_length=64) != predictions.labels


@pytest.mark.needs_minilm
def test_full_size_t5_scores_both_label_words():
    """T5-small at full size (random weights, the stand-in tokenizer): the same rule, on a handful of reviews."""
    from lora_demo.preset_timing import random_t5_small

    bundle = random_t5_small(seed=0)
    texts = sample_reviews(4)["text"].tolist()
    predictions = classify_texts(bundle, texts, max_length=64, batch_size=4)
    probs = torch.softmax(reference_label_log_probs(bundle, texts, max_length=64), dim=-1)
    assert predictions.labels == probs.argmax(dim=-1).tolist()
    assert predictions.positive == pytest.approx(probs[:, 1].tolist(), abs=1e-5)
    for label, confidence, row in zip(predictions.labels, predictions.confidence, probs, strict=True):
        assert confidence + float(row[1 - label]) == pytest.approx(1.0, abs=1e-5)


def word_tokenizer(words: list[str], end: bool = True, rewrite: tuple[str, str] | None = None):
    """A word-level tokenizer over `words` (with `</s>` after each text if `end`; `rewrite` replaces a string)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<pad>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if rewrite:
        backend.normalizer = normalizers.Replace(*rewrite)
    if end:
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def test_refuses_label_words_it_cannot_tell_apart(tiny_t5):
    """A vocabulary without either label word writes both as `<unk> </s>`: refused, naming the model and tokens."""
    from dataclasses import replace

    from lora_demo.models import label_targets

    bundle = replace(tiny_t5, tokenizer=word_tokenizer(["the", "movie", "was", "good"]))
    with pytest.raises(UserError, match=r"t5-small's tokenizer .* the same tokens: 'negative' as \['<unk>', '</s>'\]"):
        label_targets(bundle.spec, bundle.tokenizer)
    with pytest.raises(UserError, match="cannot tell the labels apart"):
        classify_texts(bundle, ["the movie was good"], max_length=32)
    assert label_targets(tiny_t5.spec, tiny_t5.tokenizer)  # the toy vocabulary has both words: accepted


def test_refuses_a_label_word_that_starts_the_other():
    """With no end token, a target that starts the other always scores at least as high: refused as well."""
    from lora_demo.config import get_model_spec
    from lora_demo.models import label_targets

    tokenizer = word_tokenizer(["positive", "very"], end=False, rewrite=("negative", "positive very"))
    with pytest.raises(UserError, match="one starts the other: 'negative' as \\['positive', 'very'\\]"):
        label_targets(get_model_spec("flan-t5-small"), tokenizer)
