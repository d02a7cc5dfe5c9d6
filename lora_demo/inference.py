"""Batched prediction for both model kinds: length-sorted batches, no gradients, no wasted padding."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .config import DEFAULT_MAX_LENGTH, LABEL_NAMES, SCORE_BATCH
from .data import format_seq2seq
from .models import ModelBundle, encode_head_tail, label_targets, mean_pool, pad_states

UNMAPPED = -1


@dataclass
class Predictions:
    """Predicted labels (0 negative, 1 positive) with the predicted label's probability and P(positive).

    The models here always give one of the two labels; -1 (`UNMAPPED`) remains for answers mapped from free
    text (`map_output_word`), which metrics and reports count as wrong.
    """

    labels: list[int]
    confidence: list[float]
    outputs: list[str] = field(default_factory=list)  # seq2seq models: the label word chosen
    positive: list[float] = field(default_factory=list)  # P(positive) per review, where the model gives one
    sure: list[bool] = field(default_factory=list)  # calibrated answers only (`calibration.Calibration.apply`)
    # what the model's head read, one float32 row per review, from the same pass as the answers (encoder: the
    # unit-length mean-pooled vector; seq2seq: the encoder's mean-pooled states of the prompt): the head-only rung
    # and the projection read these instead of running the model over the reviews again
    features: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_scores(
        cls, scores: torch.Tensor, words: bool = False, features: torch.Tensor | None = None
    ) -> Predictions:
        """Predictions from two scores per review (logits, or label words' log-probabilities).

        Args:
            scores: shape (reviews, 2), in label order.
            words: keep the chosen label words as `outputs` (seq2seq models).
            features: shape (reviews, hidden), what the model's head read (see `features`).

        Returns:
            The argmax as label, its softmax probability as confidence, and the positive label's probability.
        """
        scores = scores.float()
        probs = torch.softmax(scores, dim=-1)
        labels = scores.argmax(dim=-1).tolist()
        return cls(
            labels=labels,
            confidence=probs.max(dim=-1).values.tolist(),
            outputs=[LABEL_NAMES[k] for k in labels] if words else [],
            positive=probs[:, 1].tolist(),
            features=None if features is None else features.float().numpy(),
        )

    def label_names(self) -> list[str]:
        return [LABEL_NAMES[k] if k != UNMAPPED else "unmapped" for k in self.labels]


@dataclass
class LayerStates:
    """An encoder's hidden states entering layer `layer`, one (tokens x hidden) tensor per review of a scoring pass,
    in its order: a model that shares the layers below (a LoRA model that adapts only from `layer` up,
    `LoraSettings.untouched_below`) answers the same reviews from them, running only the layers above."""

    layer: int
    states: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(state.numel() * state.element_size() for state in self.states)


def map_output_word(text: str) -> int:
    """Map a generated answer to a label; anything that is not clearly one word of the two is unmapped."""
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return UNMAPPED
    return {"positive": 1, "negative": 0}.get(words[0], UNMAPPED)


def length_sorted_batches(encoded: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of similar length, longest first, so padding stays small."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@functools.cache
def fast_bf16() -> bool:
    """Whether the device policy's device runs bfloat16 matrix products natively (`compute.device.bf16_native`:
    a CUDA GPU with bf16, or a CPU with AVX-512 BF16 / AMX).

    Elsewhere bf16 is emulated and several times slower than fp32, so it is only a default where it pays.
    """
    from .compute.device import bf16_native

    return bf16_native()


def serving_copy(bundle: ModelBundle) -> ModelBundle:
    """The model as prediction wants it: LoRA merged into the weights, bf16 weights where bf16 is native.

    Merging removes the adapter's extra products from every layer, and bf16 weights spare autocast from
    casting each weight on every call (most of a single short review's time). The original keeps its
    separate adapter, for saving and further training; the copy is for inference only.
    """
    from peft import PeftModel

    model = bundle.model
    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    if fast_bf16():
        model = (model if model is not bundle.model else copy.deepcopy(model)).to(torch.bfloat16)
    if model is bundle.model:
        return bundle  # nothing to merge and no native bf16: the model as it is
    model.to(next(bundle.model.parameters()).device).eval()
    return replace(bundle, model=model)


def run_batches(
    bundle: ModelBundle, encoded, batch_size, step, progress=None, bf16: bool | None = None, collate=None
) -> list:
    """Call `step(padded_batch)` on length-sorted batches; returns its per-review results in input order.

    Args:
        encoded: per review, its token ids (or what `collate` pads: anything with a length).
        bf16: run under bfloat16 autocast; default: where the hardware runs it natively (`fast_bf16`).
        collate: makes a batch's inputs from its reviews' items; default: the tokenizer pads token ids.
    """
    from .measure import counted

    collate = collate or (lambda ids: bundle.tokenizer.pad({"input_ids": ids}, return_tensors="pt"))
    bf16 = fast_bf16() if bf16 is None else bf16
    step = counted(step)  # the bench's FLOP count, where one is open
    results: list = [None] * len(encoded)
    done = 0
    bundle.model.eval()
    device = next(bundle.model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for indices in length_sorted_batches(encoded, batch_size):
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in indices]).items()}
            for i, result in zip(indices, _on_cpu(step(batch))):
                results[i] = result
            done += len(indices)
            if progress:
                progress(done, len(encoded))
    return results


def _on_cpu(out):
    """A batch's results on the CPU (from a GPU, one copy per tensor), so callers never see the device."""
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if isinstance(out, list | tuple):
        return type(out)(_on_cpu(item) for item in out)
    return out


def classify_texts(
    bundle: ModelBundle,
    texts: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = SCORE_BATCH,
    progress: Callable[[int, int], None] | None = None,
    states: LayerStates | None = None,
) -> Predictions:
    """Label reviews with a classifier (encoder) or by scoring both label words (seq2seq).

    Args:
        bundle: the model, with or without LoRA.
        texts: cleaned reviews.
        max_length: tokens kept per review (head + tail).
        batch_size: reviews per forward pass.
        progress: called with (done, total) after each batch.
        states: the reviews' hidden states entering a layer from which on this encoder differs from the model
            that computed them (`LayerStates`): only the layers above run.
    """
    if bundle.spec.kind == "seq2seq":
        return _score_label_words(bundle, texts, max_length, batch_size, progress)
    if states is None:
        encoded, collate, start = encode_head_tail(bundle.tokenizer, texts, max_length), None, {}
    elif len(states.states) != len(texts):
        raise ValueError(f"{len(states.states)} reviews' states for {len(texts)} reviews")
    else:
        encoded, collate, start = states.states, _states_batch, {"start_layer": states.layer}

    def step(batch):  # the logits and, beside them, the features the head read
        return torch.cat([part.float() for part in bundle.model.classify(**batch, **start)], dim=-1)

    rows = run_batches(bundle, encoded, batch_size, step, progress, collate=collate)
    rows = _stacked(rows, 2 + hidden_size(bundle))
    return Predictions.from_scores(rows[:, :2], features=rows[:, 2:])


def _states_batch(states: list[torch.Tensor]) -> dict:
    hidden, mask = pad_states(states)
    return {"hidden_states": hidden, "attention_mask": mask}


def hidden_size(bundle: ModelBundle) -> int:
    """The width of the vectors the model's head reads (`Predictions.features`)."""
    config = bundle.model.config
    return config.d_model if bundle.spec.kind == "seq2seq" else config.hidden_size


def _stacked(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.empty(0, width)


def _score_label_words(bundle, texts, max_length, batch_size, progress) -> Predictions:
    """Seq2seq: the label is the label word whose whole token sequence the model finds more probable."""
    targets = label_targets(bundle.spec, bundle.tokenizer)
    start = bundle.model.config.decoder_start_token_id
    encoded = encode_head_tail(bundle.tokenizer, [format_seq2seq(t) for t in texts], max_length)

    def step(batch):  # the label words' scores and, beside them, the encoder's mean-pooled states
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = bundle.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        scores = label_log_probs(bundle.model, ids, mask, targets, start, encoder_outputs=(hidden,))
        return torch.cat([scores, mean_pool(hidden.float(), mask)], dim=-1)

    width = len(targets)
    rows = _stacked(run_batches(bundle, encoded, batch_size, step, progress), width + hidden_size(bundle))
    return Predictions.from_scores(rows[:, :width], words=True, features=rows[:, width:])


def label_log_probs(
    model, input_ids, attention_mask, targets: list[list[int]], start_id: int, encoder_outputs: tuple | None = None
) -> torch.Tensor:
    """Teacher-forced log-probability of each label word's whole token sequence, for each review of a batch.

    The encoder runs once; the decoder runs once per label word, through the model's own forward, so PEFT,
    autocast and the Trainer's wrappers apply as in training. Call it without gradients.

    Args:
        model: a seq2seq model (plain, PEFT-wrapped or wrapped by the Trainer).
        input_ids, attention_mask: the batch of prompts, padded.
        targets: each label word's token ids, from `models.label_targets`.
        start_id: the decoder's start token (`config.decoder_start_token_id`).
        encoder_outputs: the encoder's `(last_hidden_state,)` for this batch where the caller already ran it.

    Returns:
        Shape (reviews, labels): the sum of the log-probabilities of each target's tokens.
    """
    scores = []
    for target in targets:
        target_ids = torch.tensor(target, device=input_ids.device).expand(len(input_ids), -1)
        decoder_input_ids = torch.cat([torch.full_like(target_ids[:, :1], start_id), target_ids[:, :-1]], dim=1)
        if encoder_outputs is None:
            out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
            encoder_outputs = (out.encoder_last_hidden_state,)  # reused for the other label words
        else:
            out = model(
                encoder_outputs=encoder_outputs, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
            )
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)
        scores.append(log_probs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1).sum(dim=-1))
    return torch.stack(scores, dim=-1)
