"""`python -m lora_demo bench`: our default recipe against two references, each pipeline in its own process.

All pipelines train the bundled MiniLM with LoRA on the same reviews and are scored on the same test
reviews (the tutorial one on fewer of them). Two references:

- **same tokens** (the fair one, which decides the accuracy comparison and the like-for-like ratios): the
  same 256 head + tail tokens per review, dynamic padding, length-grouped batches, the head started from the
  zero-shot prototypes, the same epochs; LoRA r 8 on query and value of every layer with dropout 0.1, fp32,
  Trainer defaults otherwise (batch 8, the checkpoint's dropout, no validation).
- **tutorial**: what a LoRA tutorial writes: every review padded to 512 tokens, a random head, no length
  grouping. Padded to 512, every review costs the same, so it trains on fewer reviews: a throughput row.

TF-IDF + logistic regression is what a user would pick instead. Speed is also reported as a share of the
machine's own measured matmul peak (see `lora_demo.measure`).
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import datasets
import numpy as np
import torch
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments, set_seed

from .baseline import SIMILARITY_SCALE, label_prototypes
from .config import DEFAULT_MODEL, DataConfig, LoraSettings, TrainConfig, UserError
from .data import Splits
from .inference import classify_texts, serving_copy
from .ladder import tfidf_predictions
from .lora import apply_lora
from .measure import flop_counter, latency_ms, machine_figures, matmul_gflops, run_isolated
from .metrics import evaluate_predictions
from .models import ModelBundle, encode_head_tail
from .significance import bootstrap_interval
from .train import (
    CachedBottomCollator,
    build_training_args,
    prepare_data,
    tokenize_split,
    train_lora,
    training_examples,
    trains_in_bf16,
    untouched_features,
)

LATENCY_REVIEW = "The acting was fine and the music was lovely, but the plot dragged and I was bored by the end."
REFERENCE_LORA = LoraSettings(r=8, alpha=32, dropout=0.1, target_modules=("query", "value"), top_layers=0)
GOALS = {
    "train_throughput_same_tokens": 2.5,  # at least, x the fair reference
    "eval_throughput_same_tokens": 2.0,  # at least
    "utilization": 0.5,  # at least, share of the matmul peak
    "latency_ms_p50": 10.0,  # at most
}


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one bench run.

    Attributes:
        train_size, val_size, test_size: the reviews every pipeline shares (the tutorial one uses fewer).
        epochs: of ours and of the same-tokens reference alike.
        tutorial_train, tutorial_test, tutorial_epochs: the tutorial reference's throughput run.
        scaling: training-set sizes timed one epoch each with the default recipe.
    """

    train_size: int = 500
    val_size: int = 200
    test_size: int = 1000
    epochs: float = 3
    tutorial_train: int = 96
    tutorial_test: int = 200
    tutorial_epochs: float = 1
    scaling: tuple[int, ...] = (250, 500, 1000, 2000)


FULL_PLAN = BenchPlan()
QUICK_PLAN = BenchPlan(
    train_size=100, val_size=50, test_size=200, epochs=1, tutorial_train=32, tutorial_test=64, scaling=(50, 100)
)


def load_minilm(seed: int) -> ModelBundle:
    """The bench's model: a fresh bundled MiniLM on the device policy's device, as every job loads it (a
    module-level function, so it pickles into subprocesses)."""
    from .compute.models import ModelRef, fresh

    return fresh(ModelRef(DEFAULT_MODEL), seed=seed)


def _scores(y_true, predicted, seed: int) -> dict:
    metrics = evaluate_predictions(list(y_true), list(predicted))
    return {
        "accuracy": round(metrics["accuracy"], 4),
        "accuracy_interval": bootstrap_interval(y_true, predicted, "accuracy", seed),
        "f1": round(metrics["f1"], 4),
        "f1_interval": bootstrap_interval(y_true, predicted, "f1", seed),
    }


def _figures(train_reviews, train_seconds, eval_reviews, eval_seconds, latency, scores, recipe) -> dict:
    return {
        "train_seconds": round(train_seconds, 2),
        "train_reviews": train_reviews,
        "train_reviews_per_s": round(train_reviews / train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_reviews": eval_reviews,
        "eval_reviews_per_s": round(eval_reviews / eval_seconds, 2),
        "latency_ms_p50": round(latency[0], 2),
        "latency_ms_p95": round(latency[1], 2),
        **scores,
        "recipe": recipe,
    }


def _reference_args(scratch: str, epochs: float, seed: int, **extra) -> TrainingArguments:
    """Trainer defaults except what a LoRA tutorial sets: epochs, learning rate 1e-3, no saving or logging."""
    return TrainingArguments(
        output_dir=scratch,
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        use_cpu=True,
        remove_unused_columns=False,
        **extra,
    )


def _train_reference(model, train_set, args, collator=None) -> Trainer:
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # the bench prints its own lines
    trainer.train()
    return trainer


def predict_in_order(trainer: Trainer, dataset: datasets.Dataset) -> np.ndarray:
    """The Trainer's predictions in the dataset's order.

    A Trainer that groups training batches by length groups (and shuffles) evaluation batches too, so its
    `predict` would answer in another order than the reviews'.
    """
    grouped = trainer.args
    trainer.args = copy.copy(grouped)  # `replace` would set up the accelerator again
    trainer.args.train_sampling_strategy = "random"
    try:
        return np.asarray(trainer.predict(dataset).predictions)
    finally:
        trainer.args = grouped


def _merged_fp32(model) -> torch.nn.Module:
    """The adapter merged into a copy of the weights, fp32: how the references are served for latency."""
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged


def _single_review_latency(model, encode) -> tuple[float, float]:
    """Latency of one review, tokenised as `encode` does and never padded."""

    def predict_one():
        ids = torch.tensor([encode(LATENCY_REVIEW)])
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))

    return latency_ms(predict_one)


def run_same_tokens_reference(splits: Splits, plan: BenchPlan, seed: int, loader=None) -> dict:
    """Train and score the fair reference: our tokens, padding and head, the study's LoRA, fp32, Trainer defaults.

    Returns:
        Throughput, latency and quality figures (see `_figures`).
    """
    bundle = (loader or load_minilm)(seed)
    started = time.perf_counter()
    set_seed(seed)
    bundle.model.init_head(label_prototypes(bundle), SIMILARITY_SCALE)
    train_set = tokenize_split(bundle, splits.train, 256)
    tuned = apply_lora(bundle, REFERENCE_LORA)
    collator = DataCollatorWithPadding(bundle.tokenizer)
    with tempfile.TemporaryDirectory(prefix="lora-demo-bench-") as scratch:
        args = _reference_args(scratch, plan.epochs, seed, train_sampling_strategy="group_by_length")
        trainer = _train_reference(tuned.model, train_set, args, collator)
        train_seconds = time.perf_counter() - started
        epochs = trainer.state.epoch  # what was trained, not what was asked
        started = time.perf_counter()
        test_set = tokenize_split(bundle, splits.test, 256)
        order = np.argsort([-n for n in test_set["length"]], kind="stable")  # length-sorted: little padding
        logits = np.empty((len(test_set), 2), dtype=np.float32)
        logits[order] = predict_in_order(trainer, test_set.select(order.tolist()))
        eval_seconds = time.perf_counter() - started
    latency = _single_review_latency(
        _merged_fp32(tuned.model), lambda text: encode_head_tail(bundle.tokenizer, [text], 256)[0]
    )
    recipe = {
        "lora": asdict(REFERENCE_LORA),
        "max_length": 256,
        "batch_size": 8,
        "epochs": epochs,
        "learning_rate": 1e-3,
        "precision": "fp32",
        "padding": "dynamic, length-grouped batches",
        "head": "zero-shot prototypes",
        "serving": "adapter merged, fp32",
    }
    return _figures(
        round(len(splits.train) * epochs),
        train_seconds,
        len(splits.test),
        eval_seconds,
        latency,
        _scores(splits.test["label"].tolist(), logits.argmax(-1).tolist(), seed),
        recipe,
    )


def tutorial_length(bundle: ModelBundle) -> int:
    """512 tokens, or fewer where the model has fewer positions (the tiny test models)."""
    return min(512, getattr(bundle.model.config, "max_position_embeddings", 512))


def _padded_512(bundle: ModelBundle, frame) -> datasets.Dataset:
    length = tutorial_length(bundle)
    encoded = bundle.tokenizer(frame["text"].tolist(), padding="max_length", truncation=True, max_length=length)
    return datasets.Dataset.from_dict({**encoded, "labels": frame["label"].tolist()})


def run_tutorial_reference(splits: Splits, plan: BenchPlan, seed: int, loader=None) -> dict:
    """Train and score the tutorial pipeline on `plan.tutorial_train` reviews: a throughput row.

    Returns:
        Throughput, latency and quality figures; quality is on `plan.tutorial_test` reviews after a short
        training, so it is no accuracy comparison.
    """
    train = splits.train.sample(min(plan.tutorial_train, len(splits.train)), random_state=seed)
    test = splits.test.sample(min(plan.tutorial_test, len(splits.test)), random_state=seed)
    bundle = (loader or load_minilm)(seed)
    started = time.perf_counter()
    set_seed(seed)
    train_set = _padded_512(bundle, train)
    tuned = apply_lora(bundle, REFERENCE_LORA)
    with tempfile.TemporaryDirectory(prefix="lora-demo-bench-") as scratch:
        trainer = _train_reference(tuned.model, train_set, _reference_args(scratch, plan.tutorial_epochs, seed))
        train_seconds = time.perf_counter() - started
        epochs = trainer.state.epoch
        started = time.perf_counter()
        logits = trainer.predict(_padded_512(bundle, test)).predictions
        eval_seconds = time.perf_counter() - started

    def encode(text):
        return bundle.tokenizer(text, truncation=True, max_length=tutorial_length(bundle))["input_ids"]

    latency = _single_review_latency(_merged_fp32(tuned.model), encode)
    recipe = {
        "lora": asdict(REFERENCE_LORA),
        "max_length": tutorial_length(bundle),
        "batch_size": 8,
        "epochs": epochs,
        "learning_rate": 1e-3,
        "precision": "fp32",
        "padding": "every review to 512 tokens, batches in random order",
        "head": "random",
        "serving": "adapter merged, fp32, the single review not padded",
    }
    return _figures(
        round(len(train) * epochs),
        train_seconds,
        len(test),
        eval_seconds,
        latency,
        _scores(test["label"].tolist(), np.asarray(logits).argmax(-1).tolist(), seed),
        recipe,
    )


def run_ours(splits: Splits, plan: BenchPlan, seed: int, loader=None) -> dict:
    """Train and score the default recipe (`train_lora` with the config defaults), then count its FLOPs.

    Returns:
        The figures of `_figures` plus `train_tflop` and `precision` (utilization is computed by the caller
        against the matmul peak it measured).
    """
    config = TrainConfig(seed=seed, epochs=plan.epochs)
    lora = LoraSettings()
    bundle = (loader or load_minilm)(seed)
    tuned, result = train_lora(bundle, splits.train, splits.val, lora, config)
    started = time.perf_counter()
    served = serving_copy(tuned)  # part of our evaluation's time
    predictions = classify_texts(served, splits.test["text"].tolist(), max_length=config.max_length)
    eval_seconds = time.perf_counter() - started
    latency = latency_ms(lambda: classify_texts(served, [LATENCY_REVIEW], max_length=config.max_length))
    bf16 = trains_in_bf16(config)
    figures = _figures(
        len(splits.train) * config.epochs,
        result.seconds,
        len(splits.test),
        eval_seconds,
        latency,
        _scores(splits.test["label"].tolist(), predictions.labels, seed),
        {"lora": asdict(lora), "train_config": asdict(config), "serving": "adapter merged, bf16 where native"},
    )
    flop = count_training_flop(tuned, splits, lora, config, result, bf16)
    return {**figures, "precision": "bf16" if bf16 else "fp32", "train_tflop": significant(flop / 1e12)}


def run_ours_without_bf16(splits: Splits, plan: BenchPlan, seed: int, loader=None) -> dict:
    """`run_ours` as a CPU without fast bf16 runs it: training and serving in fp32 (`LORA_DEMO_BF16=0` in this
    process, which `run_isolated` starts fresh), so that the ratios against the fp32 references can be read for
    another CPU."""
    import os

    os.environ["LORA_DEMO_BF16"] = "0"
    return run_ours(splits, plan, seed, loader)


def count_training_flop(
    tuned: ModelBundle, splits: Splits, lora, config, result, bf16: bool, with_features: bool = False
) -> float:
    """FLOPs of a finished `train_lora` run, counted with torch's `FlopCounterMode` on the same real batches.

    Replays, under the counter: the data preparation (the frozen bottom layers over the training examples,
    sentence windows included, and the validation reviews; with `with_features`, the untouched top layers over
    those states too, for the head-only rung), one epoch of forward and backward passes over the batches the
    Trainer drew (scaled to the steps taken) and the validation passes the run made. FLOPs do not depend on the
    weights, so the trained model stands in for the fresh one.
    """
    examples = training_examples(splits.train, config)
    with flop_counter() as counter:
        train_set, val_set, collator = prepare_data(tuned, examples, splits.val, lora, config.max_length, bf16)
        if with_features and isinstance(collator, CachedBottomCollator):  # as `train_lora(with_features=True)`
            with tuned.model.disable_adapter():  # the run computed them before LoRA was attached
                untouched_features(tuned, [train_set, val_set], collator, False)
    total = counter.get_total_flops()
    with tempfile.TemporaryDirectory(prefix="lora-demo-bench-") as scratch:
        args = build_training_args(config, len(train_set), scratch, seq2seq=False)
        trainer = Trainer(
            model=tuned.model, args=args, train_dataset=train_set, eval_dataset=val_set, data_collator=collator
        )
        batches = trainer.get_train_dataloader()
        evals = sum(1 for event in result.history if event["type"] == "eval")
        tuned.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), flop_counter() as counter:
            for batch in batches:
                tuned.model(**batch).loss.backward()
        tuned.model.zero_grad(set_to_none=True)
        total += counter.get_total_flops() * result.steps / len(batches)
        if evals and val_set is not None:
            tuned.model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                with flop_counter() as counter:
                    for batch in trainer.get_eval_dataloader(val_set):
                        tuned.model(**batch)
            total += counter.get_total_flops() * evals
    return float(total)


def run_tfidf(splits: Splits) -> dict:
    """TF-IDF + logistic regression (`ladder.tfidf_predictions`), trained on the same train reviews."""
    started = time.perf_counter()
    predictions = tfidf_predictions(splits.train, splits.test["text"].tolist(), seed=splits.config.seed)
    seconds = time.perf_counter() - started
    predicted = predictions.labels
    return {
        **_scores(splits.test["label"].tolist(), predicted, 0),
        "seconds": round(seconds, 2),
        "train_size": len(splits.train),
    }


def run_scaling(base: Splits, sizes, seed: int, loader=None) -> list[dict]:
    """Training seconds of the default recipe for one epoch at growing train sizes, from the same source."""
    from .data import load_splits

    rows = []
    for size in sizes:
        try:
            splits = load_splits(replace(base.config, source=base.source, train_size=size, test_size=2))
        except UserError as err:
            rows.append({"train_size": size, "seconds": None, "skipped": str(err)})
            continue
        _, result = train_lora(
            (loader or load_minilm)(seed), splits.train, splits.val, LoraSettings(), TrainConfig(seed=seed, epochs=1)
        )
        rows.append({"train_size": size, "epochs": 1, "seconds": round(result.seconds, 2)})
    return rows


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def compute_ratios(report: dict) -> dict:
    """Ours against each reference and TF-IDF, from the rounded figures the report holds."""
    ours, tutorial, same = report["ours"], report["reference"], report["reference_same_tokens"]
    return {
        "train_throughput": _ratio(ours["train_reviews_per_s"], tutorial["train_reviews_per_s"]),
        "eval_throughput": _ratio(ours["eval_reviews_per_s"], tutorial["eval_reviews_per_s"]),
        "train_throughput_same_tokens": _ratio(ours["train_reviews_per_s"], same["train_reviews_per_s"]),
        "eval_throughput_same_tokens": _ratio(ours["eval_reviews_per_s"], same["eval_reviews_per_s"]),
        "latency_p50_speedup_same_tokens": _ratio(same["latency_ms_p50"], ours["latency_ms_p50"]),
        "peak_rss_same_tokens": _ratio(ours["peak_rss_mb"], same["peak_rss_mb"]),
        "accuracy_gain_over_reference_same_tokens": round(ours["accuracy"] - same["accuracy"], 4),
        "accuracy_gain_over_tfidf": round(ours["accuracy"] - report["tfidf"]["accuracy"], 4),
        **_fp32_ratios(report),
    }


def _fp32_ratios(report: dict) -> dict:
    """Ours with bf16 off against the same-tokens reference (fp32 too), where that run was made."""
    fp32, same = report.get("ours_fp32"), report["reference_same_tokens"]
    if fp32 is None:
        return {}
    return {
        "train_throughput_same_tokens_fp32": _ratio(fp32["train_reviews_per_s"], same["train_reviews_per_s"]),
        "eval_throughput_same_tokens_fp32": _ratio(fp32["eval_reviews_per_s"], same["eval_reviews_per_s"]),
        "latency_p50_speedup_same_tokens_fp32": _ratio(same["latency_ms_p50"], fp32["latency_ms_p50"]),
    }


def check_goals(report: dict) -> dict:
    """Each goal of the bench with its target, the measured value and whether it was met."""
    ratios, ours, same = report["ratios"], report["ours"], report["reference_same_tokens"]
    low = same["accuracy_interval"][0]
    rows = {
        "train_throughput_same_tokens": (
            ratios["train_throughput_same_tokens"],
            ">=",
            GOALS["train_throughput_same_tokens"],
        ),
        "eval_throughput_same_tokens": (
            ratios["eval_throughput_same_tokens"],
            ">=",
            GOALS["eval_throughput_same_tokens"],
        ),
        "utilization": (ours["utilization"], ">=", GOALS["utilization"]),
        "latency_ms_p50": (ours["latency_ms_p50"], "<=", GOALS["latency_ms_p50"]),
        "accuracy_vs_reference_interval": (ours["accuracy"], ">=", low),
    }
    return judged(rows)


def judged(rows: dict[str, tuple]) -> dict:
    """Goals as `name -> (value, ">=" or "<=", target)`, each with its target written out and whether it was met
    (a value that could not be measured, None, is not)."""
    return {
        name: {
            "value": value,
            "target": f"{sign} {target:g}",
            "met": value is not None and (value >= target if sign == ">=" else value <= target),
        }
        for name, (value, sign, target) in rows.items()
    }


def _isolated(log, name: str, function, *args) -> dict:
    """One pipeline in its own process; its peak RSS joins its figures."""
    figures, peak_mb = run_isolated(function, *args)
    figures["peak_rss_mb"] = round(peak_mb, 1)
    log(f"{name}: {_short(figures)}")
    return figures


def run_bench(splits: Splits, plan: BenchPlan = FULL_PLAN, seed: int = 42, loader=None, log=print) -> dict:
    """Everything `python -m lora_demo bench` reports, measured in one run, each pipeline in its own process.

    Args:
        splits: the reviews every pipeline shares.
        plan: sizes and epochs (`FULL_PLAN`, or `QUICK_PLAN` for `--quick`).
        loader: `loader(seed)` returns a fresh model bundle; it must pickle (a module-level function).
        log: receives one line per finished phase.

    Returns:
        The bench.json report: machine, data, tfidf, reference, reference_same_tokens, ours, ratios, goals,
        scaling.
    """
    started = time.perf_counter()
    loader = loader or load_minilm  # resolved in this process, then handed to each pipeline's process
    report = {"machine": machine_figures(), "data": splits.summary(), "plan": asdict(plan)}
    log(f"machine: {report['machine']}")
    report["tfidf"] = run_tfidf(splits)
    log(f"tfidf: {report['tfidf']}")
    report["reference"] = _isolated(log, "reference (tutorial)", run_tutorial_reference, splits, plan, seed, loader)
    report["reference_same_tokens"] = _isolated(
        log, "reference (same tokens)", run_same_tokens_reference, splits, plan, seed, loader
    )
    report["ours"] = _isolated(log, "ours", run_ours, splits, plan, seed, loader)
    if report["ours"]["precision"] == "bf16":  # and as a CPU without fast bf16 would run it
        report["ours_fp32"] = _isolated(log, "ours, bf16 off", run_ours_without_bf16, splits, plan, seed, loader)
    report["machine"]["matmul_gflops_end"] = {
        "fp32": round(matmul_gflops(torch.float32), 1),
        "bf16": round(matmul_gflops(torch.bfloat16), 1),
    }
    add_utilization(report)
    report["ratios"] = compute_ratios(report)
    peaks = report["machine"]["matmul_gflops"]
    report["machine"]["bf16_over_fp32_peak"] = round(peaks["bf16"] / peaks["fp32"], 2)
    report["goals"] = check_goals(report)
    report["scaling"] = run_isolated(run_scaling, splits, plan.scaling, seed, loader)[0] if plan.scaling else []
    log(f"scaling (1 epoch each): {report['scaling']}")
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    return report


def add_utilization(report: dict):
    """Ours' training FLOP/s as a share of the best matmul rate measured in this run, in its precision."""
    ours, machine = report["ours"], report["machine"]
    dtype = ours["precision"]
    peak = max(machine["matmul_gflops"][dtype], machine["matmul_gflops_end"][dtype])
    achieved = ours["train_tflop"] * 1e3 / ours["train_seconds"]
    ours["train_gflops_per_s"] = round(achieved, 1)
    ours["peak_gflops"] = peak
    ours["utilization"] = significant(achieved / peak)
    ours["flop_count"] = (
        "torch.utils.flop_counter.FlopCounterMode on the run's real batches: frozen-layer caching, forward and "
        "backward of every step, validation passes"
    )


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _short(figures: dict) -> dict:
    return {key: value for key, value in figures.items() if key != "recipe"}


def bench_table(report: dict) -> str:
    """The README's table: both references and ours, with our ratios against each."""
    tutorial, same, ours, tfidf = report["reference"], report["reference_same_tokens"], report["ours"], report["tfidf"]
    rows = [
        ("Training throughput (reviews/s)", "train_reviews_per_s", "{:.1f}", False),
        ("Evaluation throughput (reviews/s)", "eval_reviews_per_s", "{:.1f}", False),
        ("Single-review latency p50 (ms)", "latency_ms_p50", "{:.1f}", True),
        ("Single-review latency p95 (ms)", "latency_ms_p95", "{:.1f}", True),
        ("Peak RSS of its process (MB)", "peak_rss_mb", "{:.0f}", True),
        ("Training time (s)", "train_seconds", "{:.1f}", True),
    ]
    lines = [
        "| | Tutorial (512 tokens) | Same tokens | Ours | Ours vs tutorial | Ours vs same tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, key, fmt, lower_is_better in rows:
        ratios = [_times(ours[key], ref[key], lower_is_better) for ref in (tutorial, same)]
        values = " | ".join(fmt.format(p[key]) for p in (tutorial, same, ours))
        lines.append(f"| {name} | {values} | {ratios[0]} | {ratios[1]} |")
    for name, key in (("Accuracy (95% interval)", "accuracy"), ("F1 (95% interval)", "f1")):
        cells = " | ".join(
            f"{p[key]:.3f} [{p[key + '_interval'][0]:.3f}, {p[key + '_interval'][1]:.3f}]"
            for p in (tutorial, same, ours)
        )
        lines.append(f"| {name} | {cells} | | {ours[key] - same[key]:+.3f} |")
    lines.append(
        f"| Training FLOP, utilization | | | {ours['train_tflop']:.2f} TFLOP, "
        f"{ours['train_gflops_per_s']:.0f} GFLOP/s = {100 * ours['utilization']:.0f}% of "
        f"{ours['peak_gflops']:.0f} ({ours['precision']} matmul) | | |"
    )
    fp32 = report.get("ours_fp32")
    if fp32 is not None:
        lines.append(
            f"| Ours with bf16 off (fp32, as a CPU without fast bf16) | | | "
            f"train {fp32['train_reviews_per_s']:.1f} reviews/s, eval {fp32['eval_reviews_per_s']:.1f} reviews/s, "
            f"p50 {fp32['latency_ms_p50']:.1f} ms, accuracy {fp32['accuracy']:.3f} | | "
            f"{_times(fp32['train_reviews_per_s'], same['train_reviews_per_s'], False)} training, "
            f"{_times(fp32['eval_reviews_per_s'], same['eval_reviews_per_s'], False)} evaluation |"
        )
    lines.append(
        f"| TF-IDF + logistic regression | accuracy {tfidf['accuracy']:.3f} [{tfidf['accuracy_interval'][0]:.3f}, "
        f"{tfidf['accuracy_interval'][1]:.3f}], F1 {tfidf['f1']:.3f}, {tfidf['seconds']:.1f} s | | | | |"
    )
    return "\n".join(lines)


def _times(ours: float, ref: float, lower_is_better: bool) -> str:
    """'4.2x faster' style: how many times better ours is (or worse, said so)."""
    if not ours or not ref:
        return "n/a"
    factor = ref / ours if lower_is_better else ours / ref
    return f"{factor:.2f}x" if factor >= 1 else f"{1 / factor:.2f}x worse"


def goals_lines(report: dict) -> list[str]:
    """One line per goal: met or missed, with its figure."""
    return [
        f"{'met   ' if goal['met'] else 'MISSED'} {name}: {goal['value']} (goal {goal['target']})"
        for name, goal in report["goals"].items()
    ]


def load_bench_splits(source: str | None, plan: BenchPlan, seed: int) -> Splits:
    """The reviews of a bench run, from `--data` (the same split rules as every command)."""
    from .data import load_splits

    sizes = {"train_size": plan.train_size, "val_size": plan.val_size, "test_size": plan.test_size}
    return load_splits(DataConfig(source=source, seed=seed, **sizes))
