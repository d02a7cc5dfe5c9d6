"""`python -m lora_demo bench --ablation`: where the default recipe's speed comes from, one change at a time.

Each step keeps the changes before it and adds one; each trains a fresh MiniLM in its own process on the
same reviews and is scored on the **validation** reviews (choices are read there, never on test).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import LoraSettings, TrainConfig
from .data import Splits
from .measure import run_isolated
from .significance import bootstrap_interval


@dataclass(frozen=True)
class AblationStep:
    """One row of the table: a name and the settings it trains with."""

    name: str
    lora: LoraSettings
    config: TrainConfig


def ablation_steps(epochs: float = 3, seed: int = 42) -> list[AblationStep]:
    """From a careful fp32 recipe to the default one, one change at a time; then the default on every layer."""
    start = TrainConfig(epochs=epochs, seed=seed, bf16=False, model_dropout=None, evals_per_epoch=2)
    with_dropout = LoraSettings(dropout=0.1)
    bf16 = TrainConfig(epochs=epochs, seed=seed, bf16=None, model_dropout=None, evals_per_epoch=2)
    default = TrainConfig(epochs=epochs, seed=seed)
    return [
        AblationStep("fp32, the checkpoint's dropout, LoRA dropout 0.1, 2 validations per epoch", with_dropout, start),
        AblationStep("+ bf16 autocast where native", with_dropout, bf16),
        AblationStep("+ no dropout inside the model, 1 validation per epoch", with_dropout, default),
        AblationStep("+ no LoRA dropout (= the default recipe)", LoraSettings(), default),
        AblationStep("the default recipe on all 6 layers (nothing cached)", LoraSettings(top_layers=0), default),
    ]


def train_step(step: AblationStep, splits: Splits, loader) -> dict:
    """Train one step's recipe and score it on the validation reviews."""
    from .inference import classify_texts, serving_copy
    from .train import train_lora, trains_in_bf16

    tuned, result = train_lora(loader(step.config.seed), splits.train, splits.val, step.lora, step.config)
    predicted = classify_texts(serving_copy(tuned), splits.val["text"].tolist(), max_length=step.config.max_length)
    labels = splits.val["label"].tolist()
    accuracy = sum(int(p == y) for p, y in zip(predicted.labels, labels)) / len(labels)
    return {
        "name": step.name,
        "train_seconds": round(result.seconds, 2),
        "val_accuracy": round(accuracy, 4),
        "val_accuracy_interval": bootstrap_interval(labels, predicted.labels, "accuracy", step.config.seed),
        "bf16": trains_in_bf16(step.config),
        "lora": asdict(step.lora),
        "train_config": asdict(step.config),
    }


def run_ablation(splits: Splits, epochs: float = 3, seed: int = 42, loader=None, log=print) -> list[dict]:
    """Every step of `ablation_steps`, in order, each in a fresh process.

    Args:
        splits: the reviews; training uses `train`, scoring `val` (the test reviews are never touched).
        loader: `loader(seed)` returns a fresh model bundle (default: the bundled MiniLM); must pickle.
        log: receives one line per step.

    Returns:
        One row per step: name, train_seconds, val_accuracy and its 95% interval, and the settings.
    """
    from . import bench

    rows = []
    for step in ablation_steps(epochs, seed):
        row, peak_mb = run_isolated(train_step, step, splits, loader or bench.load_minilm)
        rows.append({**row, "peak_rss_mb": round(peak_mb, 1)})
        log(f"{row['name']}: {row['train_seconds']} s, validation accuracy {row['val_accuracy']}")
    return rows


def ablation_table(rows: list[dict]) -> str:
    """The README's table: one change per row, training time and validation accuracy."""
    lines = ["| Step | Training (s) | Validation accuracy (95% interval) |", "|---|---|---|"]
    for row in rows:
        low, high = row["val_accuracy_interval"]
        lines.append(
            f"| {row['name']} | {row['train_seconds']:.1f} | {row['val_accuracy']:.3f} [{low:.3f}, {high:.3f}] |"
        )
    return "\n".join(lines)
