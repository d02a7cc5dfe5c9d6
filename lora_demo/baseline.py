"""Zero-shot predictions: what the pretrained model says before any fine-tuning.

Seq2seq models get the study's prompt and score both label words, as the trained model does
(`inference.classify_texts`): the label is the word whose whole token sequence is the more probable.
Encoders compare each review's mean-pooled embedding with embeddings of a few descriptions of each label.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from .config import DEFAULT_MAX_LENGTH, SCORE_BATCH
from .inference import LayerStates, Predictions, classify_texts, run_batches
from .models import ModelBundle, encode_head_tail

LABEL_DESCRIPTIONS = (
    (
        "A negative movie review.",
        "This film was bad, boring and a waste of time.",
        "I hated this movie: terrible acting and a weak plot.",
    ),
    (
        "A positive movie review.",
        "This film was great, moving and well worth watching.",
        "I loved this movie: wonderful acting and a gripping story.",
    ),
)
# cosine similarities differ by a few hundredths; this temperature turns them into usable confidences
SIMILARITY_SCALE = 20.0


# per model object: the zero-shot baseline is a frozen model, so its prototypes never change
_PROTOTYPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def label_prototypes(bundle: ModelBundle) -> torch.Tensor:
    """One unit vector per label: the mean embedding of its descriptions (computed once per model)."""
    if bundle.model not in _PROTOTYPES:
        vectors = []
        for descriptions in LABEL_DESCRIPTIONS:
            embedded = embed_texts(bundle, list(descriptions))
            vectors.append(torch.nn.functional.normalize(embedded.mean(dim=0), dim=-1))
        _PROTOTYPES[bundle.model] = torch.stack(vectors)
    return _PROTOTYPES[bundle.model].clone()


def embed_texts(
    bundle: ModelBundle,
    texts: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = SCORE_BATCH,
    progress=None,
) -> torch.Tensor:
    """Unit-length mean-pooled embeddings, in input order."""
    return _embed(bundle, texts, max_length, batch_size, progress)[0]


def _embed(bundle, texts, max_length, batch_size, progress, keep_from: int = 0):
    """`embed_texts`, and with `keep_from` the `LayerStates` entering that layer from the same pass (else None)."""
    encoded = encode_head_tail(bundle.tokenizer, texts, max_length)
    if not encoded:
        return torch.empty(0, bundle.model.config.hidden_size), LayerStates(keep_from, []) if keep_from else None

    def step(batch):
        if not keep_from:
            return torch.nn.functional.normalize(bundle.model.embed(**batch).float(), dim=-1)
        pooled, states = bundle.model.embed_keeping(batch["input_ids"], batch["attention_mask"], keep_from)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        features = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return [(row, state[:n].clone()) for row, state, n in zip(features, states, lengths)]

    rows = run_batches(bundle, encoded, batch_size, step, progress)
    if not keep_from:
        return torch.stack(rows), None
    return torch.stack([row for row, _ in rows]), LayerStates(keep_from, [state for _, state in rows])


def zero_shot_predict(
    bundle: ModelBundle,
    texts: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = SCORE_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> Predictions:
    """Predict labels with no training.

    Args:
        bundle: an untouched registry model (no LoRA).
        texts: cleaned reviews.
        max_length: tokens kept per review.
        batch_size: reviews per forward pass.
        progress: called with (done, total) after each batch.
    """
    return zero_shot_keeping(bundle, texts, 0, max_length, batch_size, progress)[0]


def zero_shot_keeping(
    bundle: ModelBundle,
    texts: list[str],
    layer: int,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = SCORE_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Predictions, LayerStates | None]:
    """`zero_shot_predict`, keeping from the same pass each review's hidden states entering encoder layer `layer`
    (None where `layer` is 0 or the model is seq2seq): a LoRA model that adapts only the layers from there up
    answers the same reviews from them (`inference.classify_texts(states=...)`)."""
    if bundle.spec.kind == "seq2seq":
        return classify_texts(bundle, texts, max_length, batch_size, progress), None
    features, states = _embed(bundle, texts, max_length, batch_size, progress, keep_from=layer)
    scores = features @ label_prototypes(bundle).T * SIMILARITY_SCALE
    return Predictions.from_scores(scores, features=features), states
