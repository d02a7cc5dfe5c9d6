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
from .inference import Predictions, classify_texts, run_batches
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
    encoded = encode_head_tail(bundle.tokenizer, texts, max_length)
    if not encoded:
        return torch.empty(0, bundle.model.config.hidden_size)
    rows = run_batches(
        bundle,
        encoded,
        batch_size,
        lambda batch: torch.nn.functional.normalize(bundle.model.embed(**batch).float(), dim=-1),
        progress,
    )
    return torch.stack(rows)


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
    if bundle.spec.kind == "seq2seq":
        return classify_texts(bundle, texts, max_length, batch_size, progress)
    features = embed_texts(bundle, texts, max_length, batch_size, progress)
    return Predictions.from_scores(features @ label_prototypes(bundle).T * SIMILARITY_SCALE, features=features)
