"""Train LoRA adapters with the Hugging Face Trainer, streaming the loss as it goes.

Callbacks do the demo's work: one sends every logged step and evaluation to a consumer (the app's
chart, the CLI's log), one stops training when a flag is set, one reports progress.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import datasets
import pandas as pd
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

from .baseline import SIMILARITY_SCALE, label_prototypes
from .config import LoraSettings, TrainConfig, UserError
from .data import format_seq2seq, label_word
from .lora import apply_lora, count_parameters
from .models import ModelBundle, encode_head_tail

Event = dict  # {"type": "log" | "eval" | "progress", "step", "epoch", "loss" | "val_loss" | "max_steps"}


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

    def as_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


class StreamCallback(TrainerCallback):
    """Send each logged train loss, each validation loss and each step's progress to `on_event`."""

    def __init__(self, on_event: Callable[[Event], None], history: list[dict]):
        self.on_event = on_event
        self.history = history

    def _emit(self, event: Event):
        if event["type"] != "progress":
            self.history.append(event)
        if self.on_event:
            self.on_event(event)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._emit({"type": "log", "step": state.global_step, "epoch": state.epoch, "loss": logs["loss"],
                        "learning_rate": logs.get("learning_rate")})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self._emit({"type": "eval", "step": state.global_step, "epoch": state.epoch,
                        "val_loss": metrics["eval_loss"]})

    def on_step_end(self, args, state, control, **kwargs):
        self._emit({"type": "progress", "step": state.global_step, "epoch": state.epoch,
                    "max_steps": state.max_steps})


class StopCallback(TrainerCallback):
    """End training at the next step once `stop_event` is set; what was trained so far is kept."""

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_event.is_set():
            control.should_training_stop = True
            control.should_evaluate = False
        return control


def tokenize_split(bundle: ModelBundle, frame: pd.DataFrame, max_length: int) -> datasets.Dataset:
    """Tokenise reviews once; `length` lets the Trainer group similar lengths into a batch."""
    texts, labels = frame["text"].tolist(), frame["label"].tolist()
    if bundle.spec.kind == "seq2seq":
        input_ids = encode_head_tail(bundle.tokenizer, [format_seq2seq(t) for t in texts], max_length)
        targets = bundle.tokenizer([label_word(y) for y in labels])["input_ids"]
    else:
        input_ids = encode_head_tail(bundle.tokenizer, texts, max_length)
        targets = [int(y) for y in labels]
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids, "labels": targets, "length": [len(ids) for ids in input_ids]}
    )


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
        weight_decay=0.01,
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
    )


def train_lora(
    bundle: ModelBundle,
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    lora: LoraSettings,
    config: TrainConfig,
    on_event: Callable[[Event], None] | None = None,
    stop_event: threading.Event | None = None,
) -> tuple[ModelBundle, TrainResult]:
    """Wrap `bundle` with LoRA and train it.

    Args:
        bundle: a fresh model from `load_bundle` (it is adapted in place).
        train_frame, val_frame: cleaned reviews with `text` and `label`.
        lora: rank, alpha, dropout, target modules.
        config: epochs, learning rate, batch size, max length, seed.
        on_event: receives each log / eval / progress event as it happens.
        stop_event: set it from another thread to end training after the current step.

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
    if bundle.spec.kind == "encoder":
        bundle.model.init_head(label_prototypes(bundle), SIMILARITY_SCALE)
    tuned = apply_lora(bundle, lora)
    train_set = tokenize_split(tuned, train_frame, config.max_length)
    val_set = tokenize_split(tuned, val_frame, config.max_length) if len(val_frame) else None
    seq2seq = bundle.spec.kind == "seq2seq"
    if seq2seq:
        collator = DataCollatorForSeq2Seq(tuned.tokenizer, model=tuned.model, label_pad_token_id=-100)
    else:
        collator = DataCollatorWithPadding(tuned.tokenizer)
    history: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lora-demo-trainer-") as scratch:
        if val_set is None:
            config = replace(config, evals_per_epoch=0)
        trainer_class = Seq2SeqTrainer if seq2seq else Trainer
        trainer = trainer_class(
            model=tuned.model,
            args=build_training_args(config, len(train_set), scratch, seq2seq),
            train_dataset=train_set,
            eval_dataset=val_set,
            data_collator=collator,
            processing_class=tuned.tokenizer,
            callbacks=[StreamCallback(on_event, history), StopCallback(stop_event or threading.Event())],
        )
        trainer.remove_callback(PrinterCallback)  # events go to on_event, not to stdout
        output = trainer.train()
        state = trainer.state
    tuned.model.eval()
    val_losses = [e["val_loss"] for e in history if e["type"] == "eval"]
    result = TrainResult(
        seconds=time.perf_counter() - started,
        train_loss=float(output.training_loss) if state.global_step else None,
        val_loss=val_losses[-1] if val_losses else None,
        steps=state.global_step,
        max_steps=state.max_steps,
        stopped=bool(stop_event and stop_event.is_set()),
        params=count_parameters(tuned.model),
        history=history,
    )
    return tuned, result
