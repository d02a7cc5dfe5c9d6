"""`python -m lora_demo bench`: our default recipe against the pipeline a tutorial would write, in one process.

Both pipelines train the bundled MiniLM with LoRA on the same reviews and are scored on the same test
reviews. The reference is what a LoRA tutorial does with the Trainer: pad every review to 512 tokens,
fp32, batch 8, no length grouping, LoRA r=8 on query/value in every layer, a fresh classification head.
Ours is the default `train_lora` recipe. TF-IDF + logistic regression is what a user would pick instead.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace

import datasets
import numpy as np
import psutil
import torch
from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

from .config import DEFAULT_MODEL, DataConfig, LoraSettings, TrainConfig, UserError
from .data import Splits
from .inference import classify_texts, serving_copy
from .ladder import tfidf_predictions
from .lora import apply_lora
from .metrics import evaluate_predictions
from .models import ModelBundle, load_bundle
from .train import train_lora

LATENCY_REVIEW = "The acting was fine and the music was lovely, but the plot dragged and I was bored by the end."
SCALING_SIZES = (250, 500, 1000, 2000)


@dataclass(frozen=True)
class ReferenceRecipe:
    """The tutorial pipeline: Trainer defaults except what a LoRA tutorial sets."""

    max_length: int = 512
    batch_size: int = 8
    epochs: float = 3
    learning_rate: float = 1e-3
    eval_batch_size: int = 8


class PeakRSS:
    """Highest resident memory of this process while the block runs, sampled every 20 ms."""

    def __init__(self):
        self.peak = 0
        self._done = threading.Event()
        self._process = psutil.Process()

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._done.wait(0.02)

    def __enter__(self):
        gc.collect()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def latency_ms(predict, repeats: int = 30) -> tuple[float, float]:
    """p50 and p95 in milliseconds of `predict()` on one review, after two warm-up calls."""
    for _ in range(2):
        predict()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), float(np.percentile(times, 95))


def _reference_dataset(bundle: ModelBundle, frame, recipe: ReferenceRecipe) -> datasets.Dataset:
    encoded = bundle.tokenizer(
        frame["text"].tolist(), padding="max_length", truncation=True, max_length=recipe.max_length
    )
    return datasets.Dataset.from_dict({**encoded, "labels": frame["label"].tolist()})


def run_reference(splits: Splits, recipe: ReferenceRecipe, seed: int) -> dict:
    """Train and score the tutorial pipeline; returns throughput, latency, memory and quality."""
    with PeakRSS() as memory:
        bundle = load_bundle(DEFAULT_MODEL, seed=seed)
        started = time.perf_counter()
        set_seed(seed)
        train_set = _reference_dataset(bundle, splits.train, recipe)
        tuned = apply_lora(
            bundle, LoraSettings(r=8, alpha=32, dropout=0.1, target_modules=("query", "value"), top_layers=0)
        )
        with tempfile.TemporaryDirectory(prefix="lora-demo-bench-") as scratch:
            args = TrainingArguments(
                output_dir=scratch,
                num_train_epochs=recipe.epochs,
                per_device_train_batch_size=recipe.batch_size,
                per_device_eval_batch_size=recipe.eval_batch_size,
                learning_rate=recipe.learning_rate,
                save_strategy="no",
                report_to="none",
                disable_tqdm=True,
                seed=seed,
                use_cpu=True,
                remove_unused_columns=False,
            )
            trainer = Trainer(model=tuned.model, args=args, train_dataset=train_set)
            trainer.remove_callback(PrinterCallback)  # the bench prints its own lines
            trainer.train()
            train_seconds = time.perf_counter() - started

            started = time.perf_counter()
            test_set = _reference_dataset(bundle, splits.test, recipe)
            logits = trainer.predict(test_set).predictions
            eval_seconds = time.perf_counter() - started
        predicted = np.asarray(logits).argmax(-1).tolist()
        tuned.model.eval()

        def predict_one():
            batch = tuned.tokenizer(
                [LATENCY_REVIEW],
                padding="max_length",
                truncation=True,
                max_length=recipe.max_length,
                return_tensors="pt",
            )
            with torch.no_grad():
                tuned.model(**batch)

        p50, p95 = latency_ms(predict_one)
    metrics = evaluate_predictions(splits.test["label"].tolist(), predicted)
    return _figures(
        len(splits.train) * recipe.epochs,
        train_seconds,
        len(splits.test),
        eval_seconds,
        p50,
        p95,
        memory.mb,
        metrics,
        asdict(recipe),
    )


def run_ours(splits: Splits, seed: int, config: TrainConfig | None = None) -> dict:
    """Train and score the default recipe (`train_lora` with the config defaults)."""
    config = config or TrainConfig(seed=seed)
    lora = LoraSettings()
    with PeakRSS() as memory:
        bundle = load_bundle(DEFAULT_MODEL, seed=seed)
        tuned, result = train_lora(bundle, splits.train, splits.val, lora, config)
        started = time.perf_counter()
        tuned = serving_copy(tuned)  # part of our evaluation's time
        predictions = classify_texts(tuned, splits.test["text"].tolist(), max_length=config.max_length)
        eval_seconds = time.perf_counter() - started
        p50, p95 = latency_ms(lambda: classify_texts(tuned, [LATENCY_REVIEW], max_length=config.max_length))
    metrics = evaluate_predictions(splits.test["label"].tolist(), predictions.labels)
    recipe = {"lora": asdict(lora), "train_config": asdict(config)}
    return _figures(
        len(splits.train) * config.epochs,
        result.seconds,
        len(splits.test),
        eval_seconds,
        p50,
        p95,
        memory.mb,
        metrics,
        recipe,
    )


def _figures(train_reviews, train_seconds, eval_reviews, eval_seconds, p50, p95, rss_mb, metrics, recipe) -> dict:
    return {
        "train_seconds": round(train_seconds, 2),
        "train_reviews_per_s": round(train_reviews / train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_reviews_per_s": round(eval_reviews / eval_seconds, 2),
        "latency_ms_p50": round(p50, 2),
        "latency_ms_p95": round(p95, 2),
        "peak_rss_mb": round(rss_mb, 1),
        "accuracy": round(metrics["accuracy"], 4),
        "f1": round(metrics["f1"], 4),
        "recipe": recipe,
    }


def run_tfidf(splits: Splits) -> dict:
    """TF-IDF + logistic regression (`ladder.tfidf_predictions`), trained on the same train reviews."""
    started = time.perf_counter()
    predictions = tfidf_predictions(splits.train, splits.test["text"].tolist(), seed=splits.config.seed)
    seconds = time.perf_counter() - started
    metrics = evaluate_predictions(splits.test["label"].tolist(), predictions.labels)
    return {
        "accuracy": round(metrics["accuracy"], 4),
        "f1": round(metrics["f1"], 4),
        "seconds": round(seconds, 2),
        "train_size": len(splits.train),
    }


def run_scaling(base: Splits, sizes, epochs: float) -> list[dict]:
    """Training seconds of the default recipe at growing train sizes, from the same source and seed."""
    from .data import load_splits

    rows = []
    for size in sizes:
        try:
            splits = load_splits(replace(base.config, source=base.source, train_size=size, test_size=2))
        except UserError as err:
            rows.append({"train_size": size, "seconds": None, "skipped": str(err)})
            continue
        bundle = load_bundle(DEFAULT_MODEL, seed=base.config.seed)
        config = TrainConfig(seed=base.config.seed, epochs=epochs)
        _, result = train_lora(bundle, splits.train, splits.val, LoraSettings(), config)
        rows.append({"train_size": size, "epochs": epochs, "seconds": round(result.seconds, 2)})
        del bundle
        gc.collect()
    return rows


def run_bench(source: str | None, quick: bool = False, seed: int = 42, log=print) -> dict:
    """Everything `python -m lora_demo bench` reports, measured side by side in this process.

    Args:
        source: the data source (as `--data`); the same reviews feed every pipeline.
        quick: small sizes and one epoch for the reference: about two minutes instead of about fifteen.
        log: receives one line per finished phase.
    """
    from .data import load_splits

    sizes = (
        dict(train_size=100, val_size=50, test_size=200)
        if quick
        else dict(train_size=500, val_size=200, test_size=1000)
    )
    splits = load_splits(DataConfig(source=source, seed=seed, **sizes))
    report = {"data": splits.summary(), "quick": quick, "threads": torch.get_num_threads()}
    report["tfidf"] = run_tfidf(splits)
    log(f"tfidf: {report['tfidf']}")
    report["reference"] = run_reference(splits, ReferenceRecipe(epochs=1 if quick else 3), seed)
    log(f"reference: {_short(report['reference'])}")
    gc.collect()
    report["ours"] = run_ours(splits, seed)
    log(f"ours: {_short(report['ours'])}")
    gc.collect()
    ref, ours = report["reference"], report["ours"]
    report["ratios"] = {
        "train_throughput": round(ours["train_reviews_per_s"] / ref["train_reviews_per_s"], 2),
        "eval_throughput": round(ours["eval_reviews_per_s"] / ref["eval_reviews_per_s"], 2),
        "latency_p50": round(ref["latency_ms_p50"] / ours["latency_ms_p50"], 2),
        "peak_rss": round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 2),
        "accuracy_gain_over_reference": round(ours["accuracy"] - ref["accuracy"], 4),
        "accuracy_gain_over_tfidf": round(ours["accuracy"] - report["tfidf"]["accuracy"], 4),
    }
    report["scaling"] = run_scaling(splits, (50, 100, 200) if quick else SCALING_SIZES, epochs=1)
    log(f"scaling (1 epoch each): {report['scaling']}")
    return report


def _short(figures: dict) -> dict:
    return {key: value for key, value in figures.items() if key != "recipe"}


def bench_table(report: dict) -> str:
    """The README's table: reference vs ours, and the ratio."""
    ref, ours, tfidf = report["reference"], report["ours"], report["tfidf"]
    rows = [
        ("Training throughput (reviews/s)", "train_reviews_per_s", "{:.1f}"),
        ("Evaluation throughput (reviews/s)", "eval_reviews_per_s", "{:.1f}"),
        ("Single-review latency p50 (ms)", "latency_ms_p50", "{:.1f}"),
        ("Single-review latency p95 (ms)", "latency_ms_p95", "{:.1f}"),
        ("Peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("Training time (s)", "train_seconds", "{:.1f}"),
        ("Accuracy", "accuracy", "{:.3f}"),
        ("F1", "f1", "{:.3f}"),
    ]
    lines = ["| | Reference (tutorial) | Ours (default recipe) | Ours / reference |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        ratio = ours[key] / ref[key] if ref[key] else float("nan")
        lines.append(f"| {name} | {fmt.format(ref[key])} | {fmt.format(ours[key])} | {ratio:.2f}x |")
    lines.append(
        f"| TF-IDF + logistic regression | accuracy {tfidf['accuracy']:.3f}, F1 {tfidf['f1']:.3f}, "
        f"{tfidf['seconds']:.1f} s | | |"
    )
    return "\n".join(lines)
