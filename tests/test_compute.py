"""Compute as pure jobs: the device policy, the process's model caches, the stop flag and the jobs' boundary."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from lora_demo.cache import Cache
from lora_demo.compute import device as device_policy
from lora_demo.compute.models import ModelRef, register_loader
from lora_demo.compute.stop import RunStop, StopFlag
from lora_demo.config import LoraSettings, TrainConfig, UserError


def test_the_cache_loads_each_key_once_and_keeps_no_failure():
    calls, cache = [], Cache()

    def make(key):
        def load():
            calls.append(key)
            time.sleep(0.05)
            return object()

        return load

    threads = [threading.Thread(target=cache.get, args=("t5", make("t5"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("t5", make("t5")) is cache.get("t5", make("t5"))
    assert calls == ["t5"]

    def broken():
        raise UserError("offline")

    for _ in range(2):  # asked again: tried again, not a cached failure
        with pytest.raises(UserError):
            cache.get("flan", broken)


def test_a_cache_with_a_budget_drops_the_oldest_past_it_and_always_keeps_the_newest():
    cache = Cache(budget=10, weigh=len)
    cache.get("a", lambda: "aaaa")
    cache.get("b", lambda: "bbbb")
    cache.get("a", lambda: "never made")  # used again: now the newest
    cache.get("c", lambda: "cccc")  # 12 > 10: the least recently used ("b") goes
    assert len(cache) == 2 and cache.get("b", lambda: "made again") == "made again"
    cache.get("d", lambda: "d" * 30)  # alone over the budget: kept, the others go
    assert len(cache) == 1 and cache.get("d", lambda: "never made") == "d" * 30
    cache.drop(lambda key: key == "d")
    assert len(cache) == 0


def test_peek_makes_nothing_and_put_replaces_within_the_budget():
    cache = Cache(budget=10, weigh=len)
    assert cache.peek("a") is None and len(cache) == 0
    cache.put("a", "aaaa")
    cache.put("a", "aaaaaa")  # replaced: weighed once
    assert cache.peek("a") == "aaaaaa" and cache.weight == 6
    cache.put("b", "bbbb")
    cache.peek("a")  # used again: "b" is now the least recently used
    cache.put("c", "cc")  # 12 > 10
    assert cache.peek("b") is None and cache.weight == 8


def test_a_slow_load_of_one_model_never_holds_up_another():
    cache, started = Cache(), threading.Event()

    def slow():
        started.set()
        time.sleep(1.0)
        return "t5"

    loading = threading.Thread(target=cache.get, args=("t5", slow))
    loading.start()
    started.wait()
    began = time.monotonic()
    assert cache.get("minilm", lambda: "minilm") == "minilm"
    assert time.monotonic() - began < 0.5  # served while the other one loads
    loading.join()


def test_the_cache_keeps_at_most_its_size_dropping_the_least_recently_used():
    cache = Cache(size=2)
    for key in ("a", "b"):
        cache.get(key, lambda key=key: key.upper())
    cache.get("a", lambda: "never made")  # "a" is now the most recently used
    cache.get("c", lambda: "C")
    made = []
    cache.get("b", lambda: made.append("b") or "B")
    assert made == ["b"]  # "b" was dropped, "a" kept


def test_the_device_policy_follows_the_environment(monkeypatch):
    monkeypatch.delenv("LORA_DEMO_DEVICE", raising=False)
    import torch

    assert device_policy.device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LORA_DEMO_DEVICE", "cpu")
    assert device_policy.device().type == "cpu"
    monkeypatch.setenv("LORA_DEMO_DEVICE", "tpu")
    with pytest.raises(UserError, match="LORA_DEMO_DEVICE must be one of cpu, cuda"):
        device_policy.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LORA_DEMO_DEVICE", "cuda")
        with pytest.raises(UserError, match="no CUDA GPU"):
            device_policy.device()


def test_bf16_can_be_turned_off_from_the_environment(monkeypatch):
    monkeypatch.setattr(device_policy, "_cpu_bf16", lambda: True)  # a CPU with AMX or AVX-512 BF16
    monkeypatch.setenv("LORA_DEMO_DEVICE", "cpu")
    monkeypatch.delenv("LORA_DEMO_BF16", raising=False)
    assert device_policy.bf16_native()
    monkeypatch.setenv("LORA_DEMO_BF16", "1")
    assert device_policy.bf16_native()
    monkeypatch.setenv("LORA_DEMO_BF16", "0")
    assert not device_policy.bf16_native()
    monkeypatch.setenv("LORA_DEMO_BF16", "fp32")
    with pytest.raises(UserError, match="LORA_DEMO_BF16 must be 0"):
        device_policy.bf16_native()


def test_a_stop_flag_crosses_a_pickle_and_says_when_the_run_finished():
    flag = StopFlag()
    copy = pickle.loads(pickle.dumps(flag))  # what a worker gets
    assert not copy.is_set()
    flag.set()
    assert copy.is_set()
    copy.finish()
    assert flag.finished()
    flag.clear()
    assert not copy.is_set() and not copy.finished()


def test_a_run_stops_at_its_flag_or_its_time_budget():
    flag = StopFlag()
    assert not RunStop(flag).is_set()
    assert RunStop(flag, seconds=0.01).is_set() is False
    late = RunStop(None, seconds=0.01)
    time.sleep(0.02)
    assert late.is_set() and late.out_of_time
    flag.set()
    assert RunStop(flag).is_set()
    flag.clear()


def test_a_job_and_its_result_cross_a_pickle(tiny_encoder_factory, toy_reviews):
    """The training job's inputs and every value it yields are plain data: they pickle, as ZeroGPU needs."""
    from lora_demo.compute import jobs
    from lora_demo.compute.jobs import Trained

    ref = ModelRef("minilm", register_loader(lambda name, seed=42: tiny_encoder_factory(0)))
    train, val, test = toy_reviews
    args = (ref, train, val, LoraSettings(r=4), TrainConfig(epochs=1, batch_size=16, max_length=32))
    pickle.dumps(args)
    values = list(jobs.train(*args, stop=StopFlag()))
    for value in values:
        pickle.loads(pickle.dumps(value))
    trained = values[-1]
    assert isinstance(trained, Trained) and trained.result.steps == trained.result.max_steps
    assert 0 < trained.weights.nbytes < 200_000 and trained.runtime["device"] in ("cpu", "cuda")
    predictions = jobs.score(ref, trained.weights, test["text"].tolist(), 32)
    assert len(predictions.labels) == len(test) and pickle.loads(pickle.dumps(predictions)) == predictions


def test_no_module_of_the_ui_imports_torch_or_a_model_library():
    """The UI lays out what the study returns; models live only where jobs run (`lora_demo.compute`)."""
    import ast
    from pathlib import Path

    import lora_demo.ui

    banned = {"torch", "transformers", "peft", "safetensors"}
    found = []
    for path in Path(lora_demo.ui.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions too
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] in banned]
    assert found == []


def test_the_cpu_budget_is_the_affinity_cut_to_the_cgroup_quota(monkeypatch):
    import os

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(device_policy, "_cgroup_quota", lambda: None)
    assert device_policy.cpu_budget() == cpus
    monkeypatch.setattr(device_policy, "_cgroup_quota", lambda: 1)
    assert device_policy.cpu_budget() == 1  # a 1-CPU container on a bigger host
    monkeypatch.setattr(device_policy, "_cgroup_quota", lambda: 10_000)
    assert device_policy.cpu_budget() == cpus


def test_a_training_job_stopped_by_its_time_budget_says_so(tiny_encoder_factory, toy_reviews):
    """A training that the GPU call's time limit ends keeps its model and says why it stopped; one the user stops
    says only "Stopped"."""
    from types import SimpleNamespace

    from lora_demo.compute import jobs
    from lora_demo.ui.train import result_markdown

    ref = ModelRef("minilm", register_loader(lambda name, seed=42: tiny_encoder_factory(0)))
    train, val, _ = toy_reviews
    long_run = TrainConfig(epochs=20, batch_size=1, max_length=32, logging_steps=1)
    trained = list(jobs.train(ref, train, val, LoraSettings(r=4), long_run, stop=StopFlag(), seconds=1.0))[-1]
    result = trained.result
    assert result.stopped and result.out_of_time and trained.out_of_time and 0 < result.steps < result.max_steps
    tuned = SimpleNamespace(result=result, name="minilm")
    metrics = {"n": 10, "accuracy": 0.5, "f1": 0.5}
    assert "Stopped at the time limit of one GPU call" in result_markdown(tuned, metrics, [])
    asked = StopFlag()
    asked.set()
    by_user = list(jobs.train(ref, train, val, LoraSettings(r=4), long_run, stop=asked, seconds=1.5))[-1].result
    assert by_user.stopped and not by_user.out_of_time
    assert "time limit" not in result_markdown(SimpleNamespace(result=by_user, name="minilm"), metrics, [])
