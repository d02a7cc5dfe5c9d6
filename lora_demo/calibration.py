"""How much a model's confidence is worth: temperature scaling, expected calibration error, "not sure".

A softmax probability is not the chance that an answer is right: a model tuned to a low loss on a few hundred long
reviews is sure of itself on a two-sentence review unlike any of them. Temperature scaling (Guo et al., 2017,
"On Calibration of Modern Neural Networks") divides each answer's logit by one number T, fitted on validation
reviews by maximum likelihood: every label stays as it was, only how sure the model says it is changes (T > 1: less
sure). The expected calibration error (ECE) is the gap between confidence and accuracy over 10 equal-width bins of
the predicted label's confidence, weighted by each bin's share of the reviews: 0 for a model whose 80%-sure answers
are right 80% of the time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from .inference import Predictions

BINS = 10
# an answer is "sure" from the lowest calibrated confidence above which validation answers were right at least
# this often; below it the app says "not sure" beside the label
SURE_ACCURACY = 0.9
MIN_REVIEWS = 50  # fewer validation reviews than this fit no temperature worth showing
# sentence windows added per validation review to the calibration set (`calibration_set`), chosen on validation sets
# only (`scripts/choose_recipe.py --seeds 1,2,3`, README "Calibration"): with one window per review the default
# recipe's ECE on short validation reviews fell from 0.084 to 0.062 (mean of 3 seeds) and on IMDb validation
# moved from 0.053 to 0.053
WINDOWS_PER_REVIEW = 1.0
TEMPERATURE_RANGE = (0.05, 100.0)
_EPS = 1e-7


def calibration_set(val: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The reviews a temperature is fitted on: the validation reviews and `WINDOWS_PER_REVIEW` sentence windows of
    them, labelled as their review (`augment.add_sentence_windows`): the reviews people type are short."""
    from .augment import add_sentence_windows

    return add_sentence_windows(val, WINDOWS_PER_REVIEW, seed)


def logits(positive) -> np.ndarray:
    """log(p / (1 - p)) of each P(positive): the two-class logit that temperature scaling divides."""
    p = np.clip(np.asarray(positive, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def scaled(positive, temperature: float) -> np.ndarray:
    """P(positive) after dividing each logit by `temperature`."""
    return 1.0 / (1.0 + np.exp(-logits(positive) / temperature))


def fit_temperature(positive, labels) -> float:
    """The temperature that makes P(positive) most likely on labelled reviews (the negative log-likelihood's
    minimum over `TEMPERATURE_RANGE`, searched on a log scale)."""
    from scipy.optimize import minimize_scalar

    z = logits(positive)
    sign = 2 * np.asarray(labels, dtype=np.float64) - 1  # +1 positive, -1 negative

    def nll(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -sign * z / np.exp(log_t))))

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def _confidence_and_correct(positive, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(positive, dtype=np.float64)
    predicted = (p >= 0.5).astype(int)
    return np.maximum(p, 1 - p), predicted == np.asarray(labels, dtype=int)


def reliability(positive, labels, bins: int = BINS) -> list[dict]:
    """The reliability diagram's points: per non-empty bin of the predicted label's confidence, its range, `n`,
    mean `confidence` and `accuracy`."""
    confidence, correct = _confidence_and_correct(positive, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    points = []
    for k in range(bins):
        inside = which == k
        if inside.any():
            points.append(
                {
                    "low": round(float(edges[k]), 6),
                    "high": round(float(edges[k + 1]), 6),
                    "n": int(inside.sum()),
                    "confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return points


def expected_calibration_error(positive, labels, bins: int = BINS) -> float:
    """ECE: the bins' |accuracy - confidence|, weighted by their share of the reviews."""
    n = len(positive)
    if n == 0:
        raise ValueError("ECE needs at least one review")
    return float(
        sum(
            point["n"] / n * abs(point["accuracy"] - point["confidence"])
            for point in reliability(positive, labels, bins)
        )
    )


def sure_from(positive, labels, target: float = SURE_ACCURACY) -> float:
    """The lowest confidence c such that the answers at least c sure are right at least `target` of the time.

    0.5 when every answer is (nothing is "not sure"); above every confidence (1.0) when no set of the most
    confident answers reaches it (everything is).
    """
    confidence, correct = _confidence_and_correct(positive, labels)
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    accuracy_of_top = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # a threshold must take in every answer as confident as the last one it keeps (ties go together)
    last_of_tie = np.append(confidence[1:] != confidence[:-1], True)
    good = np.flatnonzero((accuracy_of_top >= target) & last_of_tie)
    if len(good) == 0:
        return 1.0
    if good[-1] == len(confidence) - 1:
        return 0.5
    return float(confidence[good[-1]])


@dataclass(frozen=True)
class Calibration:
    """One model's temperature and "not sure" threshold, fitted on validation reviews, with what they did there.

    Attributes:
        temperature: the logit divisor (1.0 leaves the model as it is).
        sure_from: calibrated confidences below this are "not sure" (`sure_from` of the validation reviews).
        n: the validation reviews it was fitted on.
        ece_before, ece_after: the ECE on those reviews before and after scaling.
    """

    temperature: float
    sure_from: float
    n: int
    ece_before: float
    ece_after: float

    @classmethod
    def fit(cls, predictions: Predictions, labels) -> Calibration:
        """Fit on a model's answers to labelled validation reviews (which it must not have trained on)."""
        labels = [int(y) for y in labels]
        temperature = fit_temperature(predictions.positive, labels)
        after = scaled(predictions.positive, temperature)
        return cls(
            temperature=temperature,
            sure_from=sure_from(after, labels),
            n=len(labels),
            ece_before=expected_calibration_error(predictions.positive, labels),
            ece_after=expected_calibration_error(after, labels),
        )

    def apply(self, predictions: Predictions) -> Predictions:
        """The same answers with calibrated P(positive) and confidence, and whether each is sure (labels never
        change)."""
        positive = scaled(predictions.positive, self.temperature)
        confidence = [float(p if label == 1 else 1 - p) for p, label in zip(positive, predictions.labels)]
        return replace(
            predictions,
            confidence=confidence,
            positive=positive.tolist(),
            sure=[self.sure(c) for c in confidence],
        )

    def sure(self, confidence: float) -> bool:
        """Whether a calibrated confidence is high enough to be said without "not sure"."""
        return confidence >= self.sure_from

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


def calibration_scores(predictions: Predictions, labels, calibration: Calibration) -> dict:
    """Accuracy and ECE on labelled reviews before and after `calibration`, with both reliability diagrams, and how
    the answers split at its "not sure" threshold: `sure_share` and the accuracy of the sure and the unsure ones
    (None for an empty side)."""
    labels = np.asarray([int(y) for y in labels])
    before = np.asarray(predictions.positive)
    after = scaled(before, calibration.temperature)
    correct = np.asarray(predictions.labels) == labels
    sure = np.maximum(after, 1 - after) >= calibration.sure_from
    return {
        "n": len(labels),
        "accuracy": float(correct.mean()),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "sure_share": float(sure.mean()),
        "accuracy_sure": float(correct[sure].mean()) if sure.any() else None,
        "accuracy_not_sure": float(correct[~sure].mean()) if (~sure).any() else None,
        "reliability_before": reliability(before, labels),
        "reliability_after": reliability(after, labels),
    }
