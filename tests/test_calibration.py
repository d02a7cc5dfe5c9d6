"""Temperature scaling, ECE and "not sure": the arithmetic on numbers worked out by hand, then the study's use of
it (fitted on validation reviews, reported per rung, kept with a saved adapter, applied to Classify's answers)."""

import numpy as np
import pytest

from lora_demo.calibration import (
    Calibration,
    calibration_scores,
    calibration_set,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scaled,
    sure_from,
)
from lora_demo.config import DataConfig, LoraSettings, TrainConfig
from lora_demo.data import load_splits
from lora_demo.inference import Predictions
from lora_demo.study import FALLBACK_CALIBRATION_REVIEWS, Models, Study

TINY = TrainConfig(
    epochs=2, learning_rate=0.03, batch_size=8, max_length=32, warmup_ratio=0, logging_steps=2, short_windows=0
)
LORA = LoraSettings(r=4, alpha=8, target_modules=("query", "value"), top_layers=0)


def overconfident(n: int, factor: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) of a model `factor` times too sure of itself, with labels drawn from the honest probabilities."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-honest))).astype(int)
    return 1 / (1 + np.exp(-factor * honest)), labels


def test_the_fitted_temperature_undoes_overconfidence_and_lowers_the_error():
    positive, labels = overconfident(20_000, factor=3.0)
    temperature = fit_temperature(positive, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(positive, labels)
    after = expected_calibration_error(scaled(positive, temperature), labels)
    assert before > 0.05 and after < 0.01
    honest, labels = overconfident(20_000, factor=1.0, seed=1)
    assert fit_temperature(honest, labels) == pytest.approx(1.0, rel=0.05)  # a calibrated model is left alone


def test_ece_and_the_reliability_bins_on_numbers_worked_by_hand():
    # four answers 90% sure, two of them right; two 60% sure, both right
    positive = [0.9, 0.9, 0.1, 0.1, 0.6, 0.4]
    labels = [1, 0, 0, 1, 1, 0]
    bins = reliability(positive, labels)
    assert [(b["low"], b["high"], b["n"]) for b in bins] == [(0.5, 0.6, 2), (0.8, 0.9, 4)]  # edges include the top
    assert [b["accuracy"] for b in bins] == [1.0, 0.5]
    assert bins[0]["confidence"] == pytest.approx(0.6) and bins[1]["confidence"] == pytest.approx(0.9)
    # |1.0 - 0.6| * 2/6 + |0.5 - 0.9| * 4/6
    assert expected_calibration_error(positive, labels) == pytest.approx(0.4 * 2 / 6 + 0.4 * 4 / 6)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])


def test_the_not_sure_threshold_is_the_largest_confident_set_right_nine_times_in_ten():
    # confidences 0.95 0.9 0.8 0.7 0.6; right, right, wrong, right, wrong: the top two are right, the top three
    # 67%: "sure" from 0.9
    positive = [0.95, 0.1, 0.8, 0.7, 0.4]
    labels = [1, 0, 0, 1, 1]
    assert sure_from(positive, labels) == pytest.approx(0.9)
    assert sure_from(positive, labels, target=0.75) == pytest.approx(0.7)  # the top four: 3 of 4
    assert sure_from(positive, labels, target=0.6) == 0.5  # all five are right 60% of the time: nothing unsure
    assert sure_from([0.9, 0.8], [1, 1]) == 0.5  # every answer right: nothing is "not sure"
    assert sure_from([0.9, 0.8], [0, 0]) == 1.0  # the surest answer is wrong: everything is
    # ties go together: two answers equally sure, one of them wrong, cannot be split by a threshold
    assert sure_from([0.9, 0.9, 0.6], [1, 0, 1], target=0.9) == 1.0


def test_applying_a_calibration_keeps_the_labels_and_marks_the_unsure_answers():
    calibration = Calibration(temperature=2.0, sure_from=0.7, n=100, ece_before=0.1, ece_after=0.02)
    raw = Predictions(labels=[1, 0, 1], confidence=[0.99, 0.6, 0.8], positive=[0.99, 0.4, 0.8])
    calibrated = calibration.apply(raw)
    assert calibrated.labels == raw.labels
    assert calibrated.positive == pytest.approx(list(scaled(raw.positive, 2.0)))
    assert calibrated.confidence[0] == pytest.approx(1 / (1 + np.sqrt(0.01 / 0.99)))  # logit halved
    assert calibrated.sure == [True, False, False]  # 0.909, 0.551, 0.667 against 0.7
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_calibration_scores_compare_before_and_after_on_the_same_answers():
    positive, labels = overconfident(2_000, factor=4.0, seed=3)
    answers = Predictions(labels=(positive >= 0.5).astype(int).tolist(), confidence=[], positive=positive.tolist())
    fitted = Calibration.fit(answers, labels)
    figures = calibration_scores(answers, labels, fitted)
    assert figures["n"] == 2_000 and figures["ece_after"] < figures["ece_before"]
    assert sum(b["n"] for b in figures["reliability_before"]) == sum(b["n"] for b in figures["reliability_after"])
    assert figures["accuracy"] == pytest.approx(np.mean(np.array(answers.labels) == labels))
    # the sure answers are the more accurate ones, and the two sides make up the whole
    share, sure, unsure = figures["sure_share"], figures["accuracy_sure"], figures["accuracy_not_sure"]
    assert 0 < share < 1 and sure > figures["accuracy"] > unsure
    assert share * sure + (1 - share) * unsure == pytest.approx(figures["accuracy"])


@pytest.fixture
def models(tiny_encoder_factory):
    return Models(loader=lambda name, seed=42: tiny_encoder_factory(0), check=lambda spec: None)


def test_the_study_fits_each_rung_on_validation_reviews_and_keeps_it_with_the_saved_adapter(
    models, make_reviews, tmp_path
):
    path = tmp_path / "toy.csv"
    make_reviews(200, seed=4).to_csv(path, index=False)
    study = Study(models=models)
    study.load_data(DataConfig(source=str(path), train_size=60, val_size=60, test_size=40, seed=2))
    report = study.run(LORA, TINY).to_dict()
    calibration = report["calibration"]
    assert set(calibration) == {"baseline", "tfidf", "head_only", "finetuned"}
    val, test = calibration_set(study.splits.val, 2), study.splits.test  # the validation reviews (and windows)
    assert set(study.splits.val["text"]) <= set(val["text"])
    for rung, figures in calibration.items():
        assert figures["validation"]["n"] == len(val) and figures["n"] == 40  # fitted on validation, scored on test
        assert {"temperature", "sure_from", "ece_before", "ece_after", "accuracy"} <= set(figures)
        assert figures["accuracy"] == pytest.approx(report[rung]["accuracy"])
    # the LoRA model's temperature is the one its validation answers give, not its test answers'
    answers = study._finetuned_answers(study.tuned, val).predictions
    assert calibration["finetuned"]["temperature"] == pytest.approx(Calibration.fit(answers, val["label"]).temperature)
    on_test = Calibration.fit(study.finetuned(test).predictions, test["label"]).temperature
    assert calibration["finetuned"]["temperature"] != pytest.approx(on_test)
    for name in ("dev", "test", "imdb_sentences"):  # every short set has each rung's accuracy and ECE
        for rung in ("baseline", "head_only", "finetuned"):
            assert 0 <= report["short_reviews"][name][rung]["ece"] <= 1

    # Classify's answers are the calibrated ones
    base, tuned = study.classify(["good good fine", "bad awful"])
    raw_base, raw_tuned = study._run("classify", study._ref(), study.tuned.weights, ["good good fine", "bad awful"])
    assert tuned.confidence == pytest.approx(study.calibration("finetuned").apply(raw_tuned).confidence)
    assert base.confidence == pytest.approx(study.calibration("baseline", 256).apply(raw_base).confidence)
    assert len(tuned.sure) == len(base.sure) == 2

    # Compare's lists of fixed and broken reviews show the confidences Classify would show
    from lora_demo.ui.compare import compare
    from lora_demo.ui.session import SessionData

    session = SessionData()
    session._study = study
    outputs = compare(session, progress=lambda *args, **kwargs: None)
    shown = [table["value"] for table in outputs if isinstance(table, dict) and "Fixed by LoRA" in str(table)]
    fixed = study.report().comparison["fixed"]
    calibrated = study.calibration("finetuned").apply(study.finetuned().predictions)
    assert fixed, "the toy task is learnable: LoRA fixes some of the baseline's mistakes"
    i = fixed[0]  # the LoRA column of the first row: label (confidence)
    assert shown[0][0][3] == f"{calibrated.label_names()[i]} ({calibrated.confidence[i]:.0%})"

    # saved with the adapter: a loaded adapter (whose validation reviews are not kept) answers as calibrated
    folder = study.save(tmp_path / "adapter")
    loaded = Study(models=models)
    loaded.load_adapter(folder)
    loaded.load_data(DataConfig(source=str(path), train_size=60, val_size=60, test_size=40, seed=2))
    assert loaded.calibration("finetuned") == study.calibration("finetuned")
    assert loaded.calibration("head_only") is None  # its training reviews are not kept
    assert loaded.classify(["good good fine", "bad awful"])[1].confidence == pytest.approx(tuned.confidence)


def test_too_few_validation_reviews_fit_no_temperature_and_the_report_says_so(models, make_reviews, tmp_path):
    path = tmp_path / "toy.csv"
    make_reviews(120, seed=5).to_csv(path, index=False)
    study = Study(models=models)
    study.load_data(DataConfig(source=str(path), train_size=48, val_size=16, test_size=32, seed=1))
    report = study.run(LORA, TINY).to_dict()
    assert "too few" in report["calibration"]["finetuned"]["reason"]
    assert study.calibration("finetuned") is None  # Classify shows its raw confidence, and says so
    # the untouched model is the same whatever the split: calibrated on the shipped sample's validation reviews
    sample = load_splits(DataConfig(source="sample", val_size=FALLBACK_CALIBRATION_REVIEWS)).val
    assert report["calibration"]["baseline"]["validation"]["n"] == len(calibration_set(sample, 42))


def test_compare_draws_and_tells_the_calibration_of_a_report():
    from lora_demo.plots import reliability_figure
    from lora_demo.report import calibration_line
    from lora_demo.ui.compare import calibration_markdown

    positive, labels = overconfident(1_000, factor=3.0, seed=7)
    answers = Predictions(labels=(positive >= 0.5).astype(int).tolist(), confidence=[], positive=positive.tolist())
    fitted = Calibration.fit(answers, labels)
    figures = {"temperature": fitted.temperature, "sure_from": fitted.sure_from}
    figures.update(calibration_scores(answers, labels, fitted))
    report = {"calibration": {"baseline": figures, "finetuned": figures, "head_only": {"reason": "none"}}}
    figure = reliability_figure(report["calibration"])
    names = [trace.name for trace in figure.data]
    assert names[0] == "calibrated" and len(names) == 5  # the diagonal, then before and after of both models
    assert f"LoRA after (ECE {figures['ece_after']:.3f})" in names
    assert list(figure.data[-1].y) == [point["accuracy"] for point in figures["reliability_after"]]
    line = calibration_line(report)
    assert f"lora fine-tuned {figures['ece_before']:.3f} -> {figures['ece_after']:.3f}" in line
    assert "head only" not in line  # a rung with no calibration is left out
    table = calibration_markdown(report)
    assert f"| LoRA fine-tuned | {fitted.temperature:.2f} |" in table and f"{fitted.sure_from:.0%} |" in table
    assert "Not calibrated" in calibration_markdown({"calibration": {"finetuned": {"reason": "too few"}}})
    assert reliability_figure({}).layout.annotations[0].text.startswith("No calibration")
