"""Every piece of work that needs the accelerator, as a pure job: plain, picklable inputs to plain outputs.

A job gets texts, labels (data frames of `text` and `label`), settings, a model by name (`ModelRef`) and, for a
trained model, its `AdapterWeights`; it returns predictions, figures and weights. No model, tokenizer, thread or
lock crosses its boundary: each job loads (or reuses, within its process) what it needs (`compute.models`), so it
can run in this process or in a forked worker (ZeroGPU, `compute.runner`). `progress`, where a job takes it, is a
callback that only an in-process run receives.

`WORK` says how much work each job is, for the duration a GPU call asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pandas as pd

from ..config import DEFAULT_MAX_LENGTH, LoraSettings, TrainConfig
from ..inference import Predictions
from ..lora import AdapterWeights
from ..train import TrainEvent, TrainResult
from . import models
from .background import TrainingJob
from .device import runtime
from .models import ModelRef
from .stop import RunStop, StopFlag

Progress = Callable[[int, int], None] | None


@dataclass
class Trained:
    """The last event of a training job: the adapter it trained, the run's figures, and where it ran.

    Attributes:
        out_of_time: the job ended itself at its time budget (its GPU call's duration), keeping what it trained.
    """

    weights: AdapterWeights
    result: TrainResult
    runtime: dict
    summary: dict  # `study.lora_summary` of the trained model: the modules and layers it adapts
    out_of_time: bool = False


def zero_shot(
    ref: ModelRef,
    texts: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: Progress = None,
    keep_for: LoraSettings | None = None,
):
    """The untouched model's answers (`baseline.zero_shot_predict`).

    Args:
        keep_for: LoRA settings whose models will answer the same texts next: the hidden states entering the
            first layer they adapt stay in this process (`models.keep_states`), so that those passes run only the
            layers from there up (`score`). Nothing is kept for a seq2seq model, states past the budget, or
            while another pass of this process is making some (`models.room_for_states`).
    """
    from ..baseline import zero_shot_keeping, zero_shot_predict

    bundle, texts = models.base(ref), list(texts)
    layer = keep_for.untouched_below(bundle.spec) if keep_for is not None else 0
    if layer:
        with models.room_for_states(bundle, texts, max_length) as room:
            if room:
                predictions, states = zero_shot_keeping(bundle, texts, layer, max_length, progress=progress)
                models.keep_states(ref, bundle, texts, max_length, states)
                return predictions
    return zero_shot_predict(bundle, texts, max_length=max_length, progress=progress)


def score(ref: ModelRef, weights: AdapterWeights, texts: list[str], max_length: int, progress: Progress = None):
    """A trained adapter's answers (`inference.classify_texts` on its merged serving copy), from the untouched
    model's states of the same texts below the first layer it adapts where this process kept them
    (`zero_shot(keep_for=...)`): those layers are the untouched model's own."""
    from ..inference import classify_texts

    bundle, texts = models.tuned(ref, weights), list(texts)
    states = models.kept_states(ref, bundle, texts, max_length, weights.lora.untouched_below(bundle.spec))
    return classify_texts(bundle, texts, max_length=max_length, progress=progress, states=states)


def classify(
    ref: ModelRef, weights: AdapterWeights | None, texts: list[str], max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[Predictions, Predictions | None]:
    """The zero-shot answers and, given an adapter, its answers, for the same texts: one call for both models."""
    baseline = zero_shot(ref, texts)
    return baseline, (score(ref, weights, texts, max_length) if weights is not None else None)


def explain(
    ref: ModelRef, weights: AdapterWeights | None, text: str, max_length: int = DEFAULT_MAX_LENGTH
) -> list[list[tuple[str, float]]]:
    """Occlusion attributions of `text` for the zero-shot model and, given an adapter, the trained one."""
    from ..explain import word_attributions

    results = [word_attributions(lambda texts: zero_shot(ref, texts), text)]
    if weights is not None:
        results.append(word_attributions(lambda texts: score(ref, weights, texts, max_length), text))
    return results


def train(
    ref: ModelRef,
    train_frame: pd.DataFrame,
    val_frame: pd.DataFrame,
    lora: LoraSettings,
    config: TrainConfig,
    stop: StopFlag | None = None,
    seconds: float | None = None,
) -> Iterator[TrainEvent | Trained]:
    """Train LoRA on a fresh copy of the model, yielding each `TrainEvent` as it happens, then `Trained`.

    The Trainer runs in a thread inside the job, so the events stream while it trains. It ends after the current
    step when `stop` is set, when `seconds` (the job's time budget) have passed, or when the consumer closes this
    generator (then nothing is returned).

    Raises:
        UserError: for settings that do not fit the model.
    """
    from ..lora import adapter_weights, lora_summary
    from ..train import train_lora, trains_in_bf16

    run_stop = RunStop(stop, seconds)

    def work(on_event, stop_event):
        try:
            bundle = models.fresh(ref, seed=config.seed)
            adapter, result = train_lora(  # with the untouched features the head-only rung trains on
                bundle,
                train_frame,
                val_frame,
                lora,
                config,
                on_event=on_event,
                stop_event=stop_event,
                with_features=True,
            )
            bf16 = trains_in_bf16(config)
            summary = lora_summary(lora, adapter.spec)
            out_of_time = result.stopped and run_stop.out_of_time and not (stop is not None and stop.is_set())
            result = replace(result, out_of_time=out_of_time)
            return Trained(adapter_weights(adapter, lora), result, runtime(bf16), summary, out_of_time)
        finally:
            if stop is not None:
                stop.finish()

    job = TrainingJob(work, name=f"lora-train-{ref.name}", stop_event=run_stop).start()
    try:
        for batch in job.batches(0.25):
            yield from batch
        yield job.result()
    finally:  # the consumer went away, or the run ended: either way the thread ends after its current step
        job.stop()
        job.join()


def head_only(ref: ModelRef, train_frame: pd.DataFrame, val_frame: pd.DataFrame, config: TrainConfig, features=None):
    """The ladder's head-only rung: the same head trained with the model frozen (`ladder.train_head_only`), on
    `features` where the LoRA run already computed them (`TrainResult.untouched_features`).

    Returns:
        (`ladder.HeadOnlyModel`, `ladder.HeadResult`): plain data; it labels reviews from their zero-shot features
        (`HeadOnlyModel.predict_features`), outside any job.
    """
    from ..ladder import train_head_only

    return train_head_only(models.base(ref), train_frame, val_frame, config, features=features)


def method(
    ref: ModelRef,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    test_texts: list[str],
    short_texts: dict[str, list[str]],
    name: str,
    lora: LoraSettings,
    config: TrainConfig,
    stop: StopFlag | None = None,
    seconds: float | None = None,
):
    """One training method of the comparison (`methods.run_method`): trained at each rate of its grid on the
    (training, validation) reviews, the run validation prefers scored on the test and short reviews.

    It ends after the current training step when `stop` is set or `seconds` (its GPU call's budget) have passed.

    Returns:
        `methods.MethodRun`: plain data; None when it was ended so.
    """
    from ..methods import run_method

    return run_method(
        lambda: models.fresh(ref, seed=config.seed),
        frames,
        test_texts,
        short_texts,
        name,
        lora,
        config,
        stop=RunStop(stop, seconds),
    )


def update_norms(ref: ModelRef, weights: AdapterWeights) -> list[dict]:
    """Where the adapter changed the model: each adapted matrix's update against its frozen weights
    (`anatomy.update_norms`), from the weights alone: no review goes through the model."""
    from ..anatomy import update_norms as measure

    return measure(models.adapted(ref, weights))


def resources(ref: ModelRef, lora: LoraSettings, frame: pd.DataFrame, seed: int = 42) -> dict:
    """A few measured AdamW steps of LoRA and of full fine-tuning on one batch (`resources.measure`)."""
    from ..resources import measure

    return measure(ref.name, lora, frame, seed=seed, loader=lambda name, seed: models.fresh(ref, seed))


def _training_work(train: pd.DataFrame, val: pd.DataFrame, config: TrainConfig) -> float:
    """A training run's reviews through the model: its examples (with sentence windows) and validation passes."""
    return (len(train) * (1 + config.short_windows) + len(val) * max(1, config.evals_per_epoch)) * config.epochs


def _method(name: str):
    from ..config import METHODS

    return METHODS[name]


# how much work a call is, in reviews through the model (training: reviews x epochs, with its sentence windows)
WORK = {
    "zero_shot": lambda ref, texts, *args, **kwargs: len(texts),
    "score": lambda ref, weights, texts, *args, **kwargs: len(texts),
    "classify": lambda ref, weights, texts, *args, **kwargs: 2 * len(texts),
    "explain": lambda ref, weights, text, *args, **kwargs: 2 * (len(text.split()) + 1),
    "train": lambda ref, train, val, lora, config, *args, **kwargs: _training_work(train, val, config),
    "head_only": lambda ref, train, val, config, features=None: (
        0 if features is not None else len(train) * (1 + config.short_windows) + len(val)
    ),
    "method": lambda ref, frames, test, short, name, lora, config, **kwargs: (
        len(_method(name).rates) * _method(name).cost * _training_work(*frames, config)
        + len(test)
        + sum(map(len, short.values()))
    ),
    "update_norms": lambda ref, weights: 1,
    "resources": lambda ref, lora, frame, *args, **kwargs: 20 * len(frame),
}
