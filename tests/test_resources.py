"""Why LoRA saves resources: measured LoRA vs full fine-tuning steps on a tiny model, and trainable vs r."""

import pytest

from lora_demo import resources
from lora_demo.config import LoraSettings


def test_lora_and_full_fine_tuning_measured_on_the_same_batch(tiny_encoder_factory, toy_reviews):
    lora = LoraSettings(r=4, target_modules=("query", "value"), top_layers=0)
    tiny = lambda name, seed=42: tiny_encoder_factory(0)  # noqa: E731
    result = resources.measure("minilm", lora, toy_reviews[0].head(8), steps=2, max_length=32, loader=tiny)
    assert result["batch"] == {"reviews": 8, "max_length": 32, "steps": 2, "warmup": 2}
    lora_row, full = result["lora"], result["full"]
    # q and v of 2 layers at hidden 32, r 4, plus the 2-label head
    assert lora_row["trainable"] == 2 * 2 * 4 * (32 + 32) + (32 * 2 + 2)
    assert full["trainable"] == full["total"] and full["percent"] == 100.0
    assert full["saved_mb"] == pytest.approx(full["total"] * 4 / 2**20, abs=1e-3)  # fp32 weights
    assert 0 < lora_row["saved_mb"] < full["saved_mb"]
    assert lora_row["seconds_per_step"] > 0 and full["seconds_per_step"] > 0
    assert result["speedup"] == pytest.approx(full["seconds_per_step"] / lora_row["seconds_per_step"], rel=0.02)
    for row in (lora_row, full):
        (fastest, slowest), (low, high) = row["seconds_range"], row["seconds_middle_half"]
        assert fastest <= low <= row["seconds_per_step"] <= high <= slowest
    assert isinstance(result["within_noise"], bool)


def test_warm_up_steps_are_timed_but_left_out_and_the_spread_is_the_measured_steps(
    monkeypatch, tiny_encoder_factory, toy_reviews
):
    """The first steps pay for allocations once: with a slow warm-up left out, the median and the spread are the
    measured steps'; overlapping middle halves are within noise, apart ones are not."""
    measured = iter(
        [
            [5.0, 5.0, 0.10, 0.20, 0.30, 0.40],  # LoRA: two slow warm-up steps, then 0.1..0.4
            [5.0, 5.0, 0.15, 0.25, 0.35, 0.45],  # full: overlaps LoRA's
            [5.0, 5.0, 0.10, 0.11, 0.12, 0.13],  # LoRA again
            [5.0, 5.0, 0.30, 0.31, 0.32, 0.33],  # full, well apart
        ]
    )
    monkeypatch.setattr(resources, "_steps", lambda model, batch, steps: next(measured)[:steps])
    lora = LoraSettings(r=4, target_modules=("query", "value"), top_layers=0)
    tiny = lambda name, seed=42: tiny_encoder_factory(0)  # noqa: E731
    close = resources.measure("minilm", lora, toy_reviews[0].head(8), steps=4, max_length=32, loader=tiny)
    assert close["lora"]["seconds_per_step"] == pytest.approx(0.25)
    assert close["lora"]["seconds_range"] == [0.1, 0.4]
    assert close["lora"]["seconds_middle_half"] == [pytest.approx(0.175), pytest.approx(0.325)]
    assert close["speedup"] == pytest.approx(0.30 / 0.25, abs=0.01) and close["within_noise"] is True
    apart = resources.measure("minilm", lora, toy_reviews[0].head(8), steps=4, max_length=32, loader=tiny)
    assert apart["speedup"] == pytest.approx(0.315 / 0.115, abs=0.01) and apart["within_noise"] is False


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


def test_the_panel_says_when_the_step_times_are_within_noise():
    from lora_demo.ui.train import resources_markdown

    def row(median, low, high, trainable):
        return {
            "trainable": trainable,
            "percent": 100 * trainable / 22_000_000,
            "seconds_per_step": median,
            "seconds_middle_half": [low, high],
            "memory_growth_mb": 50.0,
            "saved_mb": 0.6,
        }

    result = {
        "lora": row(0.20, 0.18, 0.23, 150_000),
        "full": {**row(0.22, 0.21, 0.25, 22_000_000), "saved_mb": 86.0},
        "batch": {"reviews": 8, "max_length": 128, "steps": 8, "warmup": 2},
        "speedup": 1.1,
        "size_ratio": 143.3,
        "within_noise": True,
    }
    shown = resources_markdown("minilm", result)
    assert "0.200 s (0.180-0.230)" in shown and "median of 8 steps after 2 warm-up steps" in shown
    assert "within the machine's noise" in shown and "as fast here" not in shown
    apart = resources_markdown("minilm", {**result, "speedup": 2.5, "within_noise": False})
    assert "**2.50x** as fast here" in apart and "noise" not in apart
    slower = resources_markdown("minilm", {**result, "speedup": 0.8, "within_noise": False})
    assert "slower here (**1.25x** the time" in slower
