"""The scripts that write the shipped IMDb sample and the IMDb test endings."""

from __future__ import annotations

import importlib.util
import os

import pandas as pd
import pytest
from conftest import REPO_ROOT


def load_script(name: str = "make_imdb_sample"):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_imdb(tmp_path):
    """A full-size-like copy: rows sorted by label, as the real files are."""
    folder = tmp_path / "imdb"
    folder.mkdir()
    for split in ("train", "test"):
        rows = [{"text": f"{split} review {i}", "label": int(i >= 50)} for i in range(100)]
        pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet")
    return folder


def test_sample_is_balanced_shuffled_seeded_and_reproducible(fake_imdb, tmp_path):
    script = load_script()
    out = tmp_path / "out"
    assert (
        script.main(["--imdb", str(fake_imdb), "--output", str(out), "--train-size", "20", "--test-size", "10"]) == 0
    )
    train, test = (pd.read_parquet(out / f"{split}.parquet") for split in ("train", "test"))
    assert list(train.columns) == ["text", "label"] and len(train) == 20 and len(test) == 10
    assert train["label"].sum() == 10 and test["label"].sum() == 5
    assert train["text"].str.startswith("train").all() and test["text"].str.startswith("test").all()
    assert train["label"].tolist() != sorted(train["label"].tolist())  # shuffled, not sorted by label
    first = (out / "train.parquet").read_bytes()
    script.main(["--imdb", str(fake_imdb), "--output", str(out), "--train-size", "20", "--test-size", "10"])
    assert (out / "train.parquet").read_bytes() == first
    script.main(
        ["--imdb", str(fake_imdb), "--output", str(out), "--train-size", "20", "--test-size", "10", "--seed", "11"]
    )
    assert not pd.read_parquet(out / "train.parquet")["text"].equals(train["text"])


def test_missing_source_is_refused(tmp_path, capsys):
    assert load_script().main(["--imdb", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "holds no train.parquet" in capsys.readouterr().err


@pytest.mark.needs_data
def test_shipped_sample_is_what_the_script_writes(imdb_dir, tmp_path):
    load_script().main(["--imdb", str(imdb_dir), "--output", str(tmp_path)])
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.parquet").read_bytes() == (
            REPO_ROOT / "assets" / "imdb-sample" / f"{split}.parquet"
        ).read_bytes()


def test_the_gpu_check_without_cuda_exits_2_with_one_line():
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run (scripts/gpu_check.py)")
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: no CUDA GPU is visible here") and len(done.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.needs_minilm
def test_the_gpu_check_fails_when_a_model_runs_on_the_cpu(tmp_path):
    """Its rehearsal on a few reviews runs both studies through the study API on the CPU, so the check must fail
    and name the device its models were on."""
    import json
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the rehearsal would place the models on it")
    report = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--rehearse", "--report", str(report)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = json.loads(report.read_text())
    assert [row["models_off_gpu"] for row in rows] == [["cpu"], ["cpu"]]
    assert all(row["device"] == "cpu" and row["steps"] > 0 and row["wall_seconds"] > 0 for row in rows)
    assert "models off the GPU: ['cpu']" in done.stdout


@pytest.mark.needs_data
def test_the_imdb_test_endings_are_what_the_script_writes_from_test_reviews_only(imdb_dir, tmp_path):
    """Each row is the last 1-3 sentences of the IMDb *test* review it names, with that review's label, and the
    shipped file is byte for byte what the script writes."""
    import json

    from lora_demo.augment import split_sentences
    from lora_demo.data import IMDB_SENTENCES_FILE, clean_text

    script = load_script("make_imdb_sentences")
    assert script.main(["--imdb", str(imdb_dir), "--output", str(tmp_path / "endings.jsonl")]) == 0
    assert (tmp_path / "endings.jsonl").read_bytes() == IMDB_SENTENCES_FILE.read_bytes()
    rows = [json.loads(line) for line in IMDB_SENTENCES_FILE.read_text(encoding="utf-8").splitlines()]
    test = pd.read_parquet(imdb_dir / "test.parquet", columns=["text", "label"])
    assert len(rows) == 240 and sum(row["label"] for row in rows) == 120
    assert len({row["review"] for row in rows}) == 240
    for row in rows:
        review = clean_text(test["text"].iat[row["review"]])
        assert row["label"] == int(test["label"].iat[row["review"]])
        assert review.endswith(row["text"]) and 1 <= len(split_sentences(row["text"])) <= 3
        assert 6 <= len(row["text"].split()) <= 60
    train = set(pd.read_parquet(imdb_dir / "train.parquet", columns=["text"])["text"].map(clean_text))
    assert not any(row["text"] in train for row in rows)


def test_the_methods_table_gives_means_and_ranges_and_leaves_out_resident_memory_readings():
    script = load_script("methods_table")

    def report(accuracy, memory, measured):
        row = {
            "accuracy": accuracy,
            "f1": accuracy,
            "p_value_vs_lora": None,
            "trainable_params": 166_658,
            "shipped_bytes": 2**20,
            "train_seconds": 80.0,
            "peak_memory_mb": memory,
            "memory_measured": measured,
            "short_reviews_accuracy": 0.8,
            "embedding_shift": {"adapter_on": 0.75, "adapter_off": 1.0},
            "chosen_lr": 1e-3,
        }
        return {"methods": {"methods": {"lora": row}}}

    seeds = [report(0.85, 400.0, "allocated_above_start"), report(0.87, 420.0, "allocated_above_start")]
    allocated = script.table(seeds)
    assert "| lora | 0.860 (0.850-0.870) |" in allocated and "| 410 (400-420) |" in allocated
    resident = script.table([report(0.85, 3300.0, "process_rss_above_start")])  # carried the runs before it
    assert "| 80 | – | 0.800 |" in resident
