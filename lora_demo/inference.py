"""Batched prediction for both model kinds: length-sorted batches, no gradients, no wasted padding."""

from __future__ import annotations

import copy
import functools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

from .config import DEFAULT_MAX_LENGTH, LABEL_NAMES
from .data import format_seq2seq
from .models import ModelBundle, encode_head_tail, load_bundle

UNMAPPED = -1


@dataclass
class Predictions:
    """Predicted labels (0 negative, 1 positive, -1 for an output that is neither) with confidences."""

    labels: list[int]
    confidence: list[float]
    outputs: list[str] = field(default_factory=list)  # the generated words, for seq2seq models

    def label_names(self) -> list[str]:
        return [LABEL_NAMES[k] if k != UNMAPPED else "unmapped" for k in self.labels]


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
    """Whether this machine runs bfloat16 matrix products natively (CUDA, or a CPU with AVX-512 BF16 / AMX).

    Elsewhere bf16 is emulated and several times slower than fp32, so it is only a default where it pays.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


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
    model.eval()
    return replace(bundle, model=model)


def run_batches(bundle: ModelBundle, encoded, batch_size, step, progress=None, bf16: bool | None = None) -> list:
    """Call `step(padded_batch)` on length-sorted batches; returns its per-review results in input order.

    Args:
        bf16: run under bfloat16 autocast; default: where the hardware runs it natively (`fast_bf16`).
    """
    bf16 = fast_bf16() if bf16 is None else bf16
    results: list = [None] * len(encoded)
    done = 0
    bundle.model.eval()
    device = next(bundle.model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for indices in length_sorted_batches(encoded, batch_size):
            batch = bundle.tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            for i, result in zip(indices, step(batch)):
                results[i] = result
            done += len(indices)
            if progress:
                progress(done, len(encoded))
    return results


def classify_texts(
    bundle: ModelBundle,
    texts: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Predictions:
    """Label reviews with a classifier (encoder) or by generating the label word (seq2seq).

    Args:
        bundle: the model, with or without LoRA.
        texts: cleaned reviews.
        max_length: tokens kept per review (head + tail).
        batch_size: reviews per forward pass.
        progress: called with (done, total) after each batch.
    """
    if bundle.spec.kind == "seq2seq":
        return _generate_labels(bundle, texts, max_length, batch_size, progress)
    encoded = encode_head_tail(bundle.tokenizer, texts, max_length)

    def step(batch):
        probs = torch.softmax(bundle.model(**batch).logits.float(), dim=-1)
        return [(int(p.argmax()), float(p.max())) for p in probs]

    results = run_batches(bundle, encoded, batch_size, step, progress)
    return Predictions(labels=[r[0] for r in results], confidence=[r[1] for r in results])


def _generate_labels(bundle, texts, max_length, batch_size, progress) -> Predictions:
    encoded = encode_head_tail(bundle.tokenizer, [format_seq2seq(t) for t in texts], max_length)

    def step(batch):
        out = bundle.model.generate(
            **batch, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        words = bundle.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        scores = bundle.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        # confidence of the answer: the probability of its first generated token
        first = torch.exp(scores[:, 0].float())
        return [(map_output_word(w), float(p), w.strip()) for w, p in zip(words, first)]

    results = run_batches(bundle, encoded, batch_size, step, progress)
    return Predictions(
        labels=[r[0] for r in results], confidence=[r[1] for r in results], outputs=[r[2] for r in results]
    )


class ModelCache:
    """Untouched models for zero-shot inference, loaded on first use and keyed by registry name.

    Args:
        loader: loads a fresh registry model by name (`models.load_bundle`; tests give tiny models).
    """

    def __init__(self, loader: Callable[[str], ModelBundle] = load_bundle):
        self._loader = loader
        self._bundles: dict[str, ModelBundle] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> ModelBundle:
        with self._lock:
            if name not in self._bundles:
                self._bundles[name] = serving_copy(self._loader(name))
            return self._bundles[name]
