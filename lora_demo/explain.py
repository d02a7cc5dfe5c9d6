"""Why this label? Word-level attribution by occlusion.

Each word (or, in a long review, each run of words) is left out in turn, and the change in the model's
probability of *positive* is that word's score: above 0 it pushed toward positive, below 0 toward negative.
It needs no gradients, so it works the same for the zero-shot baseline, the LoRA model and seq2seq models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .inference import Predictions

MAX_SPANS = 48  # forward passes per explanation: longer reviews are scored in runs of words


def positive_probability(predictions: Predictions) -> list[float]:
    """P(positive) per text, as the model gives it (for seq2seq models, from both label words' scores).

    Raises:
        ValueError: when the predictions carry no P(positive).
    """
    if len(predictions.positive) != len(predictions.labels):
        raise ValueError("these predictions carry no P(positive) (`Predictions.positive`) to explain")
    return list(predictions.positive)


def occlusion_spans(text: str, max_spans: int = MAX_SPANS) -> list[str]:
    """The review split into at most `max_spans` runs of whole words."""
    words = text.split()
    size = max(1, math.ceil(len(words) / max_spans))
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def word_attributions(
    predict: Callable[[list[str]], Predictions], text: str, max_spans: int = MAX_SPANS
) -> list[tuple[str, float]]:
    """(span, score) for each run of words of `text`: P(positive) of the review minus that without the span.

    Args:
        predict: labels a list of texts, e.g. `lambda texts: classify_texts(bundle, texts)`.
        text: the review.
        max_spans: at most this many spans, so at most `max_spans + 1` texts to label.
    """
    spans = occlusion_spans(text, max_spans)
    if not spans:
        return []
    without = [" ".join(s for j, s in enumerate(spans) if j != k) for k in range(len(spans))]
    full, *rest = positive_probability(predict([text, *without]))
    return [(span, round(full - p, 4)) for span, p in zip(spans, rest)]
