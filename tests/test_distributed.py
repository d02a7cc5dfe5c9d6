"""Scale-out on the Trainer's own engine: `torchrun` runs the same `train` command data-parallel (gloo on CPU)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, needs_minilm


@pytest.mark.slow
@needs_minilm
def test_torchrun_trains_data_parallel_and_saves_one_adapter(tmp_path):
    output, report_file = tmp_path / "adapter", tmp_path / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lora_demo", "train", "--data", "builtin", "--train-size", "32", "--val-size", "8",
        "--test-size", "8", "--epochs", "1", "--batch-size", "8", "--max-length", "64", "--short-windows", "0",
        "--output", str(output), "--report", str(report_file),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # 32 reviews, 8 per rank and step, 2 ranks: 2 steps; only rank 0 prints the table and saves
    assert done.stdout.count("| LoRA fine-tuned |") == 1
    report = json.loads(report_file.read_text())
    assert report["train"]["steps"] == 2
    saved = {p.name for p in output.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "lora_demo.json"} <= saved
    assert not [name for name in saved if name.endswith((".bin", ".pt"))]  # the same safetensors format

    review = "A wonderful, moving film."

    def predict(*options):
        done = subprocess.run(
            [sys.executable, "-m", "lora_demo", "predict", *options, review],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # the saved adapter answers, as the same adapter loaded here does, and not as the zero-shot model
    from lora_demo.study import Study

    study = Study("minilm")
    study.load_adapter(str(output))
    _, tuned = study.classify([review])
    with_adapter, zero_shot = predict("--adapter", str(output)), predict()
    assert with_adapter["label"] == tuned.label_names()[0]
    assert with_adapter["confidence"] == pytest.approx(float(tuned.confidence[0]), abs=0.02)
    assert (with_adapter["label"], with_adapter["confidence"]) != (zero_shot["label"], zero_shot["confidence"])
