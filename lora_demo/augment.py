"""Short training examples cut from long reviews: a few consecutive sentences that keep their review's label.

IMDb reviews are long (a median of about 170 words) and the model reads their first and last tokens, so a
model tuned on them alone never sees a review of one or two sentences, the kind people type. Windows of
1-3 sentences of the training reviews add such examples without any new data.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# a sentence ends at . ! or ? (runs of them too) followed by a space; good enough for review prose
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """The sentences of a cleaned review, in order (a text with no sentence end is one sentence)."""
    return [part for part in _SENTENCE_END.split(text.strip()) if part]


def sentence_window(text: str, rng: np.random.Generator, max_sentences: int = 3) -> str:
    """1 to `max_sentences` consecutive sentences of `text`, at a random place."""
    sentences = split_sentences(text) or [text]
    size = int(rng.integers(1, min(max_sentences, len(sentences)) + 1))
    start = int(rng.integers(0, len(sentences) - size + 1))
    return " ".join(sentences[start : start + size])


def sentence_windows(frame: pd.DataFrame, count: int, seed: int, max_sentences: int = 3) -> pd.DataFrame:
    """`count` windows of the reviews of `frame`, each labelled as its review, drawn with `seed`.

    Reviews are drawn without repeats while `count` allows (every review once before any twice).
    """
    rng = np.random.default_rng(seed)
    rounds = -(-count // len(frame)) if len(frame) else 0
    picks = np.concatenate([rng.permutation(len(frame)) for _ in range(rounds)])[:count] if rounds else []
    rows = frame.iloc[list(picks)]
    texts = [sentence_window(text, rng, max_sentences) for text in rows["text"]]
    return pd.DataFrame({"text": texts, "label": rows["label"].astype(int).to_numpy()})


def add_sentence_windows(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """The reviews of `frame` followed by sentence windows of those that have two sentences or more.

    A review of one sentence is already short: a window of it would only repeat it.

    Args:
        frame: training reviews (`text`, `label`).
        share: windows per review of two sentences or more (0: none, 1: one window each).
        seed: the draw's seed, so a run is reproducible.
    """
    long_enough = frame[frame["text"].map(lambda text: len(split_sentences(text)) > 1)]
    count = round(share * len(long_enough))
    if count == 0:
        return frame
    return pd.concat([frame[["text", "label"]], sentence_windows(long_enough, count, seed)], ignore_index=True)
