"""Models: head + tail tokenisation, the encoder classifier (with and without cached layers), loading, cache."""

import pytest
import torch

from lora_demo import models
from lora_demo.config import UserError
from lora_demo.models import (
    encode_head_tail,
    load_bundle,
    mean_pool,
    special_tokens_around,
    token_lengths,
)

WORDS = "the movie film plot actor scene story it was a and of this with music ending".split()


def test_special_tokens_around(tiny_encoder, tiny_t5):
    bert, t5 = tiny_encoder.tokenizer, tiny_t5.tokenizer
    assert special_tokens_around(bert) == ([bert.cls_token_id], [bert.sep_token_id])
    assert special_tokens_around(t5) == ([], [t5.eos_token_id])


def test_the_same_texts_are_tokenized_once_per_tokenizer_and_length(tiny_encoder, monkeypatch):
    """A split's reviews go through the zero-shot, LoRA and head-only models: tokenized once, whichever copy of the
    tokenizer asks, and again only for another length or other texts."""
    import copy

    texts = [" ".join(WORDS[i:] + WORDS[:i]) * 3 for i in range(6)]
    calls = []
    original = models._encode_head_tail
    monkeypatch.setattr(models, "_encode_head_tail", lambda *args: calls.append(args[2]) or original(*args))
    models._ENCODED.clear()
    first = encode_head_tail(tiny_encoder.tokenizer, texts, 24)
    again = encode_head_tail(copy.deepcopy(tiny_encoder.tokenizer), list(texts), 24)
    assert first == again == original(tiny_encoder.tokenizer, texts, 24) and calls == [24]
    encode_head_tail(tiny_encoder.tokenizer, texts, 32)
    encode_head_tail(tiny_encoder.tokenizer, texts[:3], 24)
    assert calls == [24, 32, 24]
    assert encode_head_tail(tiny_encoder.tokenizer, [], 24) == []


def test_encode_head_tail_keeps_head_and_tail(tiny_encoder):
    tokenizer = tiny_encoder.tokenizer
    text = " ".join(WORDS)  # 16 words, one token each
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    (encoded,) = encode_head_tail(tokenizer, [text], max_length=10)
    assert len(encoded) == 10
    assert encoded[0] == tokenizer.cls_token_id and encoded[-1] == tokenizer.sep_token_id
    assert encoded[1:-1] == ids[:4] + ids[-4:]


def test_encode_head_tail_odd_budget_and_t5(tiny_t5):
    tokenizer = tiny_t5.tokenizer
    text = " ".join(WORDS)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    (encoded,) = encode_head_tail(tokenizer, [text], max_length=8)  # budget 7: 3 from the head, 4 from the tail
    assert encoded == ids[:3] + ids[-4:] + [tokenizer.eos_token_id]


def test_encode_head_tail_leaves_short_texts_alone(tiny_encoder):
    tokenizer = tiny_encoder.tokenizer
    encoded = encode_head_tail(tokenizer, ["good film", "bad"], max_length=16)
    assert encoded == [tokenizer("good film")["input_ids"], tokenizer("bad")["input_ids"]]


@pytest.mark.parametrize("max_length", [3, 5, 16, 17])
def test_encode_head_tail_never_exceeds_max_length(tiny_encoder, tiny_t5, max_length):
    texts = [" ".join(WORDS[:n]) for n in range(1, len(WORDS) + 1)]
    for bundle in (tiny_encoder, tiny_t5):
        encoded = encode_head_tail(bundle.tokenizer, texts, max_length)
        full = token_lengths(bundle.tokenizer, texts)
        assert [len(ids) for ids in encoded] == [min(n, max_length) for n in full]


def test_token_lengths(tiny_encoder):
    assert token_lengths(tiny_encoder.tokenizer, ["good", "the bad film"]) == [3, 5]


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


def padded_batch(bundle, texts):
    encoded = encode_head_tail(bundle.tokenizer, texts, 32)
    return bundle.tokenizer.pad({"input_ids": encoded}, return_tensors="pt")


TEXTS = ["the movie was good and the plot was long", "bad film", "a very old story with a good cast"]


def test_run_layers_matches_the_transformers_encoder(tiny_encoder):
    model = tiny_encoder.model
    batch = padded_batch(tiny_encoder, TEXTS)
    with torch.no_grad():
        expected = model.encoder(**batch).last_hidden_state
        hidden = model.run_layers(model.encoder.embeddings(input_ids=batch["input_ids"]), batch["attention_mask"], 0)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[mask], expected[mask])


def test_padding_does_not_change_logits(tiny_encoder):
    batch = padded_batch(tiny_encoder, TEXTS)
    with torch.no_grad():
        together = tiny_encoder.model(**batch).logits
        alone = torch.cat([tiny_encoder.model(**padded_batch(tiny_encoder, [t])).logits for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("start_layer", [0, 1, 2])
def test_forward_from_cached_hidden_states_matches_forward_from_ids(tiny_encoder, start_layer):
    model = tiny_encoder.model
    batch = padded_batch(tiny_encoder, TEXTS)
    with torch.no_grad():
        expected = model(**batch).logits
        hidden = model.bottom_hidden(batch["input_ids"], batch["attention_mask"], start_layer)
        cached = model(hidden_states=hidden, attention_mask=batch["attention_mask"], start_layer=start_layer).logits
        wrong = model(hidden_states=hidden, attention_mask=batch["attention_mask"], start_layer=0).logits
    torch.testing.assert_close(cached, expected)
    if start_layer:  # the start layer matters: running layers twice gives other logits
        assert not torch.allclose(wrong, expected, atol=1e-4)


def test_loss_only_with_labels(tiny_encoder):
    batch = padded_batch(tiny_encoder, TEXTS)
    assert tiny_encoder.model(**batch).loss is None
    out = tiny_encoder.model(**batch, labels=torch.tensor([1, 0, 1]))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(out.loss, expected)


def test_init_head_is_a_scaled_cosine_classifier(tiny_encoder):
    model = tiny_encoder.model
    prototypes = torch.nn.functional.normalize(torch.randn(2, model.config.hidden_size), dim=-1)
    model.init_head(prototypes, scale=20.0)
    batch = padded_batch(tiny_encoder, TEXTS)
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.embed(**batch), dim=-1)
        logits = model(**batch).logits
    torch.testing.assert_close(logits, 20.0 * features @ prototypes.T)


def test_load_bundle_refuses_hub_models_offline(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to load from the Hub while offline")

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", no_download)
    monkeypatch.setattr(models.AutoModelForSeq2SeqLM, "from_pretrained", no_download)
    for name in ("t5-small", "flan-t5-small"):
        with pytest.raises(UserError) as err:
            load_bundle(name)
        assert "Hugging Face Hub" in str(err.value) and "minilm" in str(err.value)


def test_load_bundle_refuses_unknown_models():
    with pytest.raises(UserError, match="unknown model 'bert-large'"):
        load_bundle("bert-large")
