"""Why LoRA saves resources: measured LoRA vs full fine-tuning steps on a tiny model, and trainable vs r."""

import pytest

from lora_demo import resources
from lora_demo.config import LoraSettings


def test_lora_and_full_fine_tuning_measured_on_the_same_batch(tiny_encoder_factory, toy_reviews):
    lora = LoraSettings(r=4, target_modules=("query", "value"), top_layers=0)
    tiny = lambda name, seed=42: tiny_encoder_factory(0)  # noqa: E731
    result = resources.measure("minilm", lora, toy_reviews[0].head(8), steps=2, max_length=32, loader=tiny)
    assert result["batch"] == {"reviews": 8, "max_length": 32, "steps": 2}
    lora_row, full = result["lora"], result["full"]
    # q and v of 2 layers at hidden 32, r 4, plus the 2-label head
    assert lora_row["trainable"] == 2 * 2 * 4 * (32 + 32) + (32 * 2 + 2)
    assert full["trainable"] == full["total"] and full["percent"] == 100.0
    assert full["saved_mb"] == pytest.approx(full["total"] * 4 / 2**20, abs=1e-3)  # fp32 weights
    assert 0 < lora_row["saved_mb"] < full["saved_mb"]
    assert lora_row["seconds_per_step"] > 0 and full["seconds_per_step"] > 0
    assert result["speedup"] == pytest.approx(full["seconds_per_step"] / lora_row["seconds_per_step"], rel=0.02)


def test_full_fine_tuning_grows_memory_by_its_gradients_and_optimizer_state(toy_reviews):
    """A 200,000-word embedding (6.4M weights, 25.6 MB in fp32) makes full fine-tuning's gradient and AdamW's two
    moments about 77 MB; LoRA trains none of it, so its growth stays a small share of that."""
    from conftest import build_tiny_encoder

    def wide(name, seed=42):
        return build_tiny_encoder(0, vocab_size=200_000)

    lora = LoraSettings(r=4, target_modules=("query", "value"), top_layers=0)
    result = resources.measure("minilm", lora, toy_reviews[0].head(8), steps=2, max_length=32, loader=wide)
    full, lora_row = result["full"]["memory_growth_mb"], result["lora"]["memory_growth_mb"]
    assert full >= 40, f"full fine-tuning grew memory by {full} MB"
    assert lora_row < full / 4, f"LoRA grew memory by {lora_row} MB against full fine-tuning's {full} MB"


def test_trainable_parameters_grow_linearly_with_r():
    rows = resources.trainable_by_rank("t5-small", LoraSettings(), ranks=(4, 8, 16))
    assert [row["trainable"] for row in rows] == [147_456, 294_912, 589_824]
    assert rows[1]["percent"] == pytest.approx(100 * 294_912 / 60_801_536, abs=1e-3)
