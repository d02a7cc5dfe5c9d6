"""Zero-shot baselines: label prototypes for encoders, generated words for seq2seq (unmapped stays unmapped)."""

import pytest
import torch

from lora_demo.baseline import LABEL_DESCRIPTIONS, SIMILARITY_SCALE, embed_texts, label_prototypes, zero_shot_predict
from lora_demo.inference import UNMAPPED, classify_texts, map_output_word
from lora_demo.metrics import evaluate_predictions


def test_encoder_zero_shot_labels_and_confidences(tiny_encoder, toy_reviews):
    texts = toy_reviews[2]["text"].tolist()[:12]
    predictions = zero_shot_predict(tiny_encoder, texts, max_length=32, batch_size=5)
    assert len(predictions.labels) == 12
    assert set(predictions.labels) <= {0, 1}
    assert all(0.5 <= c <= 1.0 for c in predictions.confidence)
    similarity = embed_texts(tiny_encoder, texts, max_length=32) @ label_prototypes(tiny_encoder).T
    expected = torch.softmax(similarity * SIMILARITY_SCALE, dim=-1)
    assert predictions.labels == expected.argmax(dim=-1).tolist()
    assert predictions.confidence == pytest.approx(expected.max(dim=-1).values.tolist(), abs=1e-5)


def test_label_prototypes_are_unit_vectors_per_label(tiny_encoder):
    prototypes = label_prototypes(tiny_encoder)
    assert prototypes.shape == (len(LABEL_DESCRIPTIONS), tiny_encoder.model.config.hidden_size)
    torch.testing.assert_close(prototypes.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(prototypes[0], prototypes[1])


def test_head_initialised_from_prototypes_agrees_with_zero_shot(tiny_encoder, toy_reviews):
    texts = toy_reviews[2]["text"].tolist()[:12]
    zero_shot = zero_shot_predict(tiny_encoder, texts, max_length=32)
    tiny_encoder.model.init_head(label_prototypes(tiny_encoder), SIMILARITY_SCALE)
    head = classify_texts(tiny_encoder, texts, max_length=32)
    assert head.labels == zero_shot.labels
    assert head.confidence == pytest.approx(zero_shot.confidence, abs=1e-4)


def test_seq2seq_zero_shot_keeps_unmapped_answers(tiny_t5, toy_reviews):
    frame = toy_reviews[2].head(8)
    predictions = zero_shot_predict(tiny_t5, frame["text"].tolist(), max_length=32)
    assert set(predictions.labels) <= {0, 1, UNMAPPED}
    assert len(predictions.outputs) == 8
    assert predictions.labels == [map_output_word(word) for word in predictions.outputs]
    # an untrained tiny T5 answers filler words: unmapped, never silently negative
    assert predictions.labels.count(UNMAPPED) == 8
    metrics = evaluate_predictions(frame["label"].tolist(), predictions.labels)
    assert metrics["prediction_counts"] == {"negative": 0, "positive": 0, "unmapped": 8}
    assert metrics["accuracy"] == 0.0


def test_seq2seq_zero_shot_maps_label_words(tiny_t5, toy_reviews):
    tokenizer = tiny_t5.tokenizer
    allowed = {tokenizer.convert_tokens_to_ids("negative"), tokenizer.eos_token_id}
    tiny_t5.model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i not in allowed]
    frame = toy_reviews[2].head(6)
    predictions = zero_shot_predict(tiny_t5, frame["text"].tolist(), max_length=32)
    assert all(word.startswith("negative") for word in predictions.outputs)
    assert predictions.labels == [0] * 6
    assert all(0.0 < c <= 1.0 for c in predictions.confidence)


def test_label_prototypes_are_computed_once_per_model(tiny_encoder_factory, monkeypatch):
    from lora_demo import baseline

    calls = []
    real = baseline.embed_texts
    monkeypatch.setattr(baseline, "embed_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    first, second = tiny_encoder_factory(0), tiny_encoder_factory(1)
    once = label_prototypes(first)
    assert len(calls) == len(LABEL_DESCRIPTIONS)
    again = label_prototypes(first)
    assert len(calls) == len(LABEL_DESCRIPTIONS)  # the Classify tab asks for them on every review
    assert torch.equal(once, again)
    again.zero_()  # callers get a copy: the cache cannot be changed from outside
    assert torch.equal(label_prototypes(first), once)
    other = label_prototypes(second)  # another model has prototypes of its own
    assert len(calls) == 2 * len(LABEL_DESCRIPTIONS) and not torch.equal(other, once)
