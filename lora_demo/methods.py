"""Other ways to train the same model, beside LoRA: full fine-tuning and PEFT's other methods, as rungs.

Every method trains the same head on the same training reviews, with the same epochs and schedule as the LoRA
run; only what trains differs (`apply_method`), and for LoRA+ the optimizer (`method_optimizer`). Each method's
learning rate is chosen from its own small grid (`Method.rates`) on the validation reviews alone
(`choose_rate`): PEFT's benchmarks show IA3 wants rates far above LoRA's and full fine-tuning far below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from peft import IA3Config, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from .config import (
    LORAPLUS_RATIO,
    METHODS,
    RSLORA_RANK,
    WEIGHT_DECAY,
    LoraSettings,
    ModelSpec,
    TrainConfig,
    UserError,
)
from .lora import apply_lora, build_lora_config, shipped_bytes
from .models import ModelBundle

# per model kind, IA3's targets as in its paper: keys and values, and the second feed-forward matrix (whose input
# it scales)
IA3_TARGETS = {
    "encoder": (r"attention\.self\.(?:key|value)", r"(?<!attention\.)output\.dense"),
    "seq2seq": (r"(?:SelfAttention|EncDecAttention)\.(?:k|v)", r"DenseReluDense\.wo"),
}


def method_settings(lora: LoraSettings, method: str) -> LoraSettings:
    """The adapter settings `method` trains with: the study's, at rank 64 for rsLoRA, every layer for `full`."""
    if method == "rslora":
        return replace(lora, r=RSLORA_RANK)
    if method == "full":
        return replace(lora, top_layers=0)
    return lora


def apply_method(bundle: ModelBundle, lora: LoraSettings, method: str) -> ModelBundle:
    """`bundle` made ready to train with `method` (PEFT wraps it in place; `full` unfreezes every weight)."""
    spec, settings = bundle.spec, method_settings(lora, method)
    if method == "lora" or method == "loraplus":
        return apply_lora(bundle, settings)
    if method == "full":
        bundle.model.requires_grad_(True)
        return bundle
    if method == "ia3":
        config = ia3_config(settings, spec)
    else:
        config = build_lora_config(settings, spec, use_dora=method == "dora", use_rslora=method == "rslora")
    return replace(bundle, model=get_peft_model(bundle.model, config))


def ia3_config(lora: LoraSettings, spec: ModelSpec) -> IA3Config:
    """IA3 on the layers LoRA adapts: keys, values and the feed-forward output's input (PEFT's own choice of
    modules for BERT and T5), with the encoder's new head trained in full as LoRA's is."""
    attention, feedforward = IA3_TARGETS[spec.kind]
    layers = lora.layers_for(spec)
    where = rf"\.(?:layer|block)\.({'|'.join(map(str, layers))})\." if layers else r"\."
    return IA3Config(
        target_modules=rf".*{where}.*(?:{attention}|{feedforward})$",
        feedforward_modules=rf".*{where}.*{feedforward}$",
        modules_to_save=["classifier"] if spec.kind == "encoder" else None,
        task_type=None if spec.kind == "encoder" else "SEQ_2_SEQ_LM",
    )


def method_optimizer(model: torch.nn.Module, method: str, config: TrainConfig) -> torch.optim.Optimizer | None:
    """LoRA+'s optimizer as PEFT builds it: B matrices (and, PEFT's choice, every 1-D weight: the head's bias) at
    `LORAPLUS_RATIO` times the rate, with the Trainer's weight decay of 0.01 (PEFT's own default is none); None
    lets the Trainer build its AdamW."""
    if method != "loraplus":
        return None
    return create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=config.learning_rate,
        loraplus_lr_ratio=LORAPLUS_RATIO,
        loraplus_weight_decay=WEIGHT_DECAY,
    )


def choose_rate(trials: list[dict]) -> dict:
    """The trial to keep: the best validation accuracy, then the lowest validation loss, then the lower rate.

    Each trial holds `lr`, `val_accuracy` and `val_loss`, all from validation reviews: no test review is read.
    """
    if not trials:
        raise ValueError("no trial to choose from")

    def rank(trial):
        accuracy, loss = trial.get("val_accuracy"), trial.get("val_loss")
        return (-(accuracy if accuracy is not None else -1.0), loss if loss is not None else float("inf"), trial["lr"])

    return min(trials, key=rank)


def check_memory(model: str, method: str, lora: LoraSettings) -> None:
    """Refuse, before it trains, a method whose optimizer state would not fit in the memory free now.

    What training adds beyond the model is mostly the trainable weights' gradients and AdamW's two moments
    (12 bytes a weight in fp32): 0.3 GB for full fine-tuning of minilm, 0.7 GB of T5-small; a PEFT method adds
    a few MB. Half of the free memory is left for activations, the serving copies and other visitors.

    Raises:
        UserError: saying how much it needs and how much is free.
    """
    import psutil

    from .lora import count_parameters_offline

    counts = count_parameters_offline(model, method_settings(lora, method))
    trainable = counts["base_total"] if method == "full" else counts["trainable"]
    needed = trainable * 12
    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0]
    else:
        free = psutil.virtual_memory().available
    if needed > free / 2:
        raise UserError(
            f"training {model} with {method} needs about {needed / 2**30:.1f} GB for its gradients and optimizer "
            f"state, more than half of the {free / 2**30:.1f} GB free now: leave it out of the comparison"
        )


# --- one method, trained at each rate of its grid and scored: the body of the `method` job ----------------------

SHIFT_REVIEWS = 200  # test reviews whose sentence vectors are compared before and after training


@dataclass
class MethodRun:
    """What one method's job returns: plain data (it crosses a process boundary on ZeroGPU).

    Attributes:
        trials: per rate of the grid, `lr`, `val_accuracy`, `val_loss`, `seconds` (validation reviews only).
        chosen_lr: the rate `choose_rate` kept; every figure below is that run's.
        params: trainable and total parameters (`lora.count_parameters`).
        shipped_bytes: the file you would ship: the adapter's safetensors (with the head), or the whole model.
        train_seconds: the chosen run's training, from tokenising to its last step.
        peak_memory_mb: the most memory training held above its start, the lower reading of the grid's runs (the
            same shapes at every rate; the first may also pay caches a process fills once): on a CPU what the C
            allocator handed out (`measure.PeakAllocated`), on a GPU the CUDA memory allocated; `memory_measured`
            says which.
        test: the chosen model's answers to the test reviews.
        short: its answers to each short-review set.
        embedding_shift: mean cosine between the untouched model's sentence vectors of `reviews` test reviews
            and the trained model's, with the adapter on (`adapter_on`) and off (`adapter_off`, None for `full`):
            1.0 means unmoved.
        settings: what trained (the adapter's settings, or `full`).
    """

    method: str
    trials: list[dict]
    chosen_lr: float
    params: dict
    shipped_bytes: int
    train_seconds: float
    peak_memory_mb: float
    memory_measured: str
    test: object  # inference.Predictions
    short: dict
    embedding_shift: dict
    settings: dict


def run_method(
    fresh: Callable[[], ModelBundle],
    frames: tuple,
    test_texts: list[str],
    short_texts: dict[str, list[str]],
    method: str,
    lora: LoraSettings,
    config: TrainConfig,
    stop=None,
) -> MethodRun | None:
    """Train `method` at each rate of its grid on a fresh model, keep the run the validation reviews prefer,
    and score it on the test and short reviews.

    Args:
        fresh: a new copy of the base model, each call (the untouched one's sentence vectors come from one too).
        frames: (training reviews, validation reviews).
        method: a `METHODS` name.
        stop: set it (`is_set()`) to end the training after its current step; the method is then dropped.

    Returns:
        The method's run, or None when `stop` ended it.
    """
    from .inference import classify_texts, serving_copy

    train_frame, val_frame = frames
    if len(val_frame) < 2:
        raise UserError("comparing methods needs validation reviews: each method's learning rate is chosen on them")
    trials, kept = [], None
    for rate in METHODS[method].rates:
        tuned, result, (added, measured) = _train_measured(
            fresh(), frames, method, lora, replace(config, learning_rate=rate), stop
        )
        if stop is not None and stop.is_set():
            return None
        trial = {"lr": rate, **final_validation(tuned, result, val_frame, config.max_length)}
        trials.append({**trial, "seconds": round(result.seconds, 2), "memory_mb": round(added, 1)})
        if choose_rate([trial, kept[0]] if kept else [trial]) is trial:
            kept = (trial, tuned, result)
        del tuned
    trial, tuned, result = kept
    serving = serving_copy(tuned)
    test = classify_texts(serving, list(test_texts), max_length=config.max_length)
    short = {
        name: classify_texts(serving, list(texts), max_length=config.max_length) for name, texts in short_texts.items()
    }
    shift = embedding_shift(fresh(), tuned, list(test_texts)[:SHIFT_REVIEWS], config.max_length)
    return MethodRun(
        method=method,
        trials=trials,
        chosen_lr=trial["lr"],
        params=result.params,
        shipped_bytes=shipped_bytes(tuned.model),
        train_seconds=round(result.seconds, 2),
        # every rate trains the same shapes: the lower reading is the one without the once-per-process caches
        # (the math library's kernels for these shapes) that whichever run came first in this process paid
        peak_memory_mb=min(trial["memory_mb"] for trial in trials),
        memory_measured=measured,
        test=test,
        short=short,
        embedding_shift=shift,
        settings=method_summary(lora, method, tuned.spec),
    )


def final_validation(tuned: ModelBundle, result, val_frame, max_length: int) -> dict:
    """The trained model's `val_accuracy` and `val_loss` on the validation reviews: the Trainer's last evaluation
    where it was at the last step, else scored here (no evaluation was scheduled, or none fell on the end)."""
    import numpy as np

    from .inference import classify_texts

    evals = [event for event in result.history if event["type"] == "eval"]
    if evals and evals[-1]["step"] == result.steps:
        return {"val_accuracy": evals[-1]["val_accuracy"], "val_loss": evals[-1]["val_loss"]}
    answers = classify_texts(tuned, val_frame["text"].tolist(), max_length=max_length)
    labels = val_frame["label"].to_numpy()
    p = np.clip(np.asarray(answers.positive, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        "val_accuracy": float(np.mean(np.asarray(answers.labels) == labels)),
        "val_loss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
    }


def _train_measured(
    bundle: ModelBundle, frames: tuple, method: str, lora: LoraSettings, config: TrainConfig, stop=None
):
    """`train_lora` with `method`, and the most memory it added: (model, result, (MB, how it was measured))."""
    import gc

    from .measure import PeakAllocated, PeakRSS, allocated_bytes
    from .train import train_lora

    on_gpu = next(bundle.model.parameters()).device.type == "cuda"
    gc.collect()
    _give_back_freed_memory()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        tuned, result = train_lora(bundle, *frames, lora, config, method=method, stop_event=stop)
        return tuned, result, ((torch.cuda.max_memory_allocated() - start) / 2**20, "cuda_allocated_above_start")
    # what the C allocator handed out (every tensor), not resident memory: that one counted freed pages an earlier
    # method left behind, so the same method read up to 1.5x more when it ran after full fine-tuning than first
    allocated = allocated_bytes() is not None
    with PeakAllocated() if allocated else PeakRSS() as peak:
        start = peak.peak
        tuned, result = train_lora(bundle, *frames, lora, config, method=method, stop_event=stop)
    return (
        tuned,
        result,
        ((peak.peak - start) / 2**20, "allocated_above_start" if allocated else "process_rss_above_start"),
    )


def _give_back_freed_memory() -> None:
    """Return the C allocator's freed pages to the system (glibc), so a run's resident memory above its start
    counts what it allocates, not less because an earlier run's freed memory was still held."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: the reading may undercount, never overcount
        pass


def embedding_shift(untouched: ModelBundle, tuned: ModelBundle, texts: list[str], max_length: int) -> dict:
    """How far training moved the model's sentence vectors of `texts` (test reviews: never trained on).

    The vectors are the ones the head reads (`anatomy.pooled_embeddings`): a fresh copy of the untouched model's
    against the trained model's with its adapter on and, for a PEFT method, off; all three on the same weights'
    precision and the same kernels, so an unmoved vector reads exactly 1.
    """
    import numpy as np
    from peft import PeftModel

    from .anatomy import pooled_embeddings

    def mean_cosine(a, b) -> float:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        return round(float(cos.mean()), 4)

    before = pooled_embeddings(untouched, texts, max_length)
    on, off = mean_cosine(before, pooled_embeddings(tuned, texts, max_length)), None
    if isinstance(tuned.model, PeftModel):
        with tuned.model.disable_adapter():
            off = mean_cosine(before, pooled_embeddings(tuned, texts, max_length))
    return {"adapter_on": on, "adapter_off": off, "reviews": len(texts)}


def method_summary(lora: LoraSettings, method: str, spec: ModelSpec) -> dict:
    """What `method` trained, as the report keeps it."""
    from .lora import lora_summary

    if method == "full":
        return {"method": "full", "trains": "every weight"}
    if method == "ia3":
        layers = lora.layers_for(spec) or "all"
        attention, feedforward = IA3_TARGETS[spec.kind]
        return {"method": "ia3", "target_modules": [attention, feedforward], "layers": layers}
    summary = lora_summary(method_settings(lora, method), spec)
    extra = {"loraplus_lr_ratio": LORAPLUS_RATIO} if method == "loraplus" else {}
    return {"method": method, **summary, **extra}


# --- the comparison, from the jobs' plain results: the report's `methods` ------------------------------------------

STATED_BUDGET = 16  # the whole comparison on 2 vCPUs, in LoRA runs of the same reviews (README: measured)


def compare_runs(runs: list[MethodRun], labels, short_labels: dict[str, list[int]], seed: int = 0) -> dict:
    """Every method scored on the same test reviews, each against LoRA, and the Pareto frontier of accuracy
    against trainable parameters.

    Args:
        runs: one `MethodRun` per method, LoRA's among them for the p-values.
        labels: the test reviews' labels.
        short_labels: each short-review set's labels, as `MethodRun.short` holds its answers.

    Returns:
        `methods` (per method: accuracy, f1, their 95% bootstrap intervals, `p_value_vs_lora` (McNemar's exact
        test on the reviews the two answered differently), trainable_params, shipped_bytes, train_seconds,
        peak_memory_mb, short_reviews_accuracy, embedding_shift, chosen_lr and the trials it was chosen from),
        `frontier`, `sentence`, `n` and `work` (all trials' training in LoRA runs: the mean of LoRA's trials).
    """
    from .metrics import evaluate_predictions
    from .significance import bootstrap_interval, flips, mcnemar_exact

    labels = [int(y) for y in labels]
    lora = next((run for run in runs if run.method == "lora"), None)
    rows = {}
    for run in runs:
        answers = run.test.labels
        metrics = evaluate_predictions(labels, answers)
        p_value, better, worse = None, None, None
        if lora is not None and run is not lora:
            changed = flips(labels, lora.test.labels, answers)
            better, worse = len(changed["fixed"]), len(changed["broken"])
            p_value = mcnemar_exact(better, worse)
        short = {
            name: round(evaluate_predictions(short_labels[name], predictions.labels)["accuracy"], 4)
            for name, predictions in run.short.items()
        }
        rows[run.method] = {
            "description": METHODS[run.method].description,
            "accuracy": round(metrics["accuracy"], 4),
            "f1": round(metrics["f1"], 4),
            "accuracy_interval": bootstrap_interval(labels, answers, "accuracy", seed),
            "f1_interval": bootstrap_interval(labels, answers, "f1", seed),
            "p_value_vs_lora": None if p_value is None else round(p_value, 4),
            "right_where_lora_wrong": better,
            "wrong_where_lora_right": worse,
            "trainable_params": run.params["trainable"],
            "total_params": run.params["total"],
            "shipped_bytes": run.shipped_bytes,
            "train_seconds": run.train_seconds,
            "peak_memory_mb": run.peak_memory_mb,
            "memory_measured": run.memory_measured,
            "short_reviews_accuracy": short.get("test"),
            "imdb_sentences_accuracy": short.get("imdb_sentences"),
            "embedding_shift": run.embedding_shift,
            "chosen_lr": run.chosen_lr,
            "lr_grid": [trial["lr"] for trial in run.trials],
            "trials": run.trials,
            "settings": run.settings,
        }
    frontier = pareto_frontier(rows)
    trained = sum(trial["seconds"] for run in runs for trial in run.trials)
    # the unit: LoRA's runs at its grid's rates, averaged (one run's seconds carry the machine's swings alone)
    lora_run = sum(trial["seconds"] for trial in lora.trials) / len(lora.trials) if lora and lora.trials else None
    return {
        "n": len(labels),
        "methods": rows,
        "frontier": frontier,
        "sentence": frontier_sentence(rows, frontier),
        "work": {
            "train_seconds_all_trials": round(trained, 1),
            "lora_run_seconds": None if lora_run is None else round(lora_run, 1),
            "lora_runs": round(trained / lora_run, 1) if lora_run else None,
            "budget_lora_runs": STATED_BUDGET,
        },
    }


def pareto_frontier(rows: dict[str, dict]) -> list[str]:
    """The methods no other beats on both counts (as accurate or more with as few trainable parameters or
    fewer, better on one), from fewest parameters to most."""

    def beaten(name):
        a = rows[name]
        return any(
            b["accuracy"] >= a["accuracy"]
            and b["trainable_params"] <= a["trainable_params"]
            and (b["accuracy"] > a["accuracy"] or b["trainable_params"] < a["trainable_params"])
            for other, b in rows.items()
            if other != name
        )

    return sorted((name for name in rows if not beaten(name)), key=lambda name: rows[name]["trainable_params"])


def frontier_sentence(rows: dict[str, dict], frontier: list[str]) -> str:
    """Which methods are on the frontier and whether LoRA is, and which differences from LoRA are more than
    chance on these reviews (McNemar, p < 0.05), in one or two sentences."""
    on = ", ".join(
        f"{name} ({rows[name]['accuracy']:.3f}, {rows[name]['trainable_params']:,} parameters)" for name in frontier
    )
    sentence = f"On accuracy against trainable parameters the frontier is {on}"
    if "lora" in rows:
        if "lora" in frontier:
            sentence += "; LoRA is on it."
        else:
            lora = rows["lora"]
            above = [
                name
                for name in frontier
                if rows[name]["accuracy"] >= lora["accuracy"]
                and rows[name]["trainable_params"] <= lora["trainable_params"]
            ]
            sentence += f"; LoRA is not: {', '.join(above)} did as well or better with as few parameters or fewer."
        real = [
            name for name, row in rows.items() if row["p_value_vs_lora"] is not None and row["p_value_vs_lora"] < 0.05
        ]
        if real:
            parts = [f"{name} {rows[name]['accuracy'] - rows['lora']['accuracy']:+.3f}" for name in real]
            sentence += f" Against LoRA, more than chance (McNemar p < 0.05): {', '.join(parts)}."
        else:
            sentence += " No method's accuracy differs from LoRA's by more than chance here (McNemar p >= 0.05)."
    else:
        sentence += "."
    return sentence
