"""Zero-shot baselines: label prototypes for encoders, both label words scored for seq2seq."""

import pytest
import torch
from conftest import reference_label_log_probs, sample_reviews

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


def test_seq2seq_zero_shot_scores_both_label_words(unigram_t5_factory):
    """Zero-shot T5 labels by the same rule as the trained model: the more probable whole label sequence."""
    bundle = unigram_t5_factory(0)
    frame = sample_reviews(8)
    predictions = zero_shot_predict(bundle, frame["text"].tolist(), max_length=64, batch_size=3)
    reference = reference_label_log_probs(bundle, frame["text"].tolist(), max_length=64)
    assert predictions.labels == reference.argmax(dim=-1).tolist()
    assert predictions.positive == pytest.approx(torch.softmax(reference, dim=-1)[:, 1].tolist(), abs=1e-5)
    assert predictions.outputs == [("negative", "positive")[k] for k in predictions.labels]
    metrics = evaluate_predictions(frame["label"].tolist(), predictions.labels)
    assert metrics["prediction_counts"]["unmapped"] == 0  # scoring always names one of the two words


def test_unmapped_answers_still_count_as_wrong():
    """Free text mapped to neither word (`map_output_word`) stays unmapped in the metrics, never negative."""
    labels = [map_output_word(word) for word in ("positive", "maybe", "negative.", "")]
    assert labels == [1, UNMAPPED, 0, UNMAPPED]
    metrics = evaluate_predictions([1, 0, 0, 1], labels)
    assert metrics["prediction_counts"] == {"negative": 1, "positive": 1, "unmapped": 2}
    assert metrics["accuracy"] == 0.5 and metrics["confusion_columns"] == ["negative", "positive", "unmapped"]


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
