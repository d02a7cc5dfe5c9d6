"""Training: both model kinds learn the toy task, events stream in order, the stop flag, seeding, cached layers."""

import json
import math
import threading

import pandas as pd
import pytest
import torch
from conftest import first_token_labels, sample_reviews

from lora_demo import train as train_module
from lora_demo.config import LoraSettings, TrainConfig, UserError
from lora_demo.inference import classify_texts
from lora_demo.models import encode_head_tail
from lora_demo.train import build_training_args, train_lora

T5_LORA = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("q", "k", "v", "o", "wi", "wo"))
ENCODER_LORA = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("query", "key", "value", "dense"))
# 64 reviews in batches of 8: 8 steps per epoch, a loss point every 2 steps, one validation per epoch
FAST = TrainConfig(
    epochs=5, learning_rate=3e-2, batch_size=8, max_length=32, logging_steps=2, evals_per_epoch=1, warmup_ratio=0.0
)


def accuracy(bundle, frame) -> float:
    predictions = classify_texts(bundle, frame["text"].tolist(), max_length=32)
    return sum(int(p == y) for p, y in zip(predictions.labels, frame["label"], strict=True)) / len(frame)


def losses(result) -> list[float]:
    return [event["loss"] for event in result.history if event["type"] == "log"]


def test_seq2seq_learns_the_toy_task(tiny_t5, toy_reviews):
    train, val, test = toy_reviews
    assert accuracy(tiny_t5, test) < 0.6  # untrained: about chance
    tuned, result = train_lora(tiny_t5, train, val, T5_LORA, FAST)
    curve = losses(result)
    assert curve[-1] < curve[0] / 3
    assert result.train_loss < curve[0]
    assert accuracy(tuned, test) >= 0.9
    assert result.steps == result.max_steps == 40
    assert result.stopped is False
    assert result.val_loss is not None and result.val_loss < 1.0
    # validation accuracy during training follows the rule the finished model labels by
    assert result.val_accuracy == pytest.approx(accuracy(tuned, val)) and result.val_accuracy >= 0.9
    # q, k, v, o of 6 attention blocks (d_model 32) and wi, wo of 4 feed-forward blocks (d_ff 64), at r 8
    assert result.params["trainable"] == 6 * 4 * 8 * (32 + 32) + 4 * 2 * 8 * (32 + 64)
    assert result.seconds > 0
    json.dumps(result.as_dict())


def test_seq2seq_validation_accuracy_scores_both_label_words(unigram_t5_factory):
    """Validation accuracy (the eval events' and the result's) labels each review by the more probable whole
    label sequence, as `classify_texts` does: a first-token rule scores these reviews differently."""
    reviews = sample_reviews(48, "train")
    train, val = reviews.iloc[:32], reviews.iloc[32:].reset_index(drop=True)
    config = TrainConfig(**{**vars(FAST), "epochs": 1, "max_length": 64, "learning_rate": 1e-2})
    events = []
    tuned, result = train_lora(unigram_t5_factory(0), train, val, T5_LORA, config, on_event=events.append)
    evals = [e for e in events if e.type == "eval"]
    assert evals and evals[-1].step == result.steps and evals[-1].val_accuracy == result.val_accuracy
    texts, labels = val["text"].tolist(), val["label"].tolist()
    scored = classify_texts(tuned, texts, max_length=64).labels
    assert result.val_accuracy == pytest.approx(sum(p == y for p, y in zip(scored, labels)) / len(val))
    by_first_token = first_token_labels(tuned, texts, max_length=64)
    assert sum(p == y for p, y in zip(by_first_token, labels)) / len(val) != pytest.approx(result.val_accuracy)


def test_seq2seq_validation_under_bf16(tiny_t5, toy_reviews):
    """Scoring both label words inside the Trainer's evaluation works with its bf16 autocast and bf16 weights."""
    train, val, _ = toy_reviews
    config = TrainConfig(**{**vars(FAST), "epochs": 1, "bf16": True})
    _, result = train_lora(tiny_t5, train, val, T5_LORA, config)
    assert result.val_accuracy is not None and 0.0 <= result.val_accuracy <= 1.0
    assert math.isfinite(result.val_loss)


def test_encoder_learns_the_toy_task(tiny_encoder, toy_reviews):
    train, val, test = toy_reviews
    tuned, result = train_lora(
        tiny_encoder, train, val, ENCODER_LORA, TrainConfig(**{**vars(FAST), "learning_rate": 1e-2})
    )
    curve = losses(result)
    assert curve[-1] < curve[0] / 3
    assert accuracy(tuned, test) >= 0.9
    assert result.val_loss < 0.5
    # scored on the cached bottom layers during training, as the finished model scores the same reviews
    assert result.val_accuracy == pytest.approx(accuracy(tuned, val)) and result.val_accuracy >= 0.9
    assert "classifier" in " ".join(n for n, p in tuned.model.named_parameters() if p.requires_grad)


def test_events_stream_in_order(tiny_t5, toy_reviews):
    train, val, _ = toy_reviews
    events = []
    config = TrainConfig(**{**vars(FAST), "epochs": 2})
    _, result = train_lora(tiny_t5, train, val, T5_LORA, config, on_event=lambda event: events.append(event.to_dict()))
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == list(range(1, 17))
    assert all(e["max_steps"] == 16 for e in progress)
    logs = [e for e in events if e["type"] == "log"]
    assert [e["step"] for e in logs] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert all(isinstance(e["loss"], float) and e["loss"] > 0 for e in logs)
    evals = [e for e in events if e["type"] == "eval"]
    assert [(e["step"], e["epoch"]) for e in evals] == [(8, 1.0), (16, 2.0)]
    assert all(isinstance(e["val_loss"], float) for e in evals)
    assert all(0.0 <= e["val_accuracy"] <= 1.0 for e in evals)
    assert result.val_accuracy == evals[-1]["val_accuracy"]
    steps = [e["step"] for e in events]
    assert steps == sorted(steps)
    epochs = [e["epoch"] for e in events]
    assert epochs == sorted(epochs)
    assert result.history == [e for e in events if e["type"] != "progress"]
    assert result.val_loss == evals[-1]["val_loss"]


def test_stop_flag_ends_training_early(tiny_t5, toy_reviews):
    train, val, test = toy_reviews
    stop = threading.Event()

    def on_event(event):
        if event.type == "log":
            stop.set()

    tuned, result = train_lora(tiny_t5, train, val, T5_LORA, FAST, on_event=on_event, stop_event=stop)
    assert result.stopped is True
    assert result.steps == 3  # the flag set at the log of step 2 ends training after the next step
    assert result.max_steps == 40
    assert result.train_loss is not None
    predictions = classify_texts(tuned, test["text"].tolist()[:8], max_length=32)
    assert len(predictions.labels) == 8 and set(predictions.labels) <= {0, 1, -1}


def test_same_seed_same_run(tiny_encoder_factory, toy_reviews):
    train, val, test = toy_reviews
    config = TrainConfig(**{**vars(FAST), "epochs": 1, "learning_rate": 1e-2})
    runs = []
    for seed in (42, 42, 7):
        lora = LoraSettings(r=4, dropout=0.1, target_modules=("query", "value"))
        tuned, result = train_lora(
            tiny_encoder_factory(0), train, val, lora, TrainConfig(**{**vars(config), "seed": seed})
        )
        runs.append((losses(result), result.val_loss, classify_texts(tuned, test["text"].tolist(), max_length=32)))
    (loss_a, val_a, pred_a), (loss_b, val_b, pred_b), (loss_c, _, _) = runs
    assert loss_a == loss_b and val_a == val_b
    assert pred_a.labels == pred_b.labels and pred_a.confidence == pred_b.confidence
    assert loss_a != loss_c  # the seed reaches the shuffling and LoRA's initialisation


def test_seq2seq_runs_are_reproducible(tiny_t5_factory, toy_reviews):
    train, val, _ = toy_reviews
    config = TrainConfig(**{**vars(FAST), "epochs": 1})
    first = train_lora(tiny_t5_factory(0), train, val, T5_LORA, config)[1]
    second = train_lora(tiny_t5_factory(0), train, val, T5_LORA, config)[1]
    assert losses(first) == losses(second) and first.val_loss == second.val_loss


def test_top_layers_trains_on_cached_bottom_layers(tiny_encoder, toy_reviews, monkeypatch):
    train, val, test = toy_reviews
    calls = []
    original = train_module.cache_bottom_layers

    def spy(bundle, frames, max_length, layers, dtype):
        calls.append(layers)
        return original(bundle, frames, max_length, layers, dtype)

    monkeypatch.setattr(train_module, "cache_bottom_layers", spy)
    bottom = {k: v.clone() for k, v in tiny_encoder.model.encoder.encoder.layer[0].state_dict().items()}
    lora = LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("query", "key", "value", "dense"), top_layers=1)
    config = TrainConfig(**{**vars(FAST), "learning_rate": 1e-2})
    tuned, result = train_lora(tiny_encoder, train, val, lora, config)
    assert calls == [1]  # layer 0 ran once, up front
    trainable = [n for n, p in tuned.model.named_parameters() if p.requires_grad]
    assert not [n for n in trainable if ".layer.0." in n]
    assert any(".layer.1." in n for n in trainable)
    layer0 = tuned.model.base_model.model.encoder.encoder.layer[0].state_dict()
    assert all(torch.equal(layer0[k], v) for k, v in bottom.items())
    assert accuracy(tuned, test) >= 0.9

    # the validation loss measured on cached (bf16) states agrees with the full model run from token ids
    encoded = encode_head_tail(tuned.tokenizer, val["text"].tolist(), 32)
    batch = tuned.tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
    with torch.no_grad():
        full = tuned.model(**batch, labels=torch.tensor(val["label"].tolist())).loss.item()
    assert result.val_loss == pytest.approx(full, rel=0.05, abs=0.01)


def test_cached_collator_matches_uncached_logits(tiny_encoder, toy_reviews):
    train, _, _ = toy_reviews
    frame = train.head(6)
    (dataset,), collator = train_module.cache_bottom_layers(tiny_encoder, [frame], 32, layers=1)
    batch = collator([dataset[i] for i in range(6)])
    assert batch["start_layer"] == 1 and batch["labels"].tolist() == frame["label"].tolist()
    encoded = encode_head_tail(tiny_encoder.tokenizer, frame["text"].tolist(), 32)
    ids = tiny_encoder.tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
    assert batch["attention_mask"].tolist() == ids["attention_mask"].tolist()
    with torch.no_grad():
        cached = tiny_encoder.model(**batch).logits
        full = tiny_encoder.model(**ids).logits
    torch.testing.assert_close(cached, full, atol=2e-2, rtol=2e-2)


def test_without_validation_reviews(tiny_encoder, toy_reviews):
    train, _, _ = toy_reviews
    events = []
    config = TrainConfig(**{**vars(FAST), "epochs": 1})
    _, result = train_lora(
        tiny_encoder,
        train,
        train.iloc[:0],
        ENCODER_LORA,
        config,
        on_event=lambda event: events.append(event.to_dict()),
    )
    assert result.val_loss is None
    assert not [e for e in events if e["type"] == "eval"]
    assert result.steps == 8


def test_refuses_bad_targets_before_any_work(tiny_t5, toy_reviews, monkeypatch):
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: pytest.fail("prepared data"))
    train, val, _ = toy_reviews
    with pytest.raises(UserError, match="do not exist in t5-small"):
        train_lora(tiny_t5, train, val, LoraSettings(target_modules=("query",)), FAST)


def test_refuses_too_few_reviews(tiny_encoder):
    one = pd.DataFrame({"text": ["good"], "label": [1]})
    with pytest.raises(UserError, match="at least 2 reviews"):
        train_lora(tiny_encoder, one, one.iloc[:0], ENCODER_LORA, FAST)


@pytest.mark.parametrize(("n_train", "evals", "expected"), [(500, 2, 16), (64, 1, 4), (64, 0, None), (3, 5, 1)])
def test_training_args(tmp_path, n_train, evals, expected):
    config = TrainConfig(batch_size=16, evals_per_epoch=evals, seed=3)
    args = build_training_args(config, n_train, str(tmp_path), seq2seq=False)
    assert args.eval_steps == expected
    assert args.eval_strategy == ("no" if expected is None else "steps")
    assert args.seed == 3 and args.learning_rate == config.learning_rate and args.save_strategy == "no"


def dropout_rates(model) -> set[float]:
    return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}


def with_checkpoint_dropout(model, p=0.1):
    """The tiny models are built without dropout; give them a checkpoint's 0.1 everywhere."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    return model


@pytest.mark.parametrize(("model_dropout", "expected"), [(0.0, {0.0}), (0.05, {0.05}), (None, {0.1})])
def test_model_dropout_sets_the_pretrained_models_dropout(tiny_t5_factory, toy_reviews, model_dropout, expected):
    train, val, _ = toy_reviews
    bundle = tiny_t5_factory(0)
    with_checkpoint_dropout(bundle.model)
    config = TrainConfig(epochs=0.2, batch_size=8, max_length=32, model_dropout=model_dropout)
    tuned, _ = train_lora(bundle, train, val, LoraSettings(dropout=0.0), config)
    base = tuned.model.get_base_model()
    # every dropout of the pretrained model; LoRA's own is `LoraSettings.dropout` (0 here, an Identity)
    assert dropout_rates(base) == expected


def test_model_dropout_leaves_the_encoders_head_alone(tiny_encoder_factory, toy_reviews):
    train, val, _ = toy_reviews
    bundle = tiny_encoder_factory(0)
    with_checkpoint_dropout(bundle.model)
    train_lora(bundle, train, val, ENCODER_LORA, TrainConfig(epochs=0.2, batch_size=8, max_length=32))
    assert dropout_rates(bundle.model.encoder) == {0.0}
    assert bundle.model.dropout.p == 0.1


def test_bf16_training_runs_on_this_host(tiny_encoder, toy_reviews):
    """bf16 on a CPU must be allowed by the Trainer (it refuses it unless told the run is on the CPU)."""
    train, val, _ = toy_reviews
    config = TrainConfig(epochs=1, batch_size=8, max_length=32, learning_rate=1e-2, bf16=True)
    args = build_training_args(config, len(train), "unused", seq2seq=False)
    assert args.bf16 is True
    _, result = train_lora(tiny_encoder, train, val, ENCODER_LORA, config)
    assert result.steps == result.max_steps and all(math.isfinite(loss) for loss in losses(result))


def test_bf16_default_follows_the_hardware(monkeypatch):
    from lora_demo import inference

    for native in (True, False):
        monkeypatch.setattr(inference, "fast_bf16", lambda native=native: native)
        assert build_training_args(TrainConfig(), 500, "unused", seq2seq=False).bf16 is native
    assert build_training_args(TrainConfig(bf16=False), 500, "unused", seq2seq=False).bf16 is False


def test_frozen_weights_are_bf16_only_while_training_under_bf16(tiny_t5):
    from lora_demo.lora import apply_lora
    from lora_demo.train import frozen_weights_in_bf16

    model = apply_lora(tiny_t5, LoraSettings(target_modules=("q", "v"), top_layers=0)).model
    query = model.base_model.model.encoder.block[0].layer[0].SelfAttention.q
    before = query.base_layer.weight.detach().clone()
    with frozen_weights_in_bf16(model, enabled=True):
        assert query.base_layer.weight.dtype == torch.bfloat16  # frozen: held in bf16
        assert query.lora_A["default"].weight.dtype == torch.float32  # trained: fp32 master weights
        assert model.base_model.model.shared.weight.dtype == torch.float32  # tied to the output layer
    assert query.base_layer.weight.dtype == torch.float32 and torch.equal(query.base_layer.weight, before)
    with frozen_weights_in_bf16(model, enabled=False):
        assert query.base_layer.weight.dtype == torch.float32


@pytest.mark.parametrize("factory", ["tiny_encoder_factory", "tiny_t5_factory"])
def test_bf16_training_skips_peft_s_input_casts_to_the_same_losses(factory, toy_reviews, request, monkeypatch):
    """Under bf16 autocast PEFT's cast of each adapted layer's input to the adapter's fp32 weights is undone by
    autocast before the product: training without it gives the same losses, and the cast is back on after."""
    import contextlib

    from peft.tuners.tuners_utils import BaseTunerLayer

    from lora_demo import train as training

    train, val, _ = toy_reviews
    make = request.getfixturevalue(factory)
    lora = ENCODER_LORA if factory == "tiny_encoder_factory" else T5_LORA
    config = TrainConfig(**{**vars(FAST), "epochs": 1, "bf16": True})
    seen = []
    real = training.disable_input_dtype_casting

    def recorded(model, active=True):
        seen.append(active)
        return real(model, active)

    monkeypatch.setattr(training, "disable_input_dtype_casting", recorded)
    tuned, skipped = train_lora(make(0), train, val, lora, config)
    assert seen == [True]
    layers = [m for m in tuned.model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(m.cast_input_dtype_enabled for m in layers)  # back on for fp32 scoring
    monkeypatch.setattr(training, "disable_input_dtype_casting", lambda model, active=True: contextlib.nullcontext())
    _, cast = train_lora(make(0), train, val, lora, config)
    assert losses(skipped) == losses(cast) and skipped.val_loss == cast.val_loss


def test_the_encoder_trains_with_plain_attention_and_scores_with_the_fused_kernel_to_the_same_answers(tiny_encoder):
    """On a CPU the fused attention kernel's backward pass is slow, so a forward that takes gradients uses the
    plain matrix products; scoring keeps the fused kernel. Both compute the same attention."""
    model = tiny_encoder.model
    ids = torch.randint(5, 30, (4, 12))
    mask = torch.ones_like(ids)
    mask[2:, 8:] = 0  # padded reviews
    with torch.no_grad():
        scored, _ = model.classify(ids, mask)
    assert model.config._attn_implementation == "sdpa"
    trained, _ = model.classify(ids, mask)
    assert model.config._attn_implementation == "eager"
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach(), scored, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        model.classify(ids, mask)
    assert model.config._attn_implementation == "sdpa"
