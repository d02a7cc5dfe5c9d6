"""`python -m lora_demo bench --study-preset`: the original study's preset on a full-size T5-small, timed.

T5 weights cannot be downloaded everywhere, but speed does not depend on the weights: the model here is a
T5-small built from its architecture config (`assets/models/t5-small.json`) with random weights, and the
tokenizer a stand-in (the bundled MiniLM's WordPiece vocabulary, ending each text with `[SEP]` as T5 ends
it with `</s>`; it cuts IMDb reviews into a similar number of tokens). The preset runs through the study API
the app and the CLI call: `Study.baseline`, `Study.train` (`train_lora`), `Study.finetuned`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

from .config import ASSETS_DIR, DataConfig, LoraSettings, TrainConfig, get_model_spec, recipe
from .data import Splits
from .measure import run_isolated
from .models import ModelBundle

STUDY_SIZES = {"train_size": 500, "val_size": 200, "test_size": 100}
STUDY_EPOCHS = 1


def standin_t5_tokenizer():
    """MiniLM's WordPiece tokenizer, reshaped like T5's: no start token, one end token, pad id 0."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from .models import bundled_minilm_path

    bert = AutoTokenizer.from_pretrained(bundled_minilm_path())
    backend = Tokenizer.from_str(bert.backend_tokenizer.to_str())
    end = bert.sep_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {end}", special_tokens=[(end, bert.convert_tokens_to_ids(end))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=bert.pad_token, eos_token=end, unk_token=bert.unk_token
    )


def random_t5_small(seed: int) -> ModelBundle:
    """A full-size T5-small (60.5M parameters) with random weights and the stand-in tokenizer.

    Raises:
        ValueError: if the stand-in vocabulary does not fit T5's embeddings or its pad id differs.
    """
    import torch
    from transformers import AutoConfig, T5ForConditionalGeneration

    spec = get_model_spec("t5-small")
    config = AutoConfig.from_pretrained(ASSETS_DIR / "models" / spec.arch_config)
    tokenizer = standin_t5_tokenizer()
    if len(tokenizer) > config.vocab_size or tokenizer.pad_token_id != config.pad_token_id:
        raise ValueError("the stand-in tokenizer does not fit T5-small's vocabulary and pad id")
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.eval()
    return ModelBundle(spec=spec, model=model, tokenizer=tokenizer)


def before_settings(seed: int) -> tuple[LoraSettings, TrainConfig]:
    """The study preset as it ran before this change: fp32 and two validation passes in its one epoch."""
    lora, config = recipe("study", get_model_spec("t5-small"))
    return lora, replace(config, bf16=False, evals_per_epoch=2, epochs=STUDY_EPOCHS, seed=seed)


def now_settings(seed: int) -> tuple[LoraSettings, TrainConfig]:
    """The study preset as the app sets it now: the `study` recipe, one epoch."""
    lora, config = recipe("study", get_model_spec("t5-small"))
    return lora, replace(config, epochs=STUDY_EPOCHS, seed=seed)


def run_preset(splits: Splits, lora: LoraSettings, config: TrainConfig, loader=random_t5_small) -> dict:
    """Baseline, training and scoring of one preset through the study API the app and the CLI call, timed.

    Returns:
        seconds per phase, the losses, the number of training and validation passes, and the settings.
    """
    from .study import Models, Study
    from .train import trains_in_bf16

    models = Models(loader=lambda name, seed=config.seed: loader(seed), check=lambda spec: None)
    study = Study("t5-small", models)
    study.splits = splits  # as `Study.load_data` leaves them
    started = time.perf_counter()
    study.baseline(max_length=config.max_length)
    baseline_seconds = time.perf_counter() - started
    tuned = study.train(lora, config, recipe="study")
    started = time.perf_counter()
    evaluation = study.finetuned()
    result = tuned.result
    return {
        "baseline_seconds": round(baseline_seconds, 2),
        "train_seconds": round(result.seconds, 2),
        "eval_seconds": round(time.perf_counter() - started, 2),
        "steps": result.steps,
        "validation_passes": sum(1 for e in result.history if e["type"] == "eval"),
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "unmapped_answers": evaluation.metrics["prediction_counts"]["unmapped"],
        "bf16": trains_in_bf16(config),
        "lora": asdict(lora),
        "train_config": asdict(config),
    }


def time_study_preset(splits: Splits, seed: int = 42, loader=random_t5_small, log=print) -> dict:
    """The preset before and now, each in its own process, on the same reviews; and the speed-up.

    Args:
        splits: 500 / 200 / 100 reviews for the real preset (any sizes for a quick check).
        loader: `loader(seed)` returns a fresh T5 bundle; must pickle.

    Returns:
        `before`, `now` (see `run_preset`, plus peak_rss_mb) and `train_speedup`.
    """
    report = {"data": splits.summary(), "model": "t5-small architecture, random weights, stand-in tokenizer"}
    for name, settings in (("before", before_settings(seed)), ("now", now_settings(seed))):
        row, peak_mb = run_isolated(run_preset, splits, *settings, loader)
        report[name] = {**row, "peak_rss_mb": round(peak_mb, 1)}
        log(
            f"{name}: {row['train_seconds']} s training, {row['validation_passes']} validation passes, "
            f"bf16 {row['bf16']}"
        )
    report["train_speedup"] = round(report["before"]["train_seconds"] / report["now"]["train_seconds"], 2)
    return report


def load_study_splits(source: str | None, seed: int) -> Splits:
    """The study's 500 / 200 / 100 reviews from `--data`."""
    from .data import load_splits

    return load_splits(DataConfig(source=source, seed=seed, **STUDY_SIZES))


def preset_table(report: dict) -> str:
    """Before and now, phase by phase."""
    before, now = report["before"], report["now"]
    lines = ["| Study preset, T5-small | Before (fp32, 2 validations) | Now | Before / now |", "|---|---|---|---|"]
    for name, key in (
        ("Zero-shot on test (s)", "baseline_seconds"),
        ("Training (s)", "train_seconds"),
        ("Tuned model on test (s)", "eval_seconds"),
    ):
        lines.append(f"| {name} | {before[key]:.1f} | {now[key]:.1f} | {before[key] / now[key]:.2f}x |")
    losses = [f"{row['train_loss']:.3f} / {row['val_loss']:.3f}" for row in (before, now)]
    lines.append(f"| Training / validation loss | {losses[0]} | {losses[1]} | |")
    return "\n".join(lines)
