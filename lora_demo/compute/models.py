"""The models of this process, made from plain names: what every job loads or reuses.

A job gets a `ModelRef` (a registry name, and which loader makes it) and, for a trained model, its
`AdapterWeights`; it never gets a model. Each process (the app's, a ZeroGPU worker, a test's worker) keeps
its own copies: the untouched serving copy of each base model, and a few serving copies of trained adapters,
so a second call in the same process does not load again. Both caches are safe from several threads, and a
slow first load of one model never holds up the others.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..cache import Cache
from ..data import texts_fingerprint
from ..inference import LayerStates, serving_copy
from ..lora import AdapterWeights, attach
from ..models import ModelBundle, encode_head_tail, load_bundle
from .device import device, fit_threads

TUNED_COPIES = 4  # serving copies of trained adapters kept per process (the least recently used is dropped)
# bytes of the untouched model's hidden states kept per process for the LoRA models' passes over the same reviews
# (`keep_states`): the default split's test, calibration and short reviews take about 200 MB in bf16
STATES_BYTES_KEPT = 512 * 2**20

# the loaders a `ModelRef` can name; tests add their tiny models under a name of their own (`register_loader`)
LOADERS: dict[str, Callable[..., ModelBundle]] = {"registry": load_bundle}


@dataclass(frozen=True)
class ModelRef:
    """A base model by name: the registry's (`loader="registry"`) or a registered loader's."""

    name: str
    loader: str = "registry"


def register_loader(loader: Callable[..., ModelBundle]) -> str:
    """Make `loader(name, seed=...)` nameable in a `ModelRef`; returns its name (a worker forked later knows it)."""
    if loader is load_bundle:
        return "registry"
    key = f"loader-{id(loader):x}"
    LOADERS[key] = loader
    return key


def fresh(ref: ModelRef, seed: int = 42) -> ModelBundle:
    """A new copy of the base model on the policy's device, to train (PEFT adapts a model in place)."""
    try:
        loader = LOADERS[ref.loader]
    except KeyError:
        raise RuntimeError(f"no loader {ref.loader!r} in this process (register it before forking)") from None
    fit_threads()
    bundle = loader(ref.name, seed=seed)
    bundle.model.to(device())
    return bundle


_BASE = Cache()
_TUNED = Cache(TUNED_COPIES)


def base(ref: ModelRef) -> ModelBundle:
    """The untouched model's serving copy, shared read-only by every caller in this process."""
    return _BASE.get((ref, str(device())), lambda: serving_copy(fresh(ref)))


def tuned(ref: ModelRef, weights: AdapterWeights) -> ModelBundle:
    """A trained adapter's serving copy (merged, bf16 where native), made from its weights on first use."""
    return _TUNED.get((ref, weights.key, str(device())), lambda: serving_copy(attach(fresh(ref), weights)))


_STATES = Cache(budget=STATES_BYTES_KEPT, weigh=lambda states: states.nbytes)


def keep_states(ref: ModelRef, bundle: ModelBundle, texts: list[str], max_length: int, states: LayerStates) -> None:
    """Keep the hidden states of `texts` that `bundle` (the untouched model's serving copy) computed entering
    `states.layer`, in this process, for the passes of LoRA models that leave the layers below as they are
    (`kept_states`); the least recently used go first past `STATES_BYTES_KEPT`."""
    if states.nbytes <= STATES_BYTES_KEPT:
        _STATES.put(_states_key(ref, bundle, texts, max_length, states.layer), states)


def kept_states(ref: ModelRef, bundle: ModelBundle, texts: list[str], max_length: int, layer: int):
    """The `LayerStates` `keep_states` kept for these texts entering `layer`, from a copy of the untouched model
    held as `bundle` is (the same device and weight type, so the same products); None where there are none (layer
    0, another process, dropped)."""
    if not layer:
        return None
    return _STATES.peek(_states_key(ref, bundle, texts, max_length, layer))


def _states_key(ref: ModelRef, bundle: ModelBundle, texts: list[str], max_length: int, layer: int) -> tuple:
    weights = next(bundle.model.parameters())
    return (ref, str(weights.device), str(weights.dtype), max_length, layer, texts_fingerprint(texts))


_MAKING_STATES = threading.Lock()  # held by the one pass of this process making states to keep


@contextlib.contextmanager
def room_for_states(bundle: ModelBundle, texts: list[str], max_length: int):
    """Whether a pass of `bundle` over `texts` may make states to keep, held for the pass: they fit within
    `STATES_BYTES_KEPT`, and no other pass of this process is making some (a pass holds its states before the
    budget sees them: one split's at most, however many sessions score at once). A large split's are not made."""
    if not _states_fit(bundle, texts, max_length) or not _MAKING_STATES.acquire(blocking=False):
        yield False
        return
    try:
        yield True
    finally:
        _MAKING_STATES.release()


def _states_fit(bundle: ModelBundle, texts: list[str], max_length: int) -> bool:
    tokens = sum(map(len, encode_head_tail(bundle.tokenizer, texts, max_length)))
    weight = next(bundle.model.parameters())
    # CPU autocast leaves the layers' outputs in the weights' type; CUDA's runs layer norms, and so the layers'
    # outputs, in fp32
    size = 4 if weight.device.type == "cuda" else weight.element_size()
    return tokens * bundle.model.config.hidden_size * size <= STATES_BYTES_KEPT


def kept_states_bytes() -> int:
    """Bytes of hidden states this process keeps (`keep_states`)."""
    return int(_STATES.weight)


def adapted(ref: ModelRef, weights: AdapterWeights) -> ModelBundle:
    """The base model with the adapter attached and not merged (its B and A can be measured); not cached."""
    return attach(fresh(ref), weights)


def release(weights: AdapterWeights) -> None:
    """Drop this process's serving copies of an adapter nobody will use again (its session closed, or it was
    replaced), rather than keep them until newer ones push them out."""
    _TUNED.drop(lambda key: key[1] == weights.key)


def cached_tuned() -> int:
    """How many trained adapters' serving copies this process holds."""
    return len(_TUNED)


def forget() -> None:
    """Drop this process's cached models (tests; a worker that must free memory)."""
    _BASE.clear()
    _TUNED.clear()
    _STATES.clear()
