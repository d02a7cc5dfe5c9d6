"""Why this label: occlusion scores against hand-computed values, and on a real (tiny) model."""

import pytest

from lora_demo.explain import occlusion_spans, positive_probability, word_attributions
from lora_demo.inference import Predictions, classify_texts


def fake_predict(texts):
    """P(positive) = 0.5 + 0.3 per 'good' - 0.2 per 'bad', as labels with confidences."""
    probs = [min(1.0, max(0.0, 0.5 + 0.3 * t.split().count("good") - 0.2 * t.split().count("bad"))) for t in texts]
    labels = [1 if p >= 0.5 else 0 for p in probs]
    return Predictions(labels=labels, confidence=[p if y == 1 else 1 - p for p, y in zip(probs, labels)])


def test_positive_probability_of_each_label():
    predictions = Predictions(labels=[1, 0, -1], confidence=[0.9, 0.8, 0.7])
    assert positive_probability(predictions) == pytest.approx([0.9, 0.2, 0.5])


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
