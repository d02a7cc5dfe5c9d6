"""Why LoRA saves resources, measured: the same few training steps with LoRA and with full fine-tuning.

Both runs train the same registry model on the same batch of reviews with AdamW, so the difference is what
LoRA changes: the parameters that get gradients and optimizer state, and the size of what is saved.
Memory is the growth of this process's resident memory during the steps (sampled, as `bench` does).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from .config import LoraSettings
from .lora import apply_lora, count_parameters, count_parameters_offline, shipped_bytes
from .measure import PeakRSS
from .models import ModelBundle, load_bundle
from .train import tokenize_split

RANKS = (1, 2, 4, 8, 16, 32, 64)


def _steps(model: torch.nn.Module, batch: dict, steps: int) -> list[float]:
    """Seconds of each AdamW step (forward, backward, update) on `batch`."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    model.eval()
    return times


def _batch(bundle: ModelBundle, frame, max_length: int) -> dict:
    dataset = tokenize_split(bundle, frame, max_length)
    features = [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in dataset]
    if bundle.spec.kind == "seq2seq":
        from transformers import DataCollatorForSeq2Seq

        return dict(DataCollatorForSeq2Seq(bundle.tokenizer, label_pad_token_id=-100)(features))
    padded = bundle.tokenizer.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt")
    return {**padded, "labels": torch.tensor([f["labels"] for f in features])}


def step_times(times: list[float]) -> dict:
    """The median and spread of measured step times: `seconds_per_step` (the median), `seconds_middle_half` (the
    first and third quartiles) and `seconds_range` (the fastest and the slowest step)."""
    quartiles = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {
        "seconds_per_step": round(statistics.median(times), 4),
        "seconds_middle_half": [round(quartiles[0], 4), round(quartiles[2], 4)],
        "seconds_range": [round(min(times), 4), round(max(times), 4)],
    }


def within_noise(a: dict, b: dict) -> bool:
    """Whether two `step_times` differ by less than their own spread: their middle halves overlap."""
    (a_low, a_high), (b_low, b_high) = a["seconds_middle_half"], b["seconds_middle_half"]
    return a_low <= b_high and b_low <= a_high


def measure(
    model_name: str,
    lora: LoraSettings,
    frame,
    steps: int = 8,
    max_length: int = 128,
    seed: int = 42,
    loader: Callable[..., ModelBundle] = load_bundle,
    warmup: int = 2,
) -> dict:
    """Time per step and memory growth of LoRA vs full fine-tuning, on the reviews of `frame` as one batch.

    Args:
        model_name: a registry model.
        lora: the LoRA settings to measure; the adapter covers all layers here, as a LoRA step with no cache.
        frame: a few reviews (`text`, `label`): one batch.
        steps: measured steps, after `warmup` steps that are timed but left out (the first steps pay for
            allocations and kernel choices a run pays once).
        loader: loads a fresh registry model by name and seed (`models.load_bundle`).

    Returns:
        Per method (`lora`, `full`): parameter counts, `step_times` of the measured steps, memory growth and the
        size saved; `speedup` (the medians' ratio) with `within_noise` (the middle halves of the two overlap, so
        the speed difference on this batch is not told apart from the machine's noise).
    """
    rows = {}
    for method in ("lora", "full"):
        with PeakRSS() as memory:
            bundle = loader(model_name, seed=seed)
            if method == "lora":
                bundle = apply_lora(bundle, lora)
            else:
                for param in bundle.model.parameters():
                    param.requires_grad_(True)
            batch = _batch(bundle, frame, max_length)
            start_rss = memory.peak
            times = _steps(bundle.model, batch, warmup + steps)[warmup:]
        counts = count_parameters(bundle.model)
        rows[method] = {
            "trainable": counts["trainable"],
            "total": counts["total"],
            "percent": round(counts["percent"], 4),
            **step_times(times),
            "memory_growth_mb": round(max(0.0, memory.peak - start_rss) / 2**20, 1),
            "saved_mb": round(shipped_bytes(bundle.model) / 2**20, 3),
        }
        del bundle, batch
    rows["batch"] = {"reviews": len(frame), "max_length": max_length, "steps": steps, "warmup": warmup}
    rows["speedup"] = round(rows["full"]["seconds_per_step"] / rows["lora"]["seconds_per_step"], 2)
    rows["within_noise"] = within_noise(rows["lora"], rows["full"])
    rows["size_ratio"] = round(rows["full"]["saved_mb"] / rows["lora"]["saved_mb"], 1)
    return rows


def trainable_by_rank(model_name: str, lora: LoraSettings, ranks=RANKS) -> list[dict]:
    """Trainable parameters at each rank for the chosen targets and layers, counted offline."""
    from dataclasses import replace

    rows = []
    for r in ranks:
        counts = count_parameters_offline(model_name, replace(lora, r=r))
        rows.append({"r": r, "trainable": counts["trainable"], "percent": round(counts["percent"], 4)})
    return rows
