"""Sentence windows: short training examples cut from long reviews, and their use in training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_demo import train as train_module
from lora_demo.augment import add_sentence_windows, sentence_window, sentence_windows, split_sentences
from lora_demo.config import LoraSettings, TrainConfig, UserError

REVIEW = "One. Two is here! Three? Four... Five ends it."


def test_split_sentences():
    assert split_sentences(REVIEW) == ["One.", "Two is here!", "Three?", "Four...", "Five ends it."]
    assert split_sentences("no end at all") == ["no end at all"]


def test_windows_are_one_to_three_consecutive_sentences():
    rng = np.random.default_rng(0)
    sentences = split_sentences(REVIEW)
    seen = set()
    for _ in range(200):
        window = split_sentences(sentence_window(REVIEW, rng))
        start = sentences.index(window[0])
        assert 1 <= len(window) <= 3 and window == sentences[start : start + len(window)]
        seen.add((start, len(window)))
    assert len(seen) == 5 + 4 + 3  # every start and size is drawn
    assert sentence_window("Just one sentence.", rng) == "Just one sentence."


def test_windows_keep_labels_cover_reviews_and_are_seeded():
    frame = pd.DataFrame(
        {
            "text": [f"Review {i} starts. It has a middle. It ends {i}." for i in range(10)],
            "label": [i % 2 for i in range(10)],
        }
    )
    windows = sentence_windows(frame, 15, seed=3)
    assert len(windows) == 15
    for text, label in zip(windows["text"], windows["label"]):
        owner = [i for i in range(10) if text in frame["text"][i]]
        assert owner and frame["label"][owner[0]] == label
    assert windows.equals(sentence_windows(frame, 15, seed=3))
    assert not windows.equals(sentence_windows(frame, 15, seed=4))
    first_ten = sentence_windows(frame, 10, seed=3)
    assert sorted(first_ten["label"]) == [0] * 5 + [1] * 5  # every review once before any twice


def test_add_sentence_windows_appends_a_share_of_the_reviews_with_sentences_to_cut():
    frame = pd.DataFrame({"text": ["A. B. C."] * 8 + ["One sentence only."] * 4, "label": [0, 1] * 6})
    assert add_sentence_windows(frame, 0.0, seed=1) is frame
    more = add_sentence_windows(frame, 0.5, seed=1)
    assert len(more) == 16 and more.iloc[:12].equals(frame)  # half of the 8 reviews of several sentences
    assert "One sentence only." not in set(more["text"].iloc[12:])
    short = frame.iloc[8:]
    assert add_sentence_windows(short, 1.0, seed=1) is short  # nothing to cut: no duplicates either


def test_short_windows_is_validated():
    with pytest.raises(UserError, match="short_windows"):
        TrainConfig(short_windows=-0.5)


@pytest.mark.parametrize("top_layers", [1, 0])  # cached bottom layers, and the full model
def test_training_sees_the_windows(tiny_encoder, toy_reviews, monkeypatch, top_layers):
    train, val, _ = toy_reviews
    train = train.assign(text=train["text"] + " . it was")  # two sentences each
    seen = []
    prepare = train_module.prepare_data
    monkeypatch.setattr(train_module, "prepare_data", lambda b, t, *a: seen.append(t) or prepare(b, t, *a))
    config = TrainConfig(epochs=1, batch_size=8, max_length=32, short_windows=0.5, seed=2)
    _, result = train_module.train_lora(tiny_encoder, train, val, LoraSettings(top_layers=top_layers), config)
    assert len(seen[0]) == 96 and seen[0].iloc[:64].equals(train[["text", "label"]])
    assert result.max_steps == 12  # 96 examples in batches of 8
