"""The ladder's rungs below LoRA: TF-IDF + logistic regression and the head trained alone."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_demo import ladder
from lora_demo.baseline import SIMILARITY_SCALE, label_prototypes, zero_shot_predict
from lora_demo.config import TrainConfig
from lora_demo.inference import classify_texts
from lora_demo.ladder import tfidf_predictions, train_head_only

CONFIG = TrainConfig(epochs=3, learning_rate=1e-2, batch_size=8, max_length=32, seed=3)


def accuracy(labels, frame) -> float:
    return sum(int(p == y) for p, y in zip(labels, frame["label"], strict=True)) / len(frame)


def test_tfidf_learns_the_toy_task_from_the_training_reviews_only(toy_reviews):
    train, _, test = toy_reviews
    predictions = tfidf_predictions(train, test["text"].tolist(), seed=1)
    assert accuracy(predictions.labels, test) >= 0.95  # one word decides the label
    assert all(0.5 <= c <= 1.0 for c in predictions.confidence)
    flipped = train.assign(label=1 - train["label"])
    assert accuracy(tfidf_predictions(flipped, test["text"].tolist(), seed=1).labels, test) <= 0.05


def test_head_only_trains_the_head_alone_from_the_prototypes(tiny_encoder, toy_reviews):
    train, val, test = toy_reviews
    encoder_before = {k: v.clone() for k, v in tiny_encoder.model.encoder.state_dict().items()}
    head_before = tiny_encoder.model.classifier.weight.detach().clone()
    events = []
    model, result = train_head_only(tiny_encoder, train, val, CONFIG, on_event=events.append)
    # the untouched bundle is untouched: LoRA can still adapt it afterwards
    assert torch.equal(tiny_encoder.model.classifier.weight, head_before)
    for name, value in tiny_encoder.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name
    assert not torch.equal(model.head["weight"], head_before)
    assert result.trainable == 2 * 32 + 2
    assert result.steps == 24  # 64 reviews, batches of 8, 3 epochs
    evals = [e for e in events if e.type == "eval"]
    assert [e.epoch for e in evals] == [1.0, 2.0, 3.0] and result.history == [e.to_dict() for e in events]
    assert result.val_accuracy == evals[-1].val_accuracy
    # the trained head on the frozen model predicts as the LoRA model's classifier would, and scores what the
    # history says
    predictions = model.predict(tiny_encoder, val["text"].tolist())
    with_head = copy.deepcopy(tiny_encoder)
    with_head.model.classifier.load_state_dict(model.head)
    assert predictions.labels == classify_texts(with_head, val["text"].tolist(), max_length=32).labels
    # (the head's product in NumPy, float64, against torch's float32: the same to a few millionths)
    expected = classify_texts(with_head, val["text"].tolist(), 32).confidence
    assert predictions.confidence == pytest.approx(expected, rel=1e-5)
    assert accuracy(predictions.labels, val) == pytest.approx(result.val_accuracy)
    assert "prototypes" in result.method and result.seconds > 0


def test_head_only_starts_as_the_zero_shot_classifier(tiny_encoder, toy_reviews):
    train, val, test = toy_reviews
    config = TrainConfig(epochs=0.1, learning_rate=1e-6, batch_size=8, max_length=32, warmup_ratio=0.0)
    model, _ = train_head_only(tiny_encoder, train, val, config)
    expected = label_prototypes(tiny_encoder) * SIMILARITY_SCALE
    assert torch.allclose(model.head["weight"], expected, atol=1e-3)
    texts = test["text"].tolist()
    assert model.predict(tiny_encoder, texts).labels == zero_shot_predict(tiny_encoder, texts, max_length=32).labels


def test_head_only_follows_the_learning_rate_schedule(tiny_encoder, toy_reviews, monkeypatch):
    train, val, _ = toy_reviews
    rates = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    train_head_only(tiny_encoder, train, val, TrainConfig(**{**vars(CONFIG), "warmup_ratio": 0.25}))
    assert len(rates) == 24
    peak = rates.index(max(rates))
    assert peak == 6 and max(rates) == pytest.approx(1e-2)  # 6 warm-up steps, then linear decay to 0
    assert rates[:peak] == sorted(rates[:peak]) and rates[peak:] == sorted(rates[peak:], reverse=True)


def test_head_only_trains_on_the_same_sentence_windows_as_lora(tiny_encoder, toy_reviews):
    train, val, _ = toy_reviews
    train = train.assign(text=train["text"] + " . it was")  # two sentences each
    _, result = train_head_only(tiny_encoder, train, val, TrainConfig(**{**vars(CONFIG), "short_windows": 0.5}))
    assert result.steps == 36  # 64 reviews + 32 windows, batches of 8, 3 epochs


def test_head_only_is_seeded(tiny_encoder_factory, toy_reviews):
    train, val, test = toy_reviews
    runs = [
        train_head_only(tiny_encoder_factory(0), train, val, TrainConfig(**{**vars(CONFIG), "seed": s}))
        for s in (1, 1, 2)
    ]
    weights = [model.head["weight"] for model, _ in runs]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_seq2seq_head_only_is_a_probe_on_the_frozen_encoder(tiny_t5, toy_reviews):
    train, val, test = toy_reviews
    before = {k: v.clone() for k, v in tiny_t5.model.state_dict().items()}
    model, result = train_head_only(tiny_t5, train, val, CONFIG)
    assert model.head is None and "logistic-regression probe" in result.method
    predictions = model.predict(tiny_t5, test["text"].tolist())
    assert accuracy(predictions.labels, test) >= 0.9  # the encoder's states carry the deciding word
    assert result.val_accuracy == pytest.approx(accuracy(model.predict(tiny_t5, val["text"].tolist()).labels, val))
    assert all(torch.equal(v, before[k]) for k, v in tiny_t5.model.state_dict().items())
    assert result.trainable == 33


def test_bench_uses_the_ladders_tfidf(toy_reviews, monkeypatch):
    from lora_demo import bench
    from lora_demo.config import DataConfig
    from lora_demo.data import Splits

    train, val, test = toy_reviews
    splits = Splits(train=train, val=val, test=test, source="toy", config=DataConfig(seed=5))
    calls = []
    monkeypatch.setattr(
        bench, "tfidf_predictions", lambda *a, **k: calls.append(k) or ladder.tfidf_predictions(*a, **k)
    )
    figures = bench.run_tfidf(splits)
    assert calls == [{"seed": 5}]
    assert figures["accuracy"] == round(
        accuracy(ladder.tfidf_predictions(train, test["text"].tolist(), 5).labels, test), 4
    )


@pytest.mark.parametrize("factory", ["tiny_encoder", "tiny_t5"])
def test_the_head_only_rung_reads_the_zero_shot_pass_as_if_it_ran_the_model_itself(request, factory, toy_reviews):
    """The study labels reviews with the head-only rung from the zero-shot pass's features
    (`Predictions.features`): the same answers as running the untouched model under the head."""
    import numpy as np

    bundle = request.getfixturevalue(factory)
    train, val, test = toy_reviews
    model, _ = train_head_only(bundle, train, val, CONFIG)
    texts = test["text"].tolist()
    features = zero_shot_predict(bundle, texts, max_length=CONFIG.max_length).features
    from_pass, from_model = model.predict_features(features), model.predict(bundle, texts)
    assert features.shape == (len(texts), 32) and features.dtype == np.float32
    assert from_pass.labels == from_model.labels
    assert from_pass.confidence == pytest.approx(from_model.confidence, rel=1e-5)


def test_the_untouched_features_a_lora_run_computes_are_the_untouched_models_and_train_the_same_head(
    tiny_encoder_factory, toy_reviews
):
    """A run that caches the frozen bottom layers also runs the untouched top layers over those states once: the
    features the head-only rung trains on, equal (to bf16 rounding of the cached states) to a full pass."""
    from lora_demo.baseline import embed_texts
    from lora_demo.config import LoraSettings
    from lora_demo.train import train_lora, training_examples

    train, val, _ = toy_reviews
    config = TrainConfig(**{**vars(CONFIG), "epochs": 1})
    lora = LoraSettings(r=4, target_modules=("query", "value"), top_layers=1)
    _, result = train_lora(tiny_encoder_factory(0), train, val, lora, config, with_features=True)
    features = result.untouched_features
    untouched = tiny_encoder_factory(0)
    expected = [
        embed_texts(untouched, f["text"].tolist(), config.max_length) for f in (training_examples(train, config), val)
    ]
    for got, want in zip(features, expected, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-2, rtol=0)
    assert "untouched_features" not in result.as_dict()  # never in a report
    from_run, _ = train_head_only(untouched, train, val, config, features=features)
    from_model, _ = train_head_only(untouched, train, val, config)
    for name, value in from_model.head.items():
        torch.testing.assert_close(from_run.head[name], value, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="do not match"):
        train_head_only(untouched, train, val[:4], config, features=features)
