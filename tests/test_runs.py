"""Runs shared by the CLI and the app: listed from their reports, looked up by listed name only."""

import json
import os

import pytest
from conftest import needs_minilm

from lora_demo.config import UserError
from lora_demo.lora import METADATA_FILE
from lora_demo.runs import list_runs, new_run_name, run_folder, runs_root, saving_enabled


def make_run(root, name, accuracy=0.8, model="minilm", mtime=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / METADATA_FILE).write_text(json.dumps({"model": model}))
    (folder / "report.json").write_text(json.dumps({"model": model, "finetuned": {"accuracy": accuracy, "f1": 0.7}}))
    if mtime:
        os.utime(folder / "report.json", (mtime, mtime))
    return folder


def test_lists_runs_with_a_report_newest_first(tmp_path):
    make_run(tmp_path, "older", 0.7, mtime=1_000)
    make_run(tmp_path, "newer", 0.9, mtime=2_000)
    (tmp_path / "no-report").mkdir()
    broken = make_run(tmp_path, "broken")
    (broken / "report.json").write_text("{not json")
    (tmp_path / "linked").symlink_to(tmp_path / "newer")
    (tmp_path / "file.txt").write_text("x")
    runs = list_runs(tmp_path)
    assert [run["name"] for run in runs] == ["newer", "older"]
    assert runs[0]["accuracy"] == 0.9 and runs[0]["model"] == "minilm"
    assert list_runs(tmp_path / "missing") == []


@pytest.mark.parametrize("name", ["../etc", "/etc/passwd", "newer/../older", "linked", "no-report", ""])
def test_only_listed_names_resolve(tmp_path, name):
    make_run(tmp_path, "newer")
    (tmp_path / "no-report").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "newer")
    assert run_folder("newer", tmp_path) == tmp_path / "newer"
    with pytest.raises(UserError, match="no saved run called"):
        run_folder(name, tmp_path)


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LORA_DEMO_RUNS", raising=False)
    monkeypatch.delenv("LORA_DEMO_SAVE_RUNS", raising=False)
    assert str(runs_root()) == "runs" and saving_enabled() is False  # off unless the operator says so
    monkeypatch.setenv("LORA_DEMO_RUNS", str(tmp_path))
    monkeypatch.setenv("LORA_DEMO_SAVE_RUNS", "1")
    assert runs_root() == tmp_path and saving_enabled() is True
    name = new_run_name("app")
    assert name.startswith("app-") and all(c.isalnum() or c == "-" for c in name)


@needs_minilm
def test_the_app_loads_a_saved_run_for_classify(tmp_path, monkeypatch):
    from dataclasses import asdict

    from lora_demo.config import LoraSettings, TrainConfig
    from lora_demo.data import SplitRecord, review_hash
    from lora_demo.lora import apply_lora, lora_summary, save_adapter
    from lora_demo.models import load_bundle
    from lora_demo.ui.classify import classify
    from lora_demo.ui.runs import load_run, run_choices
    from lora_demo.ui.session import SessionData

    monkeypatch.setenv("LORA_DEMO_RUNS", str(tmp_path))
    bundle = apply_lora(load_bundle("minilm"), LoraSettings())
    metadata = {
        "lora": lora_summary(LoraSettings(), bundle.spec),
        "train_config": asdict(TrainConfig()),
        "trained_on": SplitRecord(
            "builtin", 1, {"train": 1, "val": 1}, frozenset({review_hash("A review.")})
        ).to_dict(),
    }
    folder = save_adapter(bundle, tmp_path / "cli-run", metadata)
    (folder / "report.json").write_text(json.dumps({"model": "minilm", "finetuned": {"accuracy": 0.87, "f1": 0.86}}))
    assert run_choices() == [("cli-run (minilm, accuracy 0.870)", "cli-run")]
    session = SessionData()
    assert "Loaded the saved run `cli-run`" in load_run("cli-run", session)
    baseline, lora, _ = classify("A wonderful, moving film.", session)
    assert lora is not None and set(lora) == {"positive", "negative"}
    with pytest.raises(UserError, match="no saved run called '../cli-run'"):
        load_run("../cli-run", session)
    with pytest.raises(UserError, match="choose a saved run first"):
        load_run(None, session)
