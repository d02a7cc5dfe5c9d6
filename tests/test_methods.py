"""Full fine-tuning and the other PEFT methods beside LoRA: each trains, each is what PEFT builds, the learning
rate is chosen on validation reviews alone, and the comparison (intervals, McNemar, the frontier) adds up."""

import math

import numpy as np
import pytest
import torch
from conftest import make_toy_reviews

from lora_demo import methods as methods_module
from lora_demo.baseline import SIMILARITY_SCALE, label_prototypes
from lora_demo.config import LoraSettings, TrainConfig, UserError, parse_methods
from lora_demo.inference import Predictions, classify_texts
from lora_demo.measure import PeakAllocated, allocated_bytes
from lora_demo.methods import (
    LORAPLUS_RATIO,
    METHODS,
    MethodRun,
    apply_method,
    choose_rate,
    compare_runs,
    method_optimizer,
    pareto_frontier,
    run_method,
)
from lora_demo.train import train_lora

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("query", "key", "value", "dense"), top_layers=1)
T5_LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q", "v"), top_layers=0)
# rates at which each method moves the tiny model within 5 epochs (the real grids are for real models)
TINY_RATES = {"full": 3e-3, "lora": 3e-2, "dora": 3e-2, "rslora": 1e-2, "loraplus": 1e-2, "ia3": 1e-1}
QUICK = TrainConfig(
    epochs=3, batch_size=8, max_length=32, logging_steps=2, evals_per_epoch=1, warmup_ratio=0.0, short_windows=0.0
)


@pytest.fixture(scope="module")
def frames():
    return make_toy_reviews(48, 0), make_toy_reviews(24, 1), make_toy_reviews(24, 2)


def validation_loss(bundle, frame) -> float:
    """Mean cross-entropy of the true labels, from the model's P(positive)."""
    answers = classify_texts(bundle, frame["text"].tolist(), max_length=32)
    p = np.clip(np.asarray(answers.positive), 1e-7, 1 - 1e-7)
    y = frame["label"].to_numpy()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_a_tiny_model_and_lowers_its_validation_loss(method, frames, tiny_encoder_factory):
    train, val, _ = frames
    untouched = tiny_encoder_factory(0)
    untouched.model.init_head(label_prototypes(untouched), SIMILARITY_SCALE)  # where every method's head starts
    before = validation_loss(untouched, val)
    config = TrainConfig(**{**vars(QUICK), "learning_rate": TINY_RATES[method], "epochs": 5})
    tuned, result = train_lora(tiny_encoder_factory(0), train, val, LORA, config, method=method)
    assert result.steps == result.max_steps == 30
    assert result.val_loss < before - 0.05, (method, before, result.val_loss)
    assert validation_loss(tuned, val) == pytest.approx(result.val_loss, abs=1e-3)


@pytest.mark.parametrize("method", ["full", "ia3", "dora"])
def test_the_seq2seq_model_trains_with_each_kind_of_method(method, frames, tiny_t5_factory):
    train, val, _ = frames
    config = TrainConfig(**{**vars(QUICK), "learning_rate": 1e-2, "epochs": 1})
    tuned, result = train_lora(tiny_t5_factory(0), train, val, T5_LORA, config, method=method)
    assert result.steps == 6 and math.isfinite(result.val_loss)
    assert (result.params["trainable"] == result.params["total"]) == (method == "full")


def test_full_fine_tuning_trains_every_weight(frames, tiny_encoder_factory):
    train, val, _ = frames
    bundle = tiny_encoder_factory(0)
    start = {name: p.detach().clone() for name, p in bundle.model.named_parameters()}
    config = TrainConfig(**{**vars(QUICK), "learning_rate": 1e-3, "epochs": 1})
    tuned, result = train_lora(bundle, train, val, LORA, config, method="full")
    assert result.params["trainable"] == result.params["total"] == sum(p.numel() for p in start.values())
    unchanged = [name for name, p in tuned.model.named_parameters() if torch.equal(p.detach(), start[name])]
    assert unchanged == [], "every weight, the frozen bottom layers' and the embeddings' too, trained"


def peft_layers(model, kind):
    return {name: module for name, module in model.named_modules() if isinstance(module, kind)}


def test_ia3_scales_keys_values_and_the_feed_forward_input_of_the_adapted_layers(tiny_encoder_factory):
    from peft.tuners.ia3.layer import Linear as IA3Linear

    tuned = apply_method(tiny_encoder_factory(0), LORA, "ia3")  # the tiny encoder's top layer is layer 1
    layers = peft_layers(tuned.model, IA3Linear)
    assert sorted(name.split("encoder.layer.")[1] for name in layers) == [
        "1.attention.self.key",
        "1.attention.self.value",
        "1.output.dense",
    ]
    feedforward = {name.split(".")[-2]: module.is_feedforward for name, module in layers.items()}
    assert feedforward == {"self": False, "output": True}  # keys and values scale outputs; the FFN its input
    trainable = {name for name, p in tuned.model.named_parameters() if p.requires_grad}
    assert all("ia3_l" in name or "classifier" in name for name in trainable)


def test_dora_and_rslora_are_peft_lora_with_their_switches_on(tiny_encoder_factory):
    from peft.tuners.lora.layer import Linear as LoraLinear

    dora = peft_layers(apply_method(tiny_encoder_factory(0), LORA, "dora").model, LoraLinear)
    assert dora and all(module.use_dora["default"] for module in dora.values())
    assert all(module.lora_magnitude_vector["default"].weight.requires_grad for module in dora.values())
    rslora = peft_layers(apply_method(tiny_encoder_factory(0), LORA, "rslora").model, LoraLinear)
    module = next(iter(rslora.values()))
    assert module.r["default"] == 64 and module.scaling["default"] == pytest.approx(LORA.alpha / math.sqrt(64))
    plain = peft_layers(apply_method(tiny_encoder_factory(0), LORA, "lora").model, LoraLinear)
    assert not any(module.use_dora["default"] for module in plain.values())


def test_lora_plus_gives_the_b_matrices_a_higher_rate(tiny_encoder_factory):
    tuned = apply_method(tiny_encoder_factory(0), LORA, "loraplus")
    optimizer = method_optimizer(tuned.model, "loraplus", TrainConfig(learning_rate=1e-3))
    rates = {
        ("B" if "lora_B" in name else "A"): group["lr"]
        for group in optimizer.param_groups
        for param in group["params"]
        for name, p in tuned.model.named_parameters()
        if p is param and "lora_" in name
    }
    assert rates == {"A": 1e-3, "B": 1e-3 * LORAPLUS_RATIO}
    decays = {group["weight_decay"] for group in optimizer.param_groups if group["params"] and group["lr"] == 1e-3}
    assert decays == {0.01}, "the same weight decay as the Trainer gives the other methods"
    assert method_optimizer(tuned.model, "lora", TrainConfig()) is None


def test_the_learning_rate_is_chosen_on_validation_reviews_and_no_test_review_is_read(
    frames, tiny_encoder_factory, monkeypatch
):
    train, val, test = frames
    seen = []
    real_train, real_classify = methods_module._train_measured, classify_texts

    def train_spy(bundle, frames, method, lora, config, *rest):
        seen.append(("train", config.learning_rate))
        return real_train(bundle, frames, method, lora, config, *rest)

    def classify_spy(bundle, texts, **options):
        seen.append(("score", texts[0]))
        return real_classify(bundle, texts, **options)

    monkeypatch.setattr(methods_module, "_train_measured", train_spy)
    monkeypatch.setattr("lora_demo.inference.classify_texts", classify_spy)

    def fresh():
        return tiny_encoder_factory(0)

    first = run_method(fresh, (train, val), test["text"].tolist(), {}, "ia3", LORA, QUICK)
    rates = list(METHODS["ia3"].rates)
    assert seen[: len(rates)] == [("train", rate) for rate in rates]  # every trial trained before any scoring
    assert [text for what, text in seen if what == "score"] == [test["text"][0]]  # then the test, once
    assert first.chosen_lr == choose_rate(first.trials)["lr"]
    # another test set (its labels flipped, and other reviews): the same trials, the same choice
    other = make_toy_reviews(24, 9).assign(label=lambda frame: 1 - frame["label"])
    second = run_method(fresh, (train, val), other["text"].tolist(), {}, "ia3", LORA, QUICK)
    measured = ("seconds", "memory_mb")  # readings of the machine, not of the reviews

    def strip(trials):
        return [{k: v for k, v in trial.items() if k not in measured} for trial in trials]

    assert strip(first.trials) == strip(second.trials)
    assert second.chosen_lr == first.chosen_lr


def test_choose_rate_prefers_accuracy_then_loss_then_the_lower_rate():
    trials = [
        {"lr": 1e-3, "val_accuracy": 0.8, "val_loss": 0.5},
        {"lr": 3e-4, "val_accuracy": 0.9, "val_loss": 0.6},
        {"lr": 1e-4, "val_accuracy": 0.9, "val_loss": 0.4},
        {"lr": 3e-5, "val_accuracy": 0.9, "val_loss": 0.4},
    ]
    assert choose_rate(trials)["lr"] == 3e-5
    assert choose_rate(trials[:3])["lr"] == 1e-4


def test_parse_methods_keeps_order_and_refuses_unknown_names():
    assert parse_methods("IA3, full,lora,ia3") == ("ia3", "full", "lora")
    with pytest.raises(UserError, match="unknown method prefix: choose from full, lora, dora"):
        parse_methods("lora,prefix")


def fake_run(method, answers, trainable, seconds=10.0, trial_seconds=None):
    predictions = Predictions(labels=list(answers), confidence=[0.9] * len(answers))
    trial_seconds = trial_seconds or [seconds]
    return MethodRun(
        method=method,
        trials=[{"lr": 1e-3, "val_accuracy": 0.8, "val_loss": 0.5, "seconds": s} for s in trial_seconds],
        chosen_lr=1e-3,
        params={"trainable": trainable, "total": 1000},
        shipped_bytes=trainable * 4,
        train_seconds=seconds,
        peak_memory_mb=1.0,
        memory_measured="allocated_above_start",
        test=predictions,
        short={"test": Predictions(labels=[1, 0], confidence=[0.9, 0.9])},
        embedding_shift={"adapter_on": 0.9, "adapter_off": 1.0, "reviews": 2},
        settings={},
    )


def test_the_comparison_counts_each_method_against_lora_and_finds_the_frontier():
    labels = [1, 0] * 50
    lora = fake_run("lora", labels[:80] + [1 - y for y in labels[80:]], 100, trial_seconds=[6.0, 14.0])  # 80 right
    full = fake_run("full", labels, 1000, seconds=40.0)  # all right: fixes LoRA's 20 mistakes
    ia3 = fake_run("ia3", labels[:70] + [1 - y for y in labels[70:]], 10)  # 70 right, fewer parameters
    dora = fake_run("dora", labels[:75] + [1 - y for y in labels[75:]], 120)  # beaten by LoRA on both counts
    result = compare_runs([lora, full, ia3, dora], labels, {"test": [1, 1]}, seed=0)
    rows = result["methods"]
    assert rows["full"]["accuracy"] == 1.0 and rows["full"]["right_where_lora_wrong"] == 20
    assert rows["full"]["p_value_vs_lora"] < 0.001 and rows["lora"]["p_value_vs_lora"] is None
    assert rows["dora"]["p_value_vs_lora"] == pytest.approx(0.0625, abs=1e-4)  # 5 broken, 0 fixed
    low, high = rows["ia3"]["accuracy_interval"]
    assert low < 0.7 < high
    assert rows["ia3"]["short_reviews_accuracy"] == 0.5
    assert result["frontier"] == pareto_frontier(rows) == ["ia3", "lora", "full"]
    assert "LoRA is on it" in result["sentence"] and "full +0.200" in result["sentence"]
    # the unit is the mean of LoRA's runs (10 s), not its chosen run's seconds alone
    assert result["work"]["lora_run_seconds"] == 10.0
    assert result["work"]["lora_runs"] == pytest.approx((6 + 14 + 40 + 10 + 10) / 10)


def test_the_sentence_says_when_lora_is_off_the_frontier():
    labels = [1, 0] * 50
    lora = fake_run("lora", labels[:80] + [1 - y for y in labels[80:]], 100)
    ia3 = fake_run("ia3", labels[:82] + [1 - y for y in labels[82:]], 10)
    result = compare_runs([lora, ia3], labels, {"test": [1, 1]}, seed=0)
    assert result["frontier"] == ["ia3"]
    assert "LoRA is not: ia3 did as well or better" in result["sentence"]
    assert "No method's accuracy differs from LoRA's by more than chance" in result["sentence"]


def test_a_method_that_would_not_fit_in_memory_is_refused_up_front(monkeypatch):
    import psutil

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    available = type("Memory", (), {"available": 400 * 2**20})()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: available)
    methods_module.check_memory("minilm", "lora", LoraSettings())  # a few MB: fits
    with pytest.raises(UserError, match=r"training minilm with full needs about 0\.3 GB .* leave it out"):
        methods_module.check_memory("minilm", "full", LoraSettings())


@pytest.mark.skipif(allocated_bytes() is None, reason="glibc's mallinfo2 is not in this C library")
def test_the_memory_reading_is_what_the_block_allocated_whatever_ran_before():
    """The methods' peak memory is read from the allocator, not from resident memory: an earlier run that left
    freed, fragmented memory behind must not change a later run's reading (it did: 1.5x with RSS)."""
    import time

    def one_run():
        with PeakAllocated() as peak:
            start = peak.peak
            block = torch.ones(16 * 2**20)  # 64 MB, held past a sample
            time.sleep(0.1)
            del block
        return (peak.peak - start) / 2**20

    first = one_run()
    # fragment the heap: many 1 MB pieces (below the mmap threshold once it has risen), every other one kept
    pieces = [torch.ones(2**18) for _ in range(400)]
    kept = pieces[::2]
    del pieces
    after = one_run()
    del kept
    assert 64 <= first < 72 and 64 <= after < 72


REPORT_KEYS = {
    "accuracy",
    "f1",
    "accuracy_interval",
    "p_value_vs_lora",
    "trainable_params",
    "shipped_bytes",
    "train_seconds",
    "peak_memory_mb",
    "short_reviews_accuracy",
    "embedding_shift",
    "chosen_lr",
}


def test_the_cli_compares_methods_and_writes_every_field(capsys, tmp_path, toy_csv, tiny_encoder_factory):
    import json

    from test_cli import TINY_TRAIN, run_cli, tiny_models

    report_file = tmp_path / "r.json"
    code, out, err = run_cli(
        capsys, "train", "--data", str(toy_csv), *TINY_TRAIN, "--epochs", "2", "--methods", "ia3,full",
        "--report", str(report_file), "--no-resources", models=tiny_models(tiny_encoder_factory),
    )  # fmt: skip
    assert code == 0, err
    comparison = json.loads(report_file.read_text())["methods"]
    assert list(comparison["methods"]) == ["lora", "ia3", "full"]  # LoRA always, first: the others face it
    for name, row in comparison["methods"].items():
        assert REPORT_KEYS <= set(row), name
        assert row["chosen_lr"] in row["lr_grid"] == list(METHODS[name].rates)
        assert (
            0 <= row["accuracy"] <= 1 and row["accuracy_interval"][0] <= row["accuracy"] <= row["accuracy_interval"][1]
        )
        assert row["train_seconds"] > 0 and row["shipped_bytes"] > 0 and row["peak_memory_mb"] >= 0
    rows = comparison["methods"]
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"] > rows["lora"]["trainable_params"]
    assert rows["ia3"]["trainable_params"] < rows["lora"]["trainable_params"]
    assert rows["full"]["shipped_bytes"] > 3 * rows["lora"]["shipped_bytes"]  # the whole model against an adapter
    assert rows["full"]["embedding_shift"]["adapter_off"] is None
    assert rows["ia3"]["embedding_shift"]["adapter_off"] == 1.0  # adapter off: the untouched model, exactly
    assert rows["lora"]["p_value_vs_lora"] is None and 0 <= rows["full"]["p_value_vs_lora"] <= 1
    assert comparison["conditions"]["sizes"] == {"train": 64, "val": 16, "test": 40}
    assert "| Method (40 test reviews) | Accuracy (95% interval)" in out and "| ia3 | " in out
    assert comparison["sentence"] in out and "method full: accuracy" in out


def test_an_unknown_method_is_one_line_before_any_work(capsys, toy_csv):
    from test_cli import assert_one_line_error, run_cli

    code, out, err = run_cli(capsys, "train", "--data", str(toy_csv), "--methods", "lora,prompt")
    assert_one_line_error(code, err, "unknown method prompt", "choose from full, lora")
    assert out == ""


def test_methods_run_as_zerogpu_jobs_and_a_method_past_the_cap_is_refused_before_any(
    tiny_encoder_factory, toy_csv, monkeypatch
):
    import zerogpu_stub
    from test_zerogpu import tiny_models

    from lora_demo.compute import runner as runners
    from lora_demo.config import DataConfig
    from lora_demo.study import Study

    monkeypatch.setenv("LORA_DEMO_FAKE_ZEROGPU", "1")
    runners.runner.cache_clear()
    try:
        study = Study(models=tiny_models(tiny_encoder_factory, runners.runner()))
        study.load_data(DataConfig(source=str(toy_csv), train_size=32, val_size=16, test_size=20, seed=1))
        calls = sum(zerogpu_stub.CALLS.values())
        result = study.compare_methods("ia3", LORA, QUICK)
        assert sum(zerogpu_stub.CALLS.values()) == calls + 2  # one call per method, LoRA's and IA3's
        assert result["methods"]["ia3"]["accuracy"] >= 0 and result["methods"]["lora"]["chosen_lr"] > 0
        # a GPU's speed at which LoRA's call fits under the cap and full fine-tuning's (more work) does not
        from lora_demo.compute.jobs import WORK

        splits = study.splits
        args = (
            None,
            (splits.train, splits.val),
            splits.test["text"].tolist(),
            study._short_labels(study._short_sets(splits)),
        )
        lora_work, full_work = (WORK["method"](*args, name, LORA, QUICK) for name in ("lora", "full"))
        assert full_work > lora_work
        cap = runners.DURATION_CAP - runners.DURATION_FLOOR
        monkeypatch.setitem(runners.SECONDS_PER_REVIEW, "minilm", cap / (lora_work * full_work) ** 0.5)
        calls = sum(zerogpu_stub.CALLS.values())
        with pytest.raises(UserError, match=r"this full run would need about \d+ s of GPU time.*leave it out"):
            study.compare_methods("ia3,full", LORA, QUICK)
        assert sum(zerogpu_stub.CALLS.values()) == calls, "nothing ran: the refusal came first"
    finally:
        runners.runner.cache_clear()


def test_stop_ends_the_comparison_and_keeps_the_methods_finished(tiny_encoder_factory, toy_csv):
    from test_zerogpu import tiny_models

    from lora_demo.config import DataConfig
    from lora_demo.study import Study

    study = Study(models=tiny_models(tiny_encoder_factory))
    study.load_data(DataConfig(source=str(toy_csv), train_size=32, val_size=16, test_size=20, seed=1))
    stopped = []

    def stop_after_the_first(name, row):
        stopped.append((name, study.training, study.stop_training()))

    result = study.compare_methods("ia3,full", LORA, QUICK, on_method=stop_after_the_first)
    assert stopped == [("lora", True, True)]  # running when told, and the stop was taken
    assert list(result["methods"]) == ["lora"] and not study.training
    assert study.compare_methods("ia3", LORA, QUICK)["methods"].keys() == {"lora", "ia3"}  # the next one runs


def test_a_method_cut_by_the_platform_is_left_out_with_its_reason_and_the_others_go_on(
    tiny_encoder_factory, toy_csv, monkeypatch
):
    from test_zerogpu import tiny_models

    import lora_demo.compute.jobs as jobs
    from lora_demo.compute.runner import JobAborted
    from lora_demo.config import DataConfig
    from lora_demo.study import Study

    real = jobs.method

    def cut_ia3(ref, frames, test, short, name, *args, **kwargs):
        if name == "ia3":
            raise JobAborted("the method job ran past its 60 s GPU time")
        return real(ref, frames, test, short, name, *args, **kwargs)

    monkeypatch.setattr(jobs, "method", cut_ia3)
    study = Study(models=tiny_models(tiny_encoder_factory))
    study.load_data(DataConfig(source=str(toy_csv), train_size=32, val_size=16, test_size=20, seed=1))
    no_evaluation = TrainConfig(**{**vars(QUICK), "evals_per_epoch": 0})
    result = study.compare_methods("ia3,loraplus", LORA, no_evaluation)
    assert list(result["methods"]) == ["lora", "loraplus"]
    assert result["skipped"] == {"ia3": "the method job ran past its 60 s GPU time"}
    for row in result["methods"].values():  # no evaluation was scheduled: the final models were scored
        assert all(trial["val_accuracy"] is not None and trial["val_loss"] > 0 for trial in row["trials"])
    assert not study.training and not study._busy


def test_the_cli_refuses_methods_under_torchrun_before_any_work(capsys, toy_csv, monkeypatch):
    from test_cli import assert_one_line_error, run_cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = run_cli(capsys, "train", "--data", str(toy_csv), "--methods", "ia3")
    assert_one_line_error(code, err, "--methods runs in one process")
