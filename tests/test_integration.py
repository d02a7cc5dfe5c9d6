"""The bundled MiniLM on real IMDb reviews: zero-shot, one short training run through the CLI, the saved adapter."""

import json

import pytest
from conftest import needs_minilm

from lora_demo.baseline import zero_shot_predict
from lora_demo.cli import main
from lora_demo.compute.models import ModelRef, base
from lora_demo.config import DataConfig
from lora_demo.data import load_splits
from lora_demo.lora import read_adapter_metadata
from lora_demo.models import load_bundle
from lora_demo.study import Study

pytestmark = [needs_minilm]

METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "per_class", "confusion", "prediction_counts", "collapsed"}


@pytest.mark.needs_data
def test_zero_shot_on_clear_and_real_reviews(imdb_dir):
    bundle = base(ModelRef("minilm"))
    clear = zero_shot_predict(
        bundle, ["This movie was amazing! Wonderful acting.", "Terrible acting and a boring plot, a waste of time."]
    )
    assert clear.labels == [1, 0]
    test = load_splits(DataConfig(source=str(imdb_dir), train_size=2, val_size=2, test_size=8, seed=1)).test
    predictions = zero_shot_predict(bundle, test["text"].tolist(), max_length=128)
    assert len(predictions.labels) == 8 and set(predictions.labels) <= {0, 1}
    assert all(0.5 <= c <= 1.0 for c in predictions.confidence)


@pytest.mark.slow
@pytest.mark.needs_data
def test_short_training_run_writes_a_full_report_and_a_working_adapter(imdb_dir, tmp_path, capsys):
    output, report_file = tmp_path / "adapter", tmp_path / "report.json"
    sizes = ["--train-size", "32", "--val-size", "16", "--test-size", "32", "--seed", "7"]
    code = main(
        ["train", "--data", str(imdb_dir), *sizes, "--epochs", "1", "--batch-size", "16", "--max-length", "128",
         "--logging-steps", "1", "--short-windows", "0", "--output", str(output), "--report", str(report_file)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| Baseline (zero-shot) |" in out and "| LoRA fine-tuned |" in out

    report = json.loads(report_file.read_text())
    assert report["model"] == "minilm" and report["model_kind"] == "encoder"
    assert report["data"]["source"] == str(imdb_dir)
    assert report["data"]["sizes"] == {"train": 32, "val": 16, "test": 32}
    comparison = report["comparison"]
    assert comparison["n"] == 32 and comparison["verdict"] in out
    assert comparison["n_fixed"] == len(comparison["fixed"]) and comparison["n_broken"] == len(comparison["broken"])
    # the flips account exactly for the change in accuracy
    gain = (comparison["n_fixed"] - comparison["n_broken"]) / 32
    assert report["finetuned"]["accuracy"] - report["baseline"]["accuracy"] == pytest.approx(gain)
    assert report["data"]["label_counts"]["train"] == {"negative": 16, "positive": 16}
    assert report["lora"] == {
        "r": 8,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["query", "key", "value", "dense"],
        "layers": [3, 4, 5],
    }
    assert report["params"]["trainable"] == 166_658  # see test_lora's count of the default recipe
    assert report["params"]["total"] > 22_000_000
    assert report["params"]["percent"] == pytest.approx(
        100 * report["params"]["trainable"] / report["params"]["total"]
    )
    train = report["train"]
    assert {"seconds", "train_loss", "val_loss", "steps", "history"} <= set(train)
    assert train["steps"] == 2 and train["seconds"] > 0
    assert train["train_loss"] > 0 and train["val_loss"] > 0
    assert [e["type"] for e in train["history"]].count("log") == 2
    for name in ("baseline", "finetuned"):
        metrics = report[name]
        assert METRIC_KEYS <= set(metrics)
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert sum(metrics["prediction_counts"].values()) == 32
        assert sum(map(sum, metrics["confusion"])) == 32
        assert set(metrics["per_class"]) == {"negative", "positive"}
    assert report["baseline"]["accuracy"] > 0.5  # MiniLM's zero-shot is better than chance on IMDb

    # the saved adapter loads onto a fresh MiniLM and reproduces the report's scores
    assert {p.name for p in output.iterdir()} >= {"adapter_model.safetensors", "lora_demo.json"}
    metadata = read_adapter_metadata(output)
    assert metadata["model"] == "minilm" and metadata["train_config"]["max_length"] == 128
    assert metadata["trained_on"]["sizes"] == {"train": 32, "val": 16}
    assert len(metadata["trained_on"]["review_hashes"]) == 48
    study = Study()
    study.load_adapter(output)
    study.load_data(DataConfig(source=str(imdb_dir), train_size=32, val_size=16, test_size=32, seed=7))
    metrics = study.finetuned().metrics
    assert metrics["accuracy"] == report["finetuned"]["accuracy"]
    assert metrics["confusion"] == report["finetuned"]["confusion"]

    code = main(["predict", "--adapter", str(output), "An absolute masterpiece, I loved every minute."])
    out, err = capsys.readouterr()
    assert code == 0, err
    row = json.loads(out)
    assert row["label"] in {"positive", "negative"} and 0.5 <= row["confidence"] <= 1.0


def test_fresh_bundles_are_independent():
    first, second = load_bundle("minilm"), load_bundle("minilm")
    assert first.model is not second.model
    assert (first.model.classifier.weight == second.model.classifier.weight).all()  # seeded head


@pytest.mark.slow
@pytest.mark.native_bf16
def test_the_cli_study_trains_and_serves_in_bf16_where_native(tmp_path, capsys):
    """Where bf16 is native every reported figure comes from bf16 training and a bf16 serving copy: the CLI study
    runs that path (no fp32 stand-in), and its scores are the saved adapter's, reloaded and served again."""
    import torch

    from lora_demo.study import Models

    seen = {"training": [], "serving": []}

    def record(module, inputs, output):
        seen["training" if module.training else "serving"].append((torch.is_autocast_enabled("cpu"), output.dtype))

    def loader(name, seed=42):
        bundle = load_bundle(name, seed=seed)
        for layer in bundle.model.encoder.encoder.layer:  # the top layers train, the bottom ones are cached
            layer.attention.self.query.register_forward_hook(record)
        return bundle

    output, report_file = tmp_path / "adapter", tmp_path / "report.json"
    code = main(
        ["train", "--data", "sample", "--train-size", "48", "--val-size", "16", "--test-size", "48", "--seed", "3",
         "--epochs", "1", "--max-length", "96", "--output", str(output), "--report", str(report_file)],
        models=Models(loader=loader),
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(report_file.read_text())
    steps = report["train"]["steps"]
    assert steps > 0 and report["train"]["train_loss"] > 0
    # every step of the LoRA run under bf16 autocast: 3 adapted layers a step (the rungs and the measured
    # LoRA-vs-full steps after it train without autocast)
    assert seen["training"][: 3 * steps] == [(True, torch.bfloat16)] * (3 * steps), seen["training"][: 3 * steps]
    # the zero-shot and tuned serving copies hold bf16 weights: their products are bf16 whether autocast is on or not
    assert {dtype for _, dtype in seen["serving"]} == {torch.bfloat16}, set(seen["serving"])

    study = Study()  # the saved adapter, loaded and served in bf16 again, gives the report's answers
    study.load_adapter(output)
    study.load_data(DataConfig(source="sample", train_size=48, val_size=16, test_size=48, seed=3))
    assert study.finetuned().metrics["confusion"] == report["finetuned"]["confusion"]
