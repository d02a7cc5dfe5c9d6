"""ZeroGPU's contract, through the stand-in (`tests/zerogpu_stub.py`): every job runs in a forked worker with its
arguments and results pickled across, so the study works only from what the jobs return; a job past its duration
ends in one clear message and the session keeps what it had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import zerogpu_stub
from conftest import REPO_ROOT, needs_minilm

from lora_demo.compute import runner as runners
from lora_demo.config import DataConfig, LoraSettings, TrainConfig, UserError

LORA = LoraSettings(r=4, target_modules=("query", "value"))
TINY = TrainConfig(epochs=1, batch_size=16, max_length=32, logging_steps=1)


def write_into(box: list, value):
    box.append(value)  # what a job must not do: its caller never sees this


def count_up_to(n: int):
    yield from range(n)


def sleep_for(seconds: float):
    time.sleep(seconds)
    return "woke"


def unpicklable():
    return lambda: None


def test_a_job_that_writes_into_its_argument_instead_of_returning_loses_its_result():
    box = []
    assert zerogpu_stub.GPU(write_into)(box, 42) is None
    assert box == [], "the worker's change to its argument stayed in the worker"
    write_into(box, 42)  # the same function in this process does change it: the stand-in is what differs
    assert box == [42]


def test_values_cross_as_pickles_and_a_generator_streams():
    assert list(zerogpu_stub.GPU(count_up_to)(4)) == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="ZeroGPU worker error: PicklingError|AttributeError"):
        zerogpu_stub.GPU(unpicklable)()


def test_a_call_past_its_duration_is_cut():
    started = time.monotonic()
    with pytest.raises(zerogpu_stub.GPUTaskAborted, match="past its duration of 1 s"):
        zerogpu_stub.GPU(sleep_for, duration=lambda seconds: 1)(30)
    assert time.monotonic() - started < 10
    assert zerogpu_stub.GPU(sleep_for, duration=5)(0.1) == "woke"


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in runner, as `LORA_DEMO_FAKE_ZEROGPU=1` makes it."""
    monkeypatch.setenv("LORA_DEMO_FAKE_ZEROGPU", "1")
    runners.runner.cache_clear()
    yield runners.runner()
    runners.runner.cache_clear()


def tiny_models(factory, runner=None):
    from lora_demo.study import Models

    return Models(loader=lambda name, seed=42: factory(0), check=lambda spec: None, runner=runner)


def test_the_study_gives_the_same_answers_in_workers_as_in_this_process(stand_in, tiny_encoder_factory, toy_csv):
    """Every job of the study crosses the boundary (nothing is kept from a job's objects), with the same results."""
    from lora_demo.study import Study

    reports = {}
    for where, runner in (("here", runners.Runner()), ("workers", stand_in)):
        study = Study(models=tiny_models(tiny_encoder_factory, runner))
        study.load_data(DataConfig(source=str(toy_csv), train_size=64, val_size=16, test_size=40, seed=1))
        reports[where] = study.run(LORA, TINY).to_dict()
        baseline, tuned = study.classify(["good film", "bad film"])
        reports[where]["classify"] = (baseline.labels, tuned.labels, [round(c, 4) for c in tuned.confidence])
    here, workers = reports["here"], reports["workers"]
    for rung in ("baseline", "head_only", "finetuned"):
        assert workers[rung]["accuracy"] == pytest.approx(here[rung]["accuracy"], abs=0.01), rung
    assert workers["classify"][:2] == here["classify"][:2]
    assert workers["train"]["steps"] == here["train"]["steps"]
    assert here["runtime"]["jobs_in_workers"] == 0 and here["runtime"]["runner"] == "in-process"
    assert workers["runtime"]["runner"] == "zerogpu stand-in" and workers["runtime"]["jobs_in_workers"] >= 6


def test_stop_reaches_the_worker_and_keeps_the_partly_trained_model(stand_in, tiny_encoder_factory, toy_csv):
    from lora_demo.study import Study, Trained
    from lora_demo.train import TrainEvent

    study = Study(models=tiny_models(tiny_encoder_factory, stand_in))
    study.load_data(DataConfig(source=str(toy_csv), train_size=64, val_size=16, test_size=40, seed=1))
    long_run = TrainConfig(epochs=20, batch_size=2, max_length=32, logging_steps=1)
    for event in study.train_steps(LORA, long_run):
        if isinstance(event, TrainEvent) and event.type == "progress" and event.step >= 2:
            study.stop_training()
        elif isinstance(event, Trained):
            tuned = event.tuned
    assert tuned.result.stopped and 2 <= tuned.result.steps < tuned.result.max_steps
    assert study.tuned is tuned and study.finetuned().metrics["n"] == 40  # scored in another worker


def test_a_job_past_its_duration_ends_in_a_clear_message_and_the_study_keeps_its_state(
    stand_in, tiny_encoder_factory, toy_csv, monkeypatch
):
    from lora_demo.study import Study

    study = Study(models=tiny_models(tiny_encoder_factory, stand_in))
    study.load_data(DataConfig(source=str(toy_csv), train_size=64, val_size=16, test_size=40, seed=1))
    study.train(LORA, TINY)
    tuned, accuracy = study.tuned, study.finetuned().metrics["accuracy"]
    import lora_demo.compute.jobs

    monkeypatch.setattr(lora_demo.compute.jobs, "classify", lambda *args, **kwargs: time.sleep(60))
    monkeypatch.setattr(runners, "duration", lambda name, args, kwargs: 2)
    study.models.runner = runners.WorkerRunner(zerogpu_stub.GPU, name="zerogpu stand-in")
    started = time.monotonic()
    with pytest.raises(runners.JobAborted, match=r"the classify job ran past its 2 s GPU time .*nothing of this"):
        study.classify(["good film"])
    assert time.monotonic() - started < 15
    assert study.tuned is tuned and study.finetuned().metrics["accuracy"] == accuracy  # kept, scores too


def test_a_request_beyond_the_gpu_cap_is_refused_before_it_starts(
    stand_in, tiny_encoder_factory, toy_csv, monkeypatch
):
    from lora_demo.study import Study

    monkeypatch.setitem(runners.SECONDS_PER_REVIEW, "minilm", 0.1)  # 20 epochs of 128 examples: 288 s asked

    study = Study(models=tiny_models(tiny_encoder_factory, stand_in))
    study.load_data(DataConfig(source=str(toy_csv), train_size=64, val_size=16, test_size=40, seed=1))
    calls = dict(zerogpu_stub.CALLS)
    huge = TrainConfig(epochs=20, batch_size=16, max_length=32)
    with pytest.raises(UserError, match=r"more than the 120 s a ZeroGPU call may take: use fewer training reviews"):
        study.train(LORA, huge)
    assert zerogpu_stub.CALLS == calls and not study.training  # nothing started


def test_a_users_mistake_in_a_worker_keeps_its_message(stand_in, tiny_encoder_factory):
    from lora_demo.compute.models import ModelRef, register_loader
    from lora_demo.lora import AdapterWeights

    ref = ModelRef("minilm", register_loader(lambda name, seed=42: tiny_encoder_factory(0)))
    weights_of_another_model = AdapterWeights.of("t5-small", LORA, {}, {})
    with pytest.raises(UserError, match="this adapter belongs to t5-small, not minilm"):
        stand_in.call("score", ref, weights_of_another_model, ["good film"], 32)


@needs_minilm
@pytest.mark.slow
@pytest.mark.needs_data
def test_the_cli_study_under_the_stand_in_reports_its_jobs(imdb_dir, tmp_path):
    report = tmp_path / "report.json"
    env = {**os.environ, "LORA_DEMO_FAKE_ZEROGPU": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lora_demo", "train", "--data", str(imdb_dir), "--train-size", "48", "--val-size",
         "16", "--test-size", "48", "--epochs", "1", "--seed", "7", "--max-length", "96", "--no-resources",
         "--report", str(report)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runtime = json.loads(report.read_text())["runtime"]
    assert runtime["runner"] == "zerogpu stand-in" and runtime["jobs_in_workers"] >= 3
    assert runtime["device"] == "cpu" and runtime["dtype"] in ("bfloat16", "float32")
