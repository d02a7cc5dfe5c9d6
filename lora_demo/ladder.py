"""The rungs of the comparison ladder below LoRA: TF-IDF + logistic regression, and the head alone.

Zero-shot → TF-IDF → head only → LoRA, all on the same test reviews, says how much of LoRA's gain a
cheaper model trained on the same reviews would give. The LoRA run trains its classification head (started
from the zero-shot label prototypes) as well as the adapters, so "head only" trains that same head with
the encoder frozen, the same epochs and learning-rate schedule: a linear probe on features computed once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .baseline import SIMILARITY_SCALE, embed_texts, label_prototypes
from .config import SCORE_BATCH, TrainConfig
from .data import format_seq2seq
from .inference import Predictions, run_batches
from .models import ModelBundle, encode_head_tail, mean_pool
from .train import TrainEvent, training_examples

HEAD_METHODS = {
    "encoder": "the LoRA run's classification head, started from the zero-shot label prototypes and trained with "
    "the encoder frozen: same epochs, batch size, learning rate and schedule",
    # a T5 LoRA run has no classification head (it generates the label word), so there is no "same head" to
    # train; the honest counterpart is a linear classifier on the frozen encoder's features, fitted to convergence
    "seq2seq": "a logistic-regression probe on the frozen T5 encoder's mean-pooled states (T5 has no "
    "classification head to train alone: its LoRA run generates the label word)",
}


def tfidf_predictions(train: pd.DataFrame, test_texts: list[str], seed: int) -> Predictions:
    """TF-IDF over words and word pairs with logistic regression, trained on `train` only.

    Args:
        train: the training reviews (`text`, `label`), the same ones LoRA trains on.
        test_texts: the reviews to label.
        seed: the logistic regression's random state.

    Returns:
        Labels and the probability of the predicted label.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        LogisticRegression(max_iter=1000, C=10.0, random_state=seed),
    )
    model.fit(train["text"].tolist(), train["label"].astype(int).tolist())
    probs = model.predict_proba(list(test_texts))
    return Predictions(
        labels=probs.argmax(axis=1).tolist(), confidence=probs.max(axis=1).tolist(), positive=probs[:, 1].tolist()
    )


@dataclass
class HeadResult:
    """What training the head alone produced (the fields `TrainResult` has where they apply)."""

    method: str
    seconds: float
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    steps: int
    trainable: int
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


@dataclass
class HeadOnlyModel:
    """The head-only rung as plain data, ready to label reviews with its frozen base model.

    Attributes:
        max_length: tokens kept per review (head + tail), as in training.
        head: for encoders, the trained head's `weight` and `bias` (on the CPU), applied to the frozen encoder's
            unit-length mean-pooled features as the LoRA model's head is.
        probe: for seq2seq, the fitted logistic regression on mean-pooled encoder states.
    """

    max_length: int
    head: dict | None = None
    probe: object | None = None

    def predict(self, base: ModelBundle, texts: list[str], batch_size: int = SCORE_BATCH) -> Predictions:
        """Label reviews with the untouched `base` model under this head."""
        if self.head is not None:
            return self.predict_features(embed_texts(base, list(texts), self.max_length, batch_size).numpy())
        return self.predict_features(t5_encoder_features(base, list(texts), self.max_length, batch_size))

    def predict_features(self, features: np.ndarray) -> Predictions:
        """Label reviews from the untouched model's features of them (`Predictions.features` of its zero-shot
        answers at this `max_length`): no pass through the model.

        The arithmetic is NumPy's: it runs in the app's own process, which under ZeroGPU forks the GPU workers, and a
        torch thread pool started here would hang their first parallel operation.
        """
        features = np.asarray(features, dtype=np.float64)
        if self.head is not None:
            weight, bias = (self.head[name].detach().to("cpu", torch.float64).numpy() for name in ("weight", "bias"))
            logits = features @ weight.T + bias
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        else:
            probs = self.probe.predict_proba(features)
        return Predictions(
            labels=probs.argmax(axis=1).tolist(), confidence=probs.max(axis=1).tolist(), positive=probs[:, 1].tolist()
        )


def train_head_only(
    bundle: ModelBundle,
    train: pd.DataFrame,
    val: pd.DataFrame,
    config: TrainConfig,
    on_event: Callable[[TrainEvent], None] | None = None,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[HeadOnlyModel, HeadResult]:
    """Train the head-only rung on the same reviews and settings as a LoRA run.

    Args:
        bundle: an untouched registry model (no LoRA); it is not changed.
        train, val: the LoRA run's training and validation reviews.
        config: the LoRA run's settings: epochs, batch size, learning rate, warm-up, max length, sentence
            windows (`short_windows`), seed.
        on_event: receives a `log` event (mean train loss) and an `eval` event (val_loss, val_accuracy) per epoch,
            as `TrainEvent`s like a LoRA run's; the result's history holds them as dicts.
        features: the untouched encoder's features of the training examples and of `val`, where the LoRA run
            already computed them (`TrainResult.untouched_features`): then the model is not run over them again.

    Returns:
        The model and the run's figures.
    """
    started = time.perf_counter()
    # the same training examples as the LoRA run, sentence windows included, so the rungs differ only in what trains
    train = training_examples(train, config)
    if bundle.spec.kind == "seq2seq":
        model, result = _fit_t5_probe(bundle, train, val, config)
    else:
        if features is None:
            features = tuple(embed_texts(bundle, frame["text"].tolist(), config.max_length) for frame in (train, val))
        model, result = _fit_encoder_head(bundle, (train, val), features, config, on_event)
    result.seconds = time.perf_counter() - started
    return model, result


def _fit_encoder_head(bundle, frames, features, config: TrainConfig, on_event) -> tuple[HeadOnlyModel, HeadResult]:
    (train, val), (train_features, val_features) = frames, features
    if len(train_features) != len(train) or len(val_features) != len(val):
        raise ValueError("the head-only rung's features do not match its training and validation reviews")
    torch.manual_seed(config.seed)
    head = nn.Linear(bundle.model.classifier.in_features, bundle.model.classifier.out_features)
    with torch.no_grad():
        head.weight.copy_(label_prototypes(bundle) * SIMILARITY_SCALE)
        head.bias.zero_()
    # the same dropout the LoRA run's head sees on its features (the model's own, 0.1 for MiniLM)
    dropout = nn.Dropout(bundle.model.dropout.p)
    labels = torch.tensor(train["label"].astype(int).tolist())
    val_set = (val_features, torch.tensor(val["label"].tolist()))
    history, train_loss, steps = fit_linear_head(
        head, dropout, (train_features, labels), val_set if len(val) else None, config, on_event
    )
    evals = [e for e in history if e["type"] == "eval"]
    result = HeadResult(
        method=HEAD_METHODS["encoder"],
        seconds=0.0,
        train_loss=train_loss,
        val_loss=evals[-1]["val_loss"] if evals else None,
        val_accuracy=evals[-1]["val_accuracy"] if evals else None,
        steps=steps,
        trainable=sum(p.numel() for p in head.parameters()),
        history=history,
    )
    state = {name: value.detach().clone() for name, value in head.state_dict().items()}
    return HeadOnlyModel(max_length=config.max_length, head=state), result


def fit_linear_head(head: nn.Linear, dropout: nn.Module, train_set, val_set, config: TrainConfig, on_event=None):
    """AdamW with linear warm-up and decay over fixed features, as the Trainer runs the LoRA head.

    Weight decay 0.01 on the weight (not the bias), batches drawn in a seeded random order, one
    evaluation per epoch.

    Returns:
        (events, mean training loss over all steps, steps).
    """
    from transformers import get_linear_schedule_with_warmup

    features, labels = train_set
    per_epoch = max(1, math.ceil(len(labels) / config.batch_size))
    total = max(1, math.ceil(config.epochs * per_epoch))
    warmup = int(config.warmup_ratio) if config.warmup_ratio >= 1 else math.ceil(total * config.warmup_ratio)
    optimizer = torch.optim.AdamW(
        [{"params": [head.weight], "weight_decay": 0.01}, {"params": [head.bias], "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    generator = torch.Generator().manual_seed(config.seed)
    history, losses, step = [], [], 0
    while step < total:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = nn.functional.cross_entropy(head(dropout(features[batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if step == total:
                break
        for event in _epoch_events(head, losses[-per_epoch:], val_set, step, step / per_epoch):
            history.append(event.to_dict())
            if on_event:
                on_event(event)
    return history, float(np.mean(losses)), step


@torch.no_grad()
def _epoch_events(head: nn.Linear, epoch_losses: list[float], val_set, step: int, epoch: float) -> list[TrainEvent]:
    events = [TrainEvent(type="log", step=step, epoch=epoch, loss=float(np.mean(epoch_losses)))]
    if val_set is not None:
        logits = head(val_set[0])
        loss = float(nn.functional.cross_entropy(logits, val_set[1]))
        accuracy = float((logits.argmax(-1) == val_set[1]).float().mean())
        events.append(TrainEvent(type="eval", step=step, epoch=epoch, val_loss=loss, val_accuracy=accuracy))
    return events


def t5_encoder_features(
    bundle: ModelBundle, texts: list[str], max_length: int, batch_size: int = SCORE_BATCH
) -> np.ndarray:
    """Mean-pooled last hidden states of a seq2seq model's encoder, on the prompt its LoRA run reads."""
    encoded = encode_head_tail(bundle.tokenizer, [format_seq2seq(t) for t in texts], max_length)
    encoder = bundle.model.get_encoder()

    def step(batch):
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return list(mean_pool(hidden.float(), batch["attention_mask"]))

    return torch.stack(run_batches(bundle, encoded, batch_size, step)).numpy()


def _fit_t5_probe(bundle, train, val, config: TrainConfig) -> tuple[HeadOnlyModel, HeadResult]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=config.seed))
    probe.fit(t5_encoder_features(bundle, train["text"].tolist(), config.max_length), train["label"].astype(int))
    model = HeadOnlyModel(max_length=config.max_length, probe=probe)
    val_accuracy = None
    if len(val):
        predicted = model.predict(bundle, val["text"].tolist()).labels
        val_accuracy = float(np.mean(np.array(predicted) == val["label"].to_numpy()))
    hidden = bundle.model.config.d_model
    result = HeadResult(
        method=HEAD_METHODS["seq2seq"],
        seconds=0.0,
        train_loss=None,
        val_loss=None,
        val_accuracy=val_accuracy,
        steps=0,
        trainable=hidden + 1,  # one weight per feature and a bias: two classes
        history=[],
    )
    return model, result
