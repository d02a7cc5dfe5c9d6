"""CLI: user mistakes are one line on stderr with exit status 2; the commands work offline end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lora_demo import lora
from lora_demo.cli import main
from lora_demo.study import Models

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv, models=None):
    try:
        code = main(list(argv), models=models)
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *phrases):
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0]


@pytest.fixture
def wrong_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["a", "b"], "stars": [1, 9]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("argv", "phrases"),
    [
        (["data", "--data", "/nonexistent/reviews.csv"], ["does not exist"]),
        (["train", "--data", "/nonexistent/reviews.csv"], ["does not exist"]),
        (["params", "--model", "gpt2"], ["invalid choice: 'gpt2'", "minilm"]),
        (["train", "--model", "gpt2"], ["invalid choice"]),
        (["params", "--r", "0"], ["`r` must be a whole number from 1 to 256, got 0"]),
        (["params", "--dropout", "1.5"], ["`dropout`"]),
        (["params", "--r", "eight"], ["invalid int value: 'eight'"]),
        (["train", "--data", "builtin", "--r", "0"], ["`r`"]),
        (["train", "--data", "builtin", "--lr", "-1"], ["`learning_rate`"]),
        (["train", "--data", "builtin", "--lr", "100"], ["`learning_rate`"]),
        (["train", "--data", "builtin", "--dropout", "1.5"], ["`dropout`"]),
        (["train", "--data", "builtin", "--target-modules", "nonexistent"], ["nonexistent do not exist in minilm"]),
        (["train", "--data", "builtin", "--train-size", "100000"], ["holds only 160"]),
        (["data", "--data", "builtin", "--train-size", "1000"], ["holds only 160"]),
        (["data", "--data", "builtin", "--train-size", "1"], ["`train_size` must be an integer of at least 2"]),
        (["predict", "  "], ["empty text"]),
        (["predict", "good film", ""], ["empty text"]),
        (["predict", "--adapter", "/nonexistent/adapter", "good film"], ["does not exist"]),
        (["evaluate", "--data", "builtin", "--adapter", "/nonexistent/adapter"], ["does not exist"]),
        (["params", "--model", "t5-small", "--target-modules", "query"], ["query do not exist in t5-small"]),
        (["params", "--model", "t5-small", "--top-layers", "2"], ["encoder models only"]),
        (["train", "--data", "builtin", "--model", "t5-small"], ["Hugging Face Hub"]),
        (["predict", "--model", "flan-t5-small", "good film"], ["Hugging Face Hub"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        ([], ["required: command"]),
    ],
)
def test_user_mistakes_are_one_line(capsys, argv, phrases):
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *phrases)
    assert out == ""


def test_wrong_columns(capsys, wrong_columns):
    code, _, err = run_cli(capsys, "data", "--data", str(wrong_columns))
    assert_one_line_error(code, err, "reviews.csv has no text or label column")


def test_bad_adapter_folders(capsys, tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    code, _, err = run_cli(capsys, "predict", "--adapter", str(tmp_path), "good film")
    assert_one_line_error(code, err, "refusing to load pickle files")
    (tmp_path / "adapter_model.bin").unlink()
    code, _, err = run_cli(capsys, "predict", "--adapter", str(tmp_path), "good film")
    assert_one_line_error(code, err, "is not a lora_demo adapter")


def test_a_bug_is_one_line_with_status_1(capsys, monkeypatch):
    monkeypatch.delenv("LORA_DEMO_DEBUG", raising=False)
    monkeypatch.setattr(lora, "count_parameters_offline", lambda *a: {}["boom"])
    code, _, err = run_cli(capsys, "params")
    assert code == 1
    assert err.strip() == "error: unexpected KeyError: 'boom' (set LORA_DEMO_DEBUG=1 for the traceback)"


def test_params_t5_small(capsys):
    code, out, err = run_cli(capsys, "params", "--model", "t5-small")
    assert code == 0 and err == ""
    assert out.startswith("model t5-small: 294,912 trainable of 60,801,536 parameters (0.485%)")
    assert "base model 60,506,624" in out


def test_params_with_options(capsys):
    code, out, _ = run_cli(
        capsys, "params", "--model", "t5-small", "--r", "16", "--target-modules", "q", "k", "v", "o"
    )
    assert code == 0
    assert "1,179,648 trainable" in out


def test_data_builtin_prints_a_json_summary(capsys):
    code, out, err = run_cli(capsys, "data", "--data", "builtin")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["source"] == "builtin"
    assert summary["sizes"] == {"train": 44, "val": 17, "test": 89}  # 500 / 200 / 1000, scaled to 160 reviews
    assert summary["label_counts"]["test"]["negative"] + summary["label_counts"]["test"]["positive"] == 89
    assert len(summary["examples"]) == 3 and all(len(e["text"]) <= 120 for e in summary["examples"])
    assert any("fewer reviews" in note for note in summary["notes"])


def test_data_with_explicit_sizes(capsys):
    code, out, _ = run_cli(
        capsys,
        "data",
        "--data",
        "builtin",
        "--train-size",
        "20",
        "--val-size",
        "10",
        "--test-size",
        "100",
        "--seed",
        "1",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["sizes"] == {"train": 20, "val": 10, "test": 100}
    assert summary["seed"] == 1 and summary["notes"] == []


def test_data_falls_back_to_the_imdb_sample_offline(capsys):
    code, out, _ = run_cli(capsys, "data")
    assert code == 0
    summary = json.loads(out)
    assert summary["source"] == "sample"
    assert any("sample of real IMDb" in note for note in summary["notes"])
    # the study's sizes fit the sample: nothing is cut down
    assert summary["sizes"]["train"] == 500 and summary["sizes"]["val"] == 200 and summary["sizes"]["test"] >= 100


def tiny_models(factory) -> Models:
    """The study's models, as tiny ones built from configs: every load gives the same weights, nothing is checked."""
    return Models(loader=lambda name, seed=42: factory(0), check=lambda spec: None)


TINY_TRAIN = [
    "--train-size", "64", "--val-size", "16", "--test-size", "40", "--epochs", "5", "--lr", "0.03",
    "--batch-size", "8", "--max-length", "32", "--r", "8", "--alpha", "16", "--dropout", "0",
    "--warmup-ratio", "0", "--logging-steps", "4", "--evals-per-epoch", "1",
]  # fmt: skip


def test_train_then_predict_and_evaluate_with_the_adapter(capsys, tmp_path, toy_csv, tiny_t5_factory):
    # the tiny T5 stands in for t5-small, which would need the Hub
    models = tiny_models(tiny_t5_factory)
    output, report_file = tmp_path / "adapter", tmp_path / "out" / "report.json"
    code, out, err = run_cli(
        capsys, "train", "--model", "t5-small", "--data", str(toy_csv), *TINY_TRAIN,
        "--target-modules", "q", "k", "v", "o", "wi", "wo", "--output", str(output), "--report", str(report_file),
        models=models,
    )  # fmt: skip
    assert code == 0, err
    assert "step   40  epoch 5.00  train loss" in out
    assert "validation loss" in out
    assert "| Baseline (zero-shot) | " in out
    assert "is distinguishable from chance (McNemar's exact test" in out
    report = json.loads(report_file.read_text())
    assert report["model"] == "t5-small" and report["model_kind"] == "seq2seq"
    assert report["data"]["sizes"] == {"train": 64, "val": 16, "test": 40}
    counts = report["baseline"]["prediction_counts"]  # both label words scored: every review gets one of them
    assert counts["unmapped"] == 0 and counts["negative"] + counts["positive"] == 40
    assert report["finetuned"]["accuracy"] >= 0.85
    assert report["train"]["steps"] == 40 and report["lora"]["target_modules"] == ["q", "k", "v", "o", "wi", "wo"]
    assert report["adapter"] == str(output.resolve())
    assert json.loads((output / "report.json").read_text())["comparison"] == report["comparison"]  # the app lists it
    measured = report["resources"]
    assert measured["lora"]["trainable"] < measured["full"]["trainable"] == measured["full"]["total"]
    assert measured["lora"]["saved_mb"] < measured["full"]["saved_mb"] and measured["full"]["seconds_per_step"] > 0
    assert [row["r"] for row in measured["trainable_by_rank"]] == [1, 2, 4, 8, 16, 32, 64]
    assert "LoRA vs full fine-tuning, measured on 8 reviews" in out

    code, out, err = run_cli(
        capsys, "predict", "--adapter", str(output), "the film was good", "bad plot", models=models
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["text"] for row in rows] == ["the film was good", "bad plot"]
    assert [row["label"] for row in rows] == ["positive", "negative"]
    assert all(0.5 < row["confidence"] <= 1.0 for row in rows)
    assert all(row["sure"] is None for row in rows)  # 16 validation reviews: too few to calibrate, and it says so

    evaluate_report = tmp_path / "eval.json"
    code, out, err = run_cli(
        capsys, "evaluate", "--data", str(toy_csv), "--train-size", "64", "--val-size", "16", "--test-size", "40",
        "--seed", "42", "--adapter", str(output), "--report", str(evaluate_report), models=models,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(evaluate_report.read_text())
    assert result["metrics"] == report["finetuned"]  # same split, same adapter, same scores
    assert json.loads(out)["metrics"]["accuracy"] == report["finetuned"]["accuracy"]


def test_train_refuses_bad_targets_before_training(capsys, toy_csv, monkeypatch, tiny_encoder_factory):
    code, out, err = run_cli(capsys, "train", "--data", str(toy_csv), "--target-modules", "q", "v")
    assert_one_line_error(code, err, "q, v do not exist in minilm")
    assert "step" not in out


def test_entry_point_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "lora_demo", "params", "--model", "t5-small"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "294,912 trainable" in result.stdout


@pytest.mark.slow
def test_entry_point_error_has_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "lora_demo", "params", "--r", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(REPO_ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: `r` must be a whole number from 1 to 256, got 0"]


def test_params_of_the_two_recipes(capsys):
    code, out, _ = run_cli(capsys, "params")
    assert code == 0 and "166,658 trainable" in out  # q, k, v, dense of the top 3 layers
    code, out, _ = run_cli(capsys, "params", "--recipe", "study")
    assert code == 0 and "74,498 trainable" in out  # q and v of every layer
    code, out, _ = run_cli(capsys, "params", "--recipe", "study", "--r", "16")
    assert code == 0 and "148,226 trainable" in out  # flags change the recipe they start from
    code, _, err = run_cli(capsys, "params", "--recipe", "slow")
    assert_one_line_error(code, err, "invalid choice: 'slow'")


def test_train_with_the_study_recipe(capsys, tmp_path, toy_csv, monkeypatch, tiny_encoder_factory):
    from lora_demo import inference

    bundles, training_steps = [], []

    def record_precision(module, inputs, output):
        if module.training:  # a training step, not the evaluation passes
            training_steps.append((torch.is_autocast_enabled("cpu"), output.dtype))

    def tiny(name, seed=42):
        bundles.append(tiny_encoder_factory(0))
        bundles[-1].model.encoder.config.hidden_dropout_prob = 0.1
        for module in bundles[-1].model.encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.1
        bundles[-1].model.encoder.encoder.layer[-1].attention.self.query.register_forward_hook(record_precision)
        return bundles[-1]

    models = Models(loader=tiny)
    monkeypatch.setattr(inference, "fast_bf16", lambda: True)  # a host where the fast recipe would use bf16
    report_file = tmp_path / "report.json"
    code, _, err = run_cli(
        capsys, "train", "--data", str(toy_csv), "--recipe", "study", "--epochs", "1", "--batch-size", "16",
        "--max-length", "32", "--train-size", "64", "--val-size", "16", "--test-size", "40",
        "--report", str(report_file),
        models=models,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert report["lora"] == {
        "r": 8,
        "alpha": 32,
        "dropout": 0.1,
        "target_modules": ["query", "value"],
        "layers": "all",
    }
    # the study keeps the checkpoint's dropout, and trains under bf16 autocast where the CPU runs it natively
    assert {m.p for m in bundles[-1].model.encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    assert len(training_steps) >= 4  # 64 reviews in batches of 16 (and the rungs and measured steps after)
    # the LoRA run's 4 steps come first; the rungs and the measured steps after them train without autocast
    assert training_steps[:4] == [(True, torch.bfloat16)] * 4


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", "--bogus"], "(see `python -m lora_demo train --help`)"),  # found by the top parser
        (["train", "--r", "eight"], "(see `python -m lora_demo train --help`)"),
        (["bogus"], "(see `python -m lora_demo --help`)"),
        ([], "(see `python -m lora_demo --help`)"),
    ],
)
def test_usage_errors_name_the_program_once(argv, hint):
    done = subprocess.run(
        [sys.executable, "-m", "lora_demo", *argv], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.endswith(hint + "\n"), done.stderr
    assert done.stderr.count("lora_demo") == 1, done.stderr
