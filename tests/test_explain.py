"""Why this label: occlusion scores against hand-computed values, and on a real (tiny) model."""

import pytest
import torch
from conftest import reference_label_log_probs, sample_reviews

from lora_demo.explain import occlusion_spans, positive_probability, word_attributions
from lora_demo.inference import Predictions, classify_texts


def fake_predict(texts):
    """P(positive) = 0.5 + 0.3 per 'good' - 0.2 per 'bad', as labels with confidences."""
    probs = [min(1.0, max(0.0, 0.5 + 0.3 * t.split().count("good") - 0.2 * t.split().count("bad"))) for t in texts]
    labels = [1 if p >= 0.5 else 0 for p in probs]
    return Predictions(labels=labels, confidence=[max(p, 1 - p) for p in probs], positive=probs)


def test_positive_probability_is_the_models():
    predictions = Predictions(labels=[1, 0], confidence=[0.9, 0.8], positive=[0.9, 0.2])
    assert positive_probability(predictions) == [0.9, 0.2]
    with pytest.raises(ValueError, match="no P\\(positive\\)"):
        positive_probability(Predictions(labels=[1, 0], confidence=[0.9, 0.8]))


def test_each_word_scores_its_effect():
    scores = dict(word_attributions(fake_predict, "a good film with a bad end"))
    # with everything: 0.5 + 0.3 - 0.2 = 0.6; without 'good': 0.3; without 'bad': 0.8
    assert scores["good"] == pytest.approx(0.3)
    assert scores["bad"] == pytest.approx(-0.2)
    assert scores["film"] == pytest.approx(0.0)


def test_long_reviews_are_scored_in_runs_of_words():
    words = [f"w{i}" for i in range(100)]
    spans = occlusion_spans(" ".join(words), max_spans=48)
    assert len(spans) == 34 and spans[0] == "w0 w1 w2"  # runs of 3 words
    assert " ".join(spans).split() == words
    calls = []
    word_attributions(lambda texts: calls.append(len(texts)) or fake_predict(texts), " ".join(words), 48)
    assert calls == [35]  # one batch: the review and each review-without-a-span
    assert occlusion_spans("") == [] and word_attributions(fake_predict, "   ") == []


def test_on_a_tiny_encoder(tiny_encoder):
    text = "the movie was good"
    attributions = word_attributions(lambda texts: classify_texts(tiny_encoder, texts, max_length=32), text)
    assert [span for span, _ in attributions] == text.split()
    assert all(-1.0 <= score <= 1.0 for _, score in attributions)


def test_seq2seq_explanations_use_both_label_words(unigram_t5_factory):
    """For T5, P(positive) is the softmax over both label words' sequence log-probabilities."""
    bundle = unigram_t5_factory(0)
    texts = sample_reviews(6)["text"].tolist()
    reference = torch.softmax(reference_label_log_probs(bundle, texts, max_length=64), dim=-1)[:, 1]
    probability = positive_probability(classify_texts(bundle, texts, max_length=64))
    assert probability == pytest.approx(reference.tolist(), abs=1e-5)
    text = "a good film with a bad end"
    scores = word_attributions(lambda batch: classify_texts(bundle, batch, max_length=64), text)
    spans = [text, *(" ".join(w for j, w in enumerate(text.split()) if j != k) for k in range(7))]
    full, *rest = torch.softmax(reference_label_log_probs(bundle, spans, max_length=64), dim=-1)[:, 1].tolist()
    assert [score for _, score in scores] == pytest.approx([round(full - p, 4) for p in rest], abs=1e-4)
