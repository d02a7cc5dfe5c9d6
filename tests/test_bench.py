"""The bench on the tiny models: `bench --quick` end to end (schema, ratios, per-process memory), the ablation,
the study-preset timing, the FLOP counter and bf16 against fp32 on the tiny T5."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_tiny_encoder, build_tiny_t5, make_toy_reviews, needs_minilm, sample_reviews

from lora_demo import ablation, bench, cli, measure, preset_timing
from lora_demo.config import DataConfig, LoraSettings, TrainConfig
from lora_demo.data import Splits

FIGURE_KEYS = {
    "train_seconds",
    "train_reviews",
    "train_reviews_per_s",
    "eval_seconds",
    "eval_reviews",
    "eval_reviews_per_s",
    "latency_ms_p50",
    "latency_ms_p95",
    "peak_rss_mb",
    "accuracy",
    "accuracy_interval",
    "f1",
    "f1_interval",
    "recipe",
}


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """`python -m lora_demo bench --quick` on a CSV of toy reviews, the tiny encoder standing in for MiniLM."""
    folder = tmp_path_factory.mktemp("bench")
    data, out = folder / "toy.csv", folder / "bench.json"
    make_toy_reviews(400, seed=5).to_csv(data, index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "load_minilm", build_tiny_encoder)
        code = cli.main(["bench", "--quick", "--data", str(data), "--report", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_quick_bench_report_has_every_key(quick_bench):
    report = quick_bench
    for pipeline in ("reference", "reference_same_tokens", "ours"):
        assert FIGURE_KEYS <= set(report[pipeline]), pipeline
    assert set(report["reference"]) == set(report["reference_same_tokens"])
    assert {"utilization", "train_tflop", "train_gflops_per_s", "precision", "flop_count"} <= set(report["ours"])
    machine = report["machine"]
    assert machine["matmul_gflops"]["fp32"] > 0 and machine["matmul_gflops"]["bf16"] > 0
    for precision in ("fp32", "bf16"):  # the median of the same products is at most their best
        assert 0 < machine["matmul_gflops_typical"][precision] <= machine["matmul_gflops"][precision]
    assert {"cpu_family", "model", "model_name", "threads"} <= set(machine)
    assert set(report["goals"]) == {
        "train_throughput_same_tokens",
        "eval_throughput_same_tokens",
        "utilization",
        "latency_ms_p50",
        "accuracy_vs_reference_interval",
    }
    assert [row["train_size"] for row in report["scaling"]] == list(bench.QUICK_PLAN.scaling)


def test_quick_bench_ratios_are_computed_from_its_figures(quick_bench):
    ours, same, tutorial = quick_bench["ours"], quick_bench["reference_same_tokens"], quick_bench["reference"]
    ratios = quick_bench["ratios"]
    expected = {
        "train_throughput": ours["train_reviews_per_s"] / tutorial["train_reviews_per_s"],
        "eval_throughput": ours["eval_reviews_per_s"] / tutorial["eval_reviews_per_s"],
        "train_throughput_same_tokens": ours["train_reviews_per_s"] / same["train_reviews_per_s"],
        "eval_throughput_same_tokens": ours["eval_reviews_per_s"] / same["eval_reviews_per_s"],
        "latency_p50_speedup_same_tokens": same["latency_ms_p50"] / ours["latency_ms_p50"],
        "peak_rss_same_tokens": ours["peak_rss_mb"] / same["peak_rss_mb"],
        "accuracy_gain_over_reference_same_tokens": ours["accuracy"] - same["accuracy"],
        "accuracy_gain_over_tfidf": ours["accuracy"] - quick_bench["tfidf"]["accuracy"],
    }
    fp32 = quick_bench.get("ours_fp32")
    assert (fp32 is not None) == (ours["precision"] == "bf16")  # bf16 off is measured where bf16 was on
    if fp32 is not None:
        assert fp32["precision"] == "fp32" and FIGURE_KEYS <= set(fp32)
        assert fp32["recipe"]["train_config"] == ours["recipe"]["train_config"]
        expected["train_throughput_same_tokens_fp32"] = fp32["train_reviews_per_s"] / same["train_reviews_per_s"]
        expected["eval_throughput_same_tokens_fp32"] = fp32["eval_reviews_per_s"] / same["eval_reviews_per_s"]
        expected["latency_p50_speedup_same_tokens_fp32"] = same["latency_ms_p50"] / fp32["latency_ms_p50"]
    peaks = quick_bench["machine"]["matmul_gflops"]
    assert quick_bench["machine"]["bf16_over_fp32_peak"] == pytest.approx(peaks["bf16"] / peaks["fp32"], abs=0.006)
    assert set(ratios) == set(expected)
    for name, value in expected.items():
        assert ratios[name] == pytest.approx(value, abs=0.006), name
    goal = quick_bench["goals"]["train_throughput_same_tokens"]
    assert goal["value"] == ratios["train_throughput_same_tokens"] and goal["met"] == (goal["value"] >= 2.5)


def test_quick_bench_is_like_for_like(quick_bench):
    ours, same = quick_bench["ours"], quick_bench["reference_same_tokens"]
    # the same reviews, epochs and tokens per review for ours and the fair reference
    assert ours["train_reviews"] == same["train_reviews"] == 100 * bench.QUICK_PLAN.epochs
    assert ours["eval_reviews"] == same["eval_reviews"] == 200
    assert same["recipe"]["max_length"] == ours["recipe"]["train_config"]["max_length"] == 256
    assert same["recipe"]["epochs"] == ours["recipe"]["train_config"]["epochs"]
    assert quick_bench["reference"]["train_reviews"] == bench.QUICK_PLAN.tutorial_train
    low, high = same["accuracy_interval"]
    assert low <= same["accuracy"] <= high


def test_quick_bench_memory_is_each_pipelines_own_process(quick_bench):
    rss = [quick_bench[name]["peak_rss_mb"] for name in ("reference", "reference_same_tokens", "ours")]
    assert all(value > 50 for value in rss)  # a Python process with torch loaded, never a sampled zero


def test_quick_bench_utilization_is_flops_over_time_over_peak(quick_bench):
    ours, machine = quick_bench["ours"], quick_bench["machine"]
    peak = max(machine["matmul_gflops"][ours["precision"]], machine["matmul_gflops_end"][ours["precision"]])
    assert ours["train_tflop"] > 0
    assert ours["peak_gflops"] == peak
    assert ours["utilization"] == pytest.approx(ours["train_tflop"] * 1e3 / ours["train_seconds"] / peak, rel=0.02)


def test_run_isolated_runs_in_another_process_and_measures_only_that_process():
    ballast = np.ones(2**28 // 8)  # 256 MB held by this process, never by the child
    pid, peak_mb = measure.run_isolated(os.getpid)
    assert pid != os.getpid()
    assert 10 < peak_mb < measure.peak_rss_mb() - 200
    del ballast


def test_flop_counter_counts_cpu_attention():
    tiny = build_tiny_encoder()
    length, width, ff, layers = 12, 32, 64, 2
    ids = torch.randint(5, 30, (3, length))
    with torch.no_grad(), measure.flop_counter() as counter:
        tiny.model.embed(ids, torch.ones_like(ids))
    per_token = 2 * (4 * width * width + 2 * width * ff) + 4 * length * width  # projections, FFN, attention
    assert counter.get_total_flops() == 3 * length * layers * per_token


def test_the_training_flop_count_is_what_the_run_itself_did_sentence_windows_included():
    """The bench replays a finished run's batches under the counter; it must count the run's own training
    examples (reviews and their sentence windows), its epochs and its validation passes: what a counter open
    around the whole run counts."""
    from lora_demo.train import train_lora

    reviews = sample_reviews(64, "train")  # IMDb reviews of several sentences: each gets a window
    splits = Splits(reviews[:48], reviews[48:], reviews[:0], source="sample", config=DataConfig())
    lora, config = LoraSettings(), TrainConfig(epochs=2, batch_size=8, max_length=64, short_windows=1.0, bf16=False)
    with measure.flop_counter() as counter:
        tuned, result = train_lora(build_tiny_encoder(), splits.train, splits.val, lora, config)
    live = counter.get_total_flops()
    assert result.steps == 2 * 12  # 48 reviews and 48 windows, 8 a step
    replayed = bench.count_training_flop(tuned, splits, lora, config, result, bf16=False)
    assert replayed == pytest.approx(live, rel=0.03)


def _toy_splits(train=64, val=16, test=16) -> Splits:
    frames = [make_toy_reviews(n, seed=s) for n, s in ((train, 1), (val, 2), (test, 3))]
    return Splits(*frames, source="toy", config=DataConfig(train_size=train, val_size=val, test_size=test))


def _in_process(function, *args):
    return function(*args), 0.0


def test_ablation_scores_validation_reviews_and_never_test(monkeypatch):
    monkeypatch.setattr(ablation, "run_isolated", _in_process)
    splits = _toy_splits()
    splits.test = pd.DataFrame({"text": [None], "label": [None]})  # any use of the test reviews would fail
    rows = ablation.run_ablation(splits, epochs=1, loader=build_tiny_encoder, log=lambda line: None)
    assert [row["name"] for row in rows] == [step.name for step in ablation.ablation_steps(1)]
    assert all(0.0 <= row["val_accuracy"] <= 1.0 and row["train_seconds"] > 0 for row in rows)
    assert [row["lora"]["dropout"] for row in rows] == [0.1, 0.1, 0.1, 0.0, 0.0]
    assert rows[0]["train_config"]["evals_per_epoch"] == 2 and rows[2]["train_config"]["evals_per_epoch"] == 1
    assert "| Step |" in ablation.ablation_table(rows)


def test_study_preset_timing_compares_before_and_now(monkeypatch):
    monkeypatch.setattr(preset_timing, "run_isolated", _in_process)
    report = preset_timing.time_study_preset(_toy_splits(), loader=build_tiny_t5, log=lambda line: None)
    before, now = report["before"], report["now"]
    assert (before["validation_passes"], now["validation_passes"]) == (2, 1)
    assert before["bf16"] is False
    for row in (before, now):  # the study's LoRA in both
        assert (row["lora"]["r"], row["lora"]["alpha"], row["lora"]["dropout"]) == (8, 32, 0.1)
        assert row["train_config"]["epochs"] == 1 and row["train_config"]["model_dropout"] is None
    assert report["train_speedup"] == round(before["train_seconds"] / now["train_seconds"], 2)
    assert "Before / now" in preset_timing.preset_table(report)


@needs_minilm
def test_random_t5_small_is_full_size_with_a_t5_shaped_tokenizer():
    bundle = preset_timing.random_t5_small(seed=0)
    assert sum(p.numel() for p in bundle.model.parameters()) == 60_506_624  # the study's T5-small
    tokenizer = bundle.tokenizer
    ids = tokenizer("review: a fine film")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.pad_token_id == bundle.model.config.pad_token_id == 0
    for word in ("positive", "negative"):  # one word and the end token, as T5's own tokenizer gives
        assert len(tokenizer(word)["input_ids"]) == 2


def _train_tiny_t5(bf16: bool):
    from lora_demo.inference import classify_texts
    from lora_demo.train import train_lora

    train, val, test = (make_toy_reviews(n, seed=s) for n, s in ((64, 1), (16, 2), (40, 3)))
    lora = LoraSettings(dropout=0.1, target_modules=("q", "v"), top_layers=0)  # the study's LoRA
    config = TrainConfig(epochs=8, batch_size=8, learning_rate=1e-2, bf16=bf16, model_dropout=None, seed=3)
    tuned, result = train_lora(build_tiny_t5(seed=0), train, val, lora, config)
    return result, classify_texts(tuned, test["text"].tolist(), max_length=64).outputs


def test_bf16_training_of_tiny_t5_stays_close_to_fp32():
    fp32, fp32_words = _train_tiny_t5(bf16=False)
    bf16, bf16_words = _train_tiny_t5(bf16=True)
    assert fp32.val_loss < 0.7  # it learned the toy task (its loss starts near 3), so the comparison means something
    # bf16 autocast keeps fp32 weights: measured 0.2% and 0.01% apart; bf16 weights are 0.9% and 2% apart
    assert bf16.train_loss == pytest.approx(fp32.train_loss, rel=0.006)
    assert bf16.val_loss == pytest.approx(fp32.val_loss, rel=0.01)
    same = sum(a == b for a, b in zip(fp32_words, bf16_words)) / len(fp32_words)
    assert same >= 0.95 and not math.isnan(bf16.train_loss)


def test_predict_in_order_answers_in_the_datasets_order_under_length_grouping(tmp_path):
    import datasets
    from transformers import DataCollatorWithPadding, Trainer

    tiny = build_tiny_encoder()
    lengths = [3 + (i * 7) % 11 for i in range(40)]  # unsorted lengths, so a grouped order differs
    ids = [[2] + [5 + (i + k) % 20 for k in range(n)] + [3] for i, n in enumerate(lengths)]
    dataset = datasets.Dataset.from_dict({"input_ids": ids, "labels": [0] * 40, "length": [len(x) for x in ids]})
    args = bench._reference_args(str(tmp_path), 1, 0, train_sampling_strategy="group_by_length")
    trainer = Trainer(model=tiny.model, args=args, data_collator=DataCollatorWithPadding(tiny.tokenizer))
    rows = [torch.tensor([x]) for x in ids]
    expected = [tiny.model(input_ids=r, attention_mask=torch.ones_like(r)).logits[0].detach().numpy() for r in rows]
    assert np.allclose(bench.predict_in_order(trainer, dataset), np.stack(expected), atol=1e-4)
    assert trainer.args.train_sampling_strategy == "group_by_length"  # put back for training


WHOLE_STUDY_STEPS = [
    "load", "zero_shot", "training", "tuned_scoring", "significance", "tfidf", "head_only", "calibration",
    "update_norms", "projection", "short_reviews", "other",
]  # fmt: skip


def test_the_whole_study_timing_names_each_step_its_seconds_and_flops(tiny_encoder_factory, toy_csv):
    """Two visitors on the same data: every step timed and its FLOPs counted as it ran; the second visitor finds
    the untouched model's work (zero-shot, head only) done and trains its own model."""
    from lora_demo.study import Models
    from lora_demo.whole_study_timing import time_whole_study

    models = Models(loader=lambda name, seed=42: tiny_encoder_factory(0), check=lambda spec: None)
    data = DataConfig(train_size=40, val_size=50, test_size=30)  # enough validation reviews to calibrate
    config = TrainConfig(epochs=1, batch_size=16, max_length=32, evals_per_epoch=1)
    figures = time_whole_study(str(toy_csv), seed=1, visitors=2, models=models, data=data, config=config)
    first, second = figures["visitors"]
    assert list(first["steps"]) == WHOLE_STUDY_STEPS and figures["seconds"] == first["seconds"]
    for row in (first, second):
        assert sum(step["seconds"] for step in row["steps"].values()) == pytest.approx(row["seconds"], abs=0.01)
        assert row["training_seconds"] == pytest.approx(row["steps"]["training"]["seconds"], abs=0.01)
        assert row["overhead_ratio"] == pytest.approx(  # (from seconds rounded to hundredths)
            (row["seconds"] - row["training_seconds"]) / row["training_seconds"], rel=0.05
        )
        assert row["tflop"] == pytest.approx(sum(step["tflop"] for step in row["steps"].values()), abs=1e-3)
        assert row["steps"]["training"]["tflop"] > 0
        for name in ("update_norms", "projection", "tfidf", "significance"):
            assert row["steps"][name]["tflop"] == 0, name  # no review goes through a model
    lora_steps = ("tuned_scoring", "calibration", "short_reviews")  # passes through the LoRA model
    assert all(first["steps"][name]["tflop"] > 0 for name in lora_steps)
    assert first["steps"]["zero_shot"]["tflop"] > 0
    assert first["steps"]["head_only"]["tflop"] == 0  # its features came with training's cached layers
    # the untouched model answers every visitor alike: the second finds its passes and its head-only rung done
    assert second["steps"]["zero_shot"]["tflop"] == 0 and second["steps"]["head_only"]["tflop"] == 0
    assert second["accuracy"]["zero_shot"] == first["accuracy"]["zero_shot"]
    # the same data and seed train the same adapter (where training is deterministic): its answers are shared too
    same = second["adapter"] == first["adapter"]
    assert all((second["steps"][name]["tflop"] == 0) == same for name in lora_steps)


def test_the_whole_study_goals_and_table_read_the_figures():
    from lora_demo.bench import goals_lines
    from lora_demo.whole_study_timing import add_utilization, check_goals, whole_study_table

    def visitor(seconds, training, tflop):
        steps = {"zero_shot": {"seconds": seconds - training, "tflop": 0.0}, "training": {"seconds": training,
                 "tflop": tflop}}  # fmt: skip
        row = {"seconds": seconds, "steps": steps, "training_seconds": training, "tflop": tflop,
               "overhead_ratio": (seconds - training) / training}  # fmt: skip
        add_utilization(row, peak_gflops=400.0, typical_gflops=250.0)
        return row

    first, second = visitor(50.0, 40.0, 8.0), visitor(43.0, 40.0, 8.0)
    assert first["utilization"] == pytest.approx(8e3 / (400 * 50)) and first["training_utilization"] == 0.5
    assert first["training_gflops"] == 200.0 and first["training_utilization_typical"] == 0.8
    goals = check_goals({**first, "visitors": [first, second]})
    assert goals["seconds"]["met"] and goals["overhead_ratio"]["met"] is True  # 0.25 at most
    assert goals["training_utilization"]["met"] and goals["second_visitor_extra_seconds"]["value"] == 3.0
    slow = visitor(80.0, 40.0, 8.0)
    missed = check_goals({**slow, "visitors": [slow]})
    assert not missed["seconds"]["met"] and not missed["overhead_ratio"]["met"] and len(missed) == 3
    assert "MISSED seconds: 80.0 (goal <= 60)" in goals_lines({"goals": missed})
    table = whole_study_table({"visitors": [first, second]})
    assert "| zero shot | 10.00 | 20% | 0.000 | 3.00 | 7% | 0.000 |" in table
    assert "| **whole study** | **50.0** | 100% | 8.000 | **43.0** | 100% | 8.000 |" in table


def test_visitors_without_whole_study_is_a_usage_error(capsys):
    assert cli.main(["bench", "--visitors", "2"]) == 2
    assert "--visitors goes with --whole-study" in capsys.readouterr().err


def test_bench_whole_study_writes_its_report_and_prints_the_machine_table_and_goals(monkeypatch, tmp_path, capsys):
    from lora_demo import whole_study_timing

    steps = {"training": {"seconds": 40.0, "tflop": 8.0}, "zero_shot": {"seconds": 10.0, "tflop": 0.0}}
    row = {"seconds": 50.0, "training_seconds": 40.0, "overhead_ratio": 0.25, "tflop": 8.0, "steps": steps}
    whole_study_timing.add_utilization(row, 400.0, 250.0)
    whole = {**row, "visitors": [row], "peak_gflops": 400.0, "typical_gflops": 250.0, "precision": "bf16"}
    whole["goals"] = whole_study_timing.check_goals(whole)
    machine = {"model_name": "Test CPU", "cpu_family": "6", "model": "207", "threads": 2}
    asked = []

    def fake(source, seed, visitors):
        asked.append((source, seed, visitors))
        return {"machine": machine, "whole_study": whole}

    monkeypatch.setattr(whole_study_timing, "run_whole_study_bench", fake)
    report = tmp_path / "b.json"
    assert cli.main(["bench", "--whole-study", "--visitors", "2", "--seed", "3", "--report", str(report)]) == 0
    assert asked == [("sample", 3, 2)] and json.loads(report.read_text())["whole_study"]["seconds"] == 50.0
    out = capsys.readouterr().out
    assert (
        "machine: Test CPU (cpu family 6, model 207), 2 threads, bf16 matmul peak 400 GFLOP/s (median product 250)"
        in out
    )
    assert "training: 200 GFLOP/s, 50% of the peak, 80% of the median product" in out
    assert "| **whole study** | **50.0** |" in out and "met    training_utilization: 0.5 (goal >= 0.5)" in out


def test_the_training_flop_count_includes_the_head_only_features_where_the_run_made_them():
    from lora_demo.train import train_lora

    reviews = sample_reviews(40, "train")
    splits = Splits(reviews[:32], reviews[32:], reviews[:0], source="sample", config=DataConfig())
    lora, config = LoraSettings(), TrainConfig(epochs=1, batch_size=8, max_length=64, short_windows=0.0, bf16=False)
    with measure.flop_counter() as counter:
        tuned, result = train_lora(build_tiny_encoder(), splits.train, splits.val, lora, config, with_features=True)
    live = counter.get_total_flops()
    assert result.untouched_features is not None
    without = bench.count_training_flop(tuned, splits, lora, config, result, bf16=False)
    replayed = bench.count_training_flop(tuned, splits, lora, config, result, bf16=False, with_features=True)
    assert without < replayed == pytest.approx(live, rel=0.03)
