"""Is the gain real: flips, McNemar's exact test and bootstrap intervals against hand-computed values."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lora_demo.significance import bootstrap_interval, compare_models, flips, mcnemar_exact, verdict

Y = [1, 1, 0, 0, 1, 0, 1, 0]
BEFORE = [1, 0, 1, 0, 0, 0, -1, 1]  # right on 0, 3, 5
AFTER = [1, 1, 0, 1, 1, 0, 1, 0]  # right on 0, 1, 2, 4, 5, 6, 7


def test_flips_are_the_discordant_reviews():
    assert flips(Y, BEFORE, AFTER) == {"fixed": [1, 2, 4, 6, 7], "broken": [3]}
    assert flips(Y, AFTER, BEFORE) == {"fixed": [3], "broken": [1, 2, 4, 6, 7]}
    assert flips(Y, Y, Y) == {"fixed": [], "broken": []}


def test_mcnemar_exact_by_hand():
    # 10 fixed, 2 broken: two-sided binomial with n = 12, p = 1/2: 2 * (1 + 12 + 66) / 2**12
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)
    assert mcnemar_exact(5, 1) == pytest.approx(2 * (1 + 6) / 64)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0  # no review changed: no evidence either way


def test_bootstrap_interval_brackets_the_value_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    predicted = np.where(rng.random(400) < 0.8, y, 1 - y)
    accuracy = float((predicted == y).mean())
    low, high = bootstrap_interval(y, predicted, "accuracy", seed=1)
    assert low < accuracy < high and 0.05 < high - low < 0.1  # about ±1.96 * sqrt(0.16 / 400) = ±0.04
    assert bootstrap_interval(y, predicted, "accuracy", seed=1) == [low, high]
    f1 = f1_score(y, predicted)
    f1_low, f1_high = bootstrap_interval(y, predicted, "f1", seed=1)
    assert f1_low < f1 < f1_high


def test_bootstrap_interval_of_a_constant_is_a_point():
    assert bootstrap_interval([1, 0, 1, 0], [1, 0, 1, 0], "accuracy") == [1.0, 1.0]
    assert bootstrap_interval([1, 1, 1], [0, 0, 0], "f1") == [0.0, 0.0]


def test_compare_models_report_and_verdict():
    result = compare_models(Y, BEFORE, AFTER)
    assert (result["n"], result["n_fixed"], result["n_broken"]) == (8, 5, 1)
    assert result["accuracy_gain"] == pytest.approx(7 / 8 - 3 / 8)
    assert result["p_value"] == pytest.approx(2 * (1 + 6) / 64)
    assert set(result["intervals"]) == {"accuracy", "f1"}
    assert result["verdict"] == (
        "With 8 test reviews, the accuracy gain of 0.500 is not distinguishable from chance "
        "(McNemar's exact test, p = 0.219): LoRA fixed 5 reviews the baseline got wrong and broke 1 it got right."
    )


def test_verdict_words():
    assert "gain of 0.180 is distinguishable" in verdict(100, 0.18, 20, 2, 1e-4)
    assert "loss of 0.020 is not distinguishable" in verdict(100, -0.02, 3, 5, 0.73)
