"""Train LoRA adapters with the Hugging Face Trainer, streaming the loss as it goes.

Callbacks do the demo's work: one sends every logged step and evaluation to a consumer (the app's
chart, the CLI's log), one stops training when a flag is set, one reports progress.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import datasets
import pandas as pd
import torch
from peft.helpers import disable_input_dtype_casting
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    PrinterCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from . import inference
from .augment import add_sentence_windows
from .baseline import SIMILARITY_SCALE, label_prototypes
from .config import WEIGHT_DECAY, LoraSettings, TrainConfig, UserError
from .data import format_seq2seq
from .inference import run_batches
from .lora import count_parameters
from .methods import apply_method, method_optimizer, method_settings
from .models import ModelBundle, encode_head_tail, label_targets, pad_states


@dataclass(frozen=True)
class TrainEvent:
    """One thing that happened while training: a logged train loss, an evaluation, or a finished step.

    Attributes:
        type: `log` (train loss), `eval` (validation loss) or `progress` (a step ended).
        step: optimizer steps done.
        epoch: epochs done, fractional.
        loss: the train loss logged (`log`).
        learning_rate: the learning rate at that step (`log`).
        val_loss: the validation loss (`eval`).
        val_accuracy: the share of validation reviews labelled right (`eval`).
        max_steps: steps the run will take if not stopped (`progress`).
    """

    type: Literal["log", "eval", "progress"]
    step: int
    epoch: float
    loss: float | None = None
    learning_rate: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    max_steps: int | None = None

    def to_dict(self) -> dict:
        """The event as the report and the charts keep it: its type, step, epoch and the values it has."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def is_main_process() -> bool:
    """False on the extra ranks of a `torchrun` launch, which train but leave saving and reporting to rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class TrainResult:
    """What a training run produced, besides the adapted model."""

    seconds: float
    train_loss: float | None
    val_loss: float | None
    steps: int
    max_steps: int
    stopped: bool
    params: dict
    history: list[dict] = field(default_factory=list)
    val_accuracy: float | None = None  # at the last evaluation, like val_loss
    out_of_time: bool = False  # stopped by the time limit of the GPU call it ran in (ZeroGPU), not by the user
    # the untouched model's features of the training examples and of the validation reviews (`untouched_features`),
    # for the head-only rung; None where the run did not cache the frozen layers (T5, LoRA on every layer)
    untouched_features: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "untouched_features"}


class StreamCallback(TrainerCallback):
    """Send each logged train loss, each validation loss and each step's progress to `on_event`."""

    def __init__(self, on_event: Callable[[TrainEvent], None] | None, history: list[dict]):
        self.on_event = on_event
        self.history = history

    def _emit(self, event: TrainEvent):
        if event.type != "progress":
            self.history.append(event.to_dict())
        if self.on_event:
            self.on_event(event)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._emit(
                TrainEvent(
                    "log", state.global_step, state.epoch, loss=logs["loss"], learning_rate=logs.get("learning_rate")
                )
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            loss, accuracy = metrics["eval_loss"], metrics.get("eval_accuracy")
            self._emit(TrainEvent("eval", state.global_step, state.epoch, val_loss=loss, val_accuracy=accuracy))

    def on_step_end(self, args, state, control, **kwargs):
        self._emit(TrainEvent("progress", state.global_step, state.epoch, max_steps=state.max_steps))


def predicted_label_ids(logits, labels) -> torch.Tensor:
    """Keep only each review's predicted label from a batch's label scores, so evaluation holds no full logits.

    Encoders: the argmax of the two classes' logits. Seq2seq (`LabelScoringTrainer`): the argmax of the two label
    words' sequence log-probabilities, the rule `inference.classify_texts` labels by.
    """
    return logits.argmax(-1)


def label_accuracy(prediction) -> dict[str, float]:
    """`compute_metrics` for the Trainer: validation accuracy from `predicted_label_ids` and the true labels."""
    return {"accuracy": float((prediction.predictions == prediction.label_ids).mean())}


def target_classes(labels: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """Which label word each row of a batch's padded seq2seq targets spells (-1 for neither)."""
    classes = torch.full((len(labels),), -1, device=labels.device)
    for k, target in enumerate(targets):
        if len(target) <= labels.shape[1]:
            padded = torch.full((labels.shape[1],), -100, device=labels.device)
            padded[: len(target)] = torch.tensor(target)
            classes[(labels == padded).all(dim=-1)] = k
    return classes


class LabelScoringTrainer(Seq2SeqTrainer):
    """A Seq2SeqTrainer whose evaluation scores both label words, so validation accuracy follows inference's rule.

    The Trainer's own evaluation sees the teacher-forced logits of each review's true target only; here each
    evaluation step also scores the whole token sequence of every label word (`inference.label_log_probs`) and
    hands those scores on as the predictions, with the true label (0 or 1) as the label.

    Args:
        label_targets: each label word's token ids (`models.label_targets`).
        decoder_start_id: the decoder's start token.
    """

    def __init__(self, *args, label_targets: list[list[int]], decoder_start_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_targets = label_targets
        self.decoder_start_id = decoder_start_id

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        if prediction_loss_only:
            return loss, None, None
        device = self.args.device
        with torch.no_grad():
            scores = inference.label_log_probs(
                model,
                inputs["input_ids"].to(device),
                inputs["attention_mask"].to(device),
                self.label_targets,
                self.decoder_start_id,
            )
        return loss, scores, target_classes(inputs["labels"].to(device), self.label_targets)


class StopCallback(TrainerCallback):
    """End training at the next step once `stop_event` is set; what was trained so far is kept."""

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_event.is_set():
            control.should_training_stop = True
            control.should_evaluate = False
        return control


def set_dropout(model: torch.nn.Module, p: float):
    """Set every dropout inside `model` (hidden states and attention weights) to `p`."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def tokenize_split(bundle: ModelBundle, frame: pd.DataFrame, max_length: int) -> datasets.Dataset:
    """Tokenise reviews once; `length` lets the Trainer group similar lengths into a batch."""
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    if bundle.spec.kind == "seq2seq":
        input_ids = encode_head_tail(bundle.tokenizer, [format_seq2seq(t) for t in texts], max_length)
        words = label_targets(bundle.spec, bundle.tokenizer)
        targets = [words[int(y)] for y in labels]
    else:
        input_ids = encode_head_tail(bundle.tokenizer, texts, max_length)
        targets = [int(y) for y in labels]
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids, "labels": targets, "length": [len(ids) for ids in input_ids]}
    )


class CachedBottomCollator:
    """Swap each review for the cached output of the frozen layers below LoRA, padded per batch.

    Those layers get no adapter, so their output never changes during training: computing it once
    instead of once per epoch removes most of the work of each step. The states are kept in bf16 and
    handed over in `dtype`: bf16 when training runs under bf16 autocast (its first products would cast
    them back to bf16 anyway), fp32 otherwise.
    """

    def __init__(self, hidden: list[torch.Tensor], start_layer: int, dtype: torch.dtype = torch.float32):
        self.hidden = hidden
        self.start_layer = start_layer
        self.dtype = dtype

    def __call__(self, features: list[dict]) -> dict:
        padded, mask = pad_states([self.hidden[f["idx"]] for f in features])
        padded = padded.to(self.dtype)
        labels = torch.tensor([f["labels"] for f in features])
        return {"hidden_states": padded, "attention_mask": mask, "labels": labels, "start_layer": self.start_layer}


def cache_bottom_layers(
    bundle: ModelBundle, frames: list[pd.DataFrame], max_length: int, layers: int, dtype: torch.dtype = torch.float32
):
    """Run the frozen bottom `layers` once over every review (no gradients; bf16 where the hardware has it).

    Returns:
        One dataset per frame (`idx`, `labels`, `length`) and the collator holding the cached states.
    """
    sets, hidden = [], []
    for frame in frames:
        encoded = encode_head_tail(bundle.tokenizer, frame["text"].tolist(), max_length)
        states = run_batches(
            bundle,
            encoded,
            64,
            lambda batch: [
                h[: int(m.sum())].to(torch.bfloat16).clone()
                for h, m in zip(
                    bundle.model.bottom_hidden(batch["input_ids"], batch["attention_mask"], layers),
                    batch["attention_mask"],
                )
            ],
        )
        sets.append(
            datasets.Dataset.from_dict(
                {
                    "idx": list(range(len(hidden), len(hidden) + len(states))),
                    "labels": [int(y) for y in frame["label"]],
                    "length": [len(ids) for ids in encoded],
                }
            )
        )
        hidden.extend(states)
    return sets, CachedBottomCollator(hidden, layers, dtype)


def untouched_features(
    bundle: ModelBundle, sets: list[datasets.Dataset | None], collator, bf16: bool
) -> tuple[torch.Tensor, ...]:
    """The untouched model's unit-length features of each cached dataset's reviews, in its order (none for None).

    The frozen top layers run once over the cached bottom-layer states (no gradients; before LoRA is attached):
    half a pass, where the ladder's head-only rung would otherwise run the whole model over the same reviews.
    """
    rows = []
    model = bundle.model.eval()
    device = next(model.parameters()).device
    for dataset in sets:
        if dataset is None:
            rows.append(torch.empty(0, model.config.hidden_size))
            continue
        indices, labels, lengths = dataset["idx"], dataset["labels"], dataset["length"]
        features = torch.empty(len(indices), model.config.hidden_size)
        order = sorted(range(len(indices)), key=lambda i: -lengths[i])
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(order), 64):
                chosen = order[start : start + 64]
                batch = collator([{"idx": indices[i], "labels": labels[i]} for i in chosen])
                pooled = model.embed(
                    hidden_states=batch["hidden_states"].float().to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    start_layer=batch["start_layer"],
                )
                features[chosen] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        rows.append(features)
    return tuple(rows)


CACHE_BUDGET_BYTES = 2 * 2**30


def _cache_fits(bundle: ModelBundle, frames: list[pd.DataFrame], max_length: int) -> bool:
    """Whether the cached states (bf16, at most `max_length` tokens per review) stay within the budget.

    Above it (tens of thousands of reviews) the frozen layers run again each epoch instead; since they
    hold no adapter, no gradient flows through them either way.
    """
    reviews = sum(len(frame) for frame in frames)
    return reviews * max_length * bundle.model.config.hidden_size * 2 <= CACHE_BUDGET_BYTES


def prepare_data(bundle: ModelBundle, train_frame, val_frame, lora: LoraSettings, max_length: int, bf16: bool = False):
    """Datasets and collator for training: token ids, or cached frozen-layer states when LoRA skips the bottom
    (handed to the model in bf16 when it trains under bf16 autocast)."""
    layers = lora.layers_for(bundle.spec)
    frames = [train_frame] + ([val_frame] if len(val_frame) else [])
    if layers and bundle.spec.kind == "encoder" and _cache_fits(bundle, frames, max_length):
        dtype = torch.bfloat16 if bf16 else torch.float32
        sets, collator = cache_bottom_layers(bundle, frames, max_length, layers[0], dtype)
    else:
        sets = [tokenize_split(bundle, frame, max_length) for frame in frames]
        if bundle.spec.kind == "seq2seq":
            collator = DataCollatorForSeq2Seq(bundle.tokenizer, model=bundle.model, label_pad_token_id=-100)
        else:
            collator = DataCollatorWithPadding(bundle.tokenizer)
    return sets[0], (sets[1] if len(sets) > 1 else None), collator


@contextlib.contextmanager
def frozen_weights_in_bf16(model: torch.nn.Module, enabled: bool):
    """Hold the frozen linear weights in bf16 while training under bf16 autocast; the fp32 originals come back.

    Autocast casts a frozen weight to bf16 at every use (it caches only trainable ones): a quarter of a
    T5-small training step on a CPU. The products see the same bf16 values either way. Weights shared with
    an embedding (T5's tied output layer) stay as they are; the originals return for saving and merging.
    """
    if not enabled:
        yield
        return
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    originals = {
        m: m.weight.data
        for m in model.modules()
        if type(m) is torch.nn.Linear and not m.weight.requires_grad and id(m.weight) not in embedded
    }
    for module, weight in originals.items():
        module.weight.data = weight.to(torch.bfloat16)
    try:
        yield
    finally:
        for module, weight in originals.items():
            module.weight.data = weight


def training_examples(train_frame: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """What a run with `config` trains on: the training reviews and their sentence windows (`config.short_windows`)."""
    return add_sentence_windows(train_frame, config.short_windows, config.seed)


def trains_in_bf16(config: TrainConfig) -> bool:
    """Whether a run with `config` trains under bf16 autocast: as set, else where the hardware runs bf16 natively."""
    return inference.fast_bf16() if config.bf16 is None else config.bf16


def build_training_args(config: TrainConfig, n_train: int, output_dir: str, seq2seq: bool) -> TrainingArguments:
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    eval_steps = max(1, steps_per_epoch // config.evals_per_epoch) if config.evals_per_epoch else None
    args_class = Seq2SeqTrainingArguments if seq2seq else TrainingArguments
    return args_class(
        output_dir=output_dir,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, 32),
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,
        weight_decay=WEIGHT_DECAY,
        label_smoothing_factor=config.label_smoothing,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=trains_in_bf16(config),
        ddp_find_unused_parameters=False,  # every LoRA matrix takes part in each step (torchrun / accelerate)
        use_cpu=not torch.cuda.is_available(),  # bf16 on a CPU needs it said explicitly
    )


def train_lora(
    bundle: ModelBundle,
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    lora: LoraSettings,
    config: TrainConfig,
    on_event: Callable[[TrainEvent], None] | None = None,
    stop_event: threading.Event | None = None,
    with_features: bool = False,
    method: str = "lora",
) -> tuple[ModelBundle, TrainResult]:
    """Wrap `bundle` with LoRA (or another `methods.METHODS` method) and train it.

    Args:
        bundle: a fresh model from `load_bundle` (it is adapted in place).
        train_frame, val_frame: cleaned reviews with `text` and `label`.
        lora: rank, alpha, dropout, target modules.
        config: epochs, learning rate, batch size, max length, seed.
        on_event: receives each log / eval / progress event as it happens.
        stop_event: set it from another thread to end training after the current step.
        with_features: also return the untouched model's features of the training examples and validation
            reviews (`TrainResult.untouched_features`), where the frozen bottom layers are cached: half a pass.
        method: what trains (`methods.apply_method`): `lora`, or full fine-tuning or another PEFT method, on the
            same examples with the same schedule.

    Returns:
        The adapted model and the run's figures; `seconds` covers tokenising and training.

    Raises:
        UserError: for settings that do not fit the model.
    """
    lora.targets_for(bundle.spec)  # refuse bad module names before any work
    if len(train_frame) < 2:
        raise UserError("training needs at least 2 reviews")
    started = time.perf_counter()
    set_seed(config.seed)
    if config.model_dropout is not None:
        set_dropout(bundle.model.encoder if bundle.spec.kind == "encoder" else bundle.model, config.model_dropout)
    if bundle.spec.kind == "encoder":
        bundle.model.init_head(label_prototypes(bundle), SIMILARITY_SCALE)
    train_frame = training_examples(train_frame, config)
    train_set, val_set, collator = prepare_data(
        bundle, train_frame, val_frame, method_settings(lora, method), config.max_length, trains_in_bf16(config)
    )
    features = None
    if with_features and isinstance(collator, CachedBottomCollator):  # for the head-only rung
        features = untouched_features(bundle, [train_set, val_set], collator, inference.fast_bf16())  # as scoring
    tuned = apply_method(bundle, lora, method)
    if val_set is None:
        config = replace(config, evals_per_epoch=0)
    history: list[dict] = []
    callbacks = [StreamCallback(on_event, history), StopCallback(stop_event or threading.Event())]
    optimizer = method_optimizer(tuned.model, method, config)
    output, state = _run_trainer(tuned, config, (train_set, val_set, collator), callbacks, optimizer)
    tuned.model.eval()
    evals = [e for e in history if e["type"] == "eval"]
    result = TrainResult(
        seconds=time.perf_counter() - started,
        train_loss=float(output.training_loss) if state.global_step else None,
        val_loss=evals[-1]["val_loss"] if evals else None,
        steps=state.global_step,
        max_steps=state.max_steps,
        stopped=bool(stop_event and stop_event.is_set()),
        params=count_parameters(tuned.model),
        history=history,
        val_accuracy=evals[-1]["val_accuracy"] if evals else None,
        untouched_features=features,
    )
    return tuned, result


def _run_trainer(tuned: ModelBundle, config: TrainConfig, data, callbacks, optimizer=None):
    """The Hugging Face Trainer over (train set, validation set, collator), with its own AdamW unless `optimizer`
    is given; returns its output and final state."""
    train_set, val_set, collator = data
    seq2seq = tuned.spec.kind == "seq2seq"
    with tempfile.TemporaryDirectory(prefix="lora-demo-trainer-") as scratch:
        scoring = (
            {
                "label_targets": label_targets(tuned.spec, tuned.tokenizer),
                "decoder_start_id": tuned.model.config.decoder_start_token_id,
            }
            if seq2seq
            else {}
        )
        trainer = (LabelScoringTrainer if seq2seq else Trainer)(
            **scoring,
            model=tuned.model,
            args=build_training_args(config, len(train_set), scratch, seq2seq),
            train_dataset=train_set,
            eval_dataset=val_set,
            data_collator=collator,
            processing_class=tuned.tokenizer,
            callbacks=callbacks,
            compute_metrics=label_accuracy,
            preprocess_logits_for_metrics=predicted_label_ids,
            optimizers=(optimizer, None),
        )
        trainer.remove_callback(PrinterCallback)  # events go to on_event, not to stdout
        bf16 = trainer.args.bf16
        # PEFT casts each adapted layer's input to its adapter's fp32 weights, and autocast casts it straight back
        # to bf16 for the product: two copies of the activations per layer for the same values (a step 1.03-1.19x)
        with frozen_weights_in_bf16(tuned.model, bf16), disable_input_dtype_casting(tuned.model, active=bf16):
            output = trainer.train()
        return output, trainer.state
