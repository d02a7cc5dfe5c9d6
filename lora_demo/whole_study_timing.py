"""`python -m lora_demo bench --whole-study`: what a visitor waits for, from "Run the whole study" to Compare.

The study's own streaming run (`Study.run`, what the app's button and `train` call) on the default data, default
recipe, in a fresh process (the models load inside it, as on a fresh start), step by step from `Study.timings`.
Each step's FLOPs are counted exactly while it runs (`measure.FlopTally`: every batch through the model), except
training's, which `bench.count_training_flop` replays afterwards on the run's own batches. `visitors=2` runs a
second visitor on the same data in the same process: what another session finds already done.
"""

from __future__ import annotations

import time
from dataclasses import replace

from .bench import judged, significant
from .config import DataConfig, LoraSettings, TrainConfig
from .measure import FlopTally, machine_figures, matmul_gflops, run_isolated

GOALS = {
    "seconds": 60.0,  # at most, the whole study on a quiet 2-vCPU machine
    "overhead_ratio": 0.25,  # at most: everything but training, over training
    "training_utilization": 0.5,  # at least: training's FLOP/s over the matmul peak measured in the same run
    "second_visitor_extra_seconds": 5.0,  # at most: a second visitor's whole study beyond its own training
}


def time_whole_study(
    source: str = "sample",
    seed: int = 42,
    visitors: int = 1,
    models=None,
    data: DataConfig | None = None,
    config: TrainConfig | None = None,
) -> dict:
    """Run the whole study `visitors` times in this process, each as a new session on the same data.

    Args:
        source: the data (`DataConfig.source`): by default the shipped IMDb sample, 500 / 200 / 1,000 reviews.
        models: where the studies get their models (`study.Models`); default: the registry.
        data, config: other sizes and settings than the defaults (tests); `source` and `seed` are set in them.

    Returns:
        `{"visitors": [...], **the first visitor's figures}`: each visitor's `seconds`, `steps` (name -> seconds and
        tflop, in the order they ran), `training_seconds`, `overhead_ratio`, `tflop`, `accuracy` and `adapter` (its
        weights' hash: a second visitor who trained the same adapter is answered from the first one's passes).
    """
    from .study import Study

    rows = []
    with FlopTally() as tally:
        for _ in range(visitors):
            study = Study(models=models)
            flop: dict[str, int] = {}

            def count(step, seconds, flop=flop):
                flop[step] = flop.get(step, 0) + tally.take()

            study.on_timed = count
            tally.take()
            started = time.perf_counter()
            study.load_data(replace(data or DataConfig(), source=source, seed=seed))  # as the Dataset tab's Load
            loading = time.perf_counter() - started
            flop["load"] = tally.take()
            report = study.run(LoraSettings(), replace(config or TrainConfig(), seed=seed))
            seconds = time.perf_counter() - started
            timings = {"load": loading + study.timings.pop("load", 0.0), **study.timings}
            flop["training"] = training_flop(study)
            rows.append({**visitor_figures(timings, flop, seconds, report), "adapter": study.tuned.weights.key})
    return {"visitors": rows, **rows[0]}


def training_flop(study) -> int:
    """FLOPs of the study's latest training run, replayed under the counter on its own batches (not timed)."""
    from .bench import count_training_flop
    from .compute import models
    from .train import trains_in_bf16

    tuned = study.tuned
    bundle = models.adapted(study.models.ref(tuned.name), tuned.weights)
    bf16 = trains_in_bf16(tuned.config)
    # the study's training job also computes the head-only rung's features (`train_lora(with_features=True)`)
    return int(count_training_flop(bundle, study.splits, tuned.lora, tuned.config, tuned.result, bf16, True))


def visitor_figures(timings: dict[str, float], flop: dict[str, int], seconds: float, report) -> dict:
    training = timings.get("training", 0.0)
    timings = {**timings, "other": max(0.0, seconds - sum(timings.values()))}  # events, the report's assembly
    steps = {name: {"seconds": round(value, 3), "tflop": _tera(flop.get(name, 0))} for name, value in timings.items()}
    return {
        "seconds": round(seconds, 2),
        "steps": steps,
        "training_seconds": round(training, 2),
        "overhead_ratio": round((seconds - training) / training, 3) if training else None,
        "tflop": _tera(sum(flop.values())),
        "accuracy": {"zero_shot": report.baseline["accuracy"], "lora": report.finetuned["accuracy"]},
    }


def _tera(flop: int) -> float:
    return significant(flop / 1e12)


def _peak(precision: str) -> float:
    import torch

    return matmul_gflops(torch.bfloat16 if precision == "bf16" else torch.float32)


def run_whole_study_bench(source: str = "sample", seed: int = 42, visitors: int = 1) -> dict:
    """The `whole_study` report: `time_whole_study` in a fresh process, the matmul peak measured before and after
    it in this one, utilizations against it, and the goals.

    Returns:
        `{"machine": ..., "whole_study": {seconds, steps, training_seconds, overhead_ratio, utilization,
        training_utilization, visitors, peak_gflops, precision, goals}}`.
    """
    from . import inference

    machine = machine_figures()
    figures, peak_rss = run_isolated(time_whole_study, source, seed, visitors)
    precision = "bf16" if inference.fast_bf16() else "fp32"
    peak = max(machine["matmul_gflops"][precision], _peak(precision))
    typical = machine["matmul_gflops_typical"][precision]
    for row in figures["visitors"]:
        add_utilization(row, peak, typical)
    first = figures["visitors"][0]
    whole = {
        **first,
        "visitors": figures["visitors"],
        "peak_gflops": round(peak, 1),
        "typical_gflops": typical,
        "precision": precision,
    }
    whole["peak_rss_mb"] = round(peak_rss, 1)
    whole["goals"] = check_goals(whole)
    return {"machine": machine, "whole_study": whole}


def add_utilization(row: dict, peak_gflops: float, typical_gflops: float | None = None) -> None:
    """All FLOPs over (peak x seconds), and training's alone over (peak x training seconds); against the typical
    (median) product's GFLOP/s too where given (`training_utilization_typical`)."""
    row["utilization"] = round(row["tflop"] * 1e3 / (peak_gflops * row["seconds"]), 3)
    training = row["steps"].get("training")
    if training and training["seconds"]:
        gflops = training["tflop"] * 1e3 / training["seconds"]
        row["training_gflops"] = round(gflops, 1)
        row["training_utilization"] = round(gflops / peak_gflops, 3)
        if typical_gflops:
            row["training_utilization_typical"] = round(gflops / typical_gflops, 3)


def check_goals(whole: dict) -> dict:
    """Each goal with its target, the measured value and whether it was met."""
    rows = {
        "seconds": (whole["seconds"], "<=", GOALS["seconds"]),
        "overhead_ratio": (whole["overhead_ratio"], "<=", GOALS["overhead_ratio"]),
        "training_utilization": (whole.get("training_utilization"), ">=", GOALS["training_utilization"]),
    }
    if len(whole["visitors"]) > 1:
        second = whole["visitors"][1]
        extra = round(second["seconds"] - second["training_seconds"], 2)
        rows["second_visitor_extra_seconds"] = (extra, "<=", GOALS["second_visitor_extra_seconds"])
    return judged(rows)


def whole_study_table(whole: dict) -> str:
    """The README's table: each step's seconds, share and TFLOP, per visitor."""
    visitors = whole["visitors"]
    names = list(dict.fromkeys(name for row in visitors for name in row["steps"]))
    header = " | ".join(f"Visitor {i + 1} (s) | share | TFLOP" for i in range(len(visitors)))
    lines = [f"| Step | {header} |", "|---|" + "---|---|---|" * len(visitors)]
    for name in names:
        cells = []
        for row in visitors:
            step = row["steps"].get(name, {"seconds": 0.0, "tflop": 0.0})
            share = step["seconds"] / row["seconds"] if row["seconds"] else 0.0
            cells.append(f"{step['seconds']:.2f} | {100 * share:.0f}% | {step['tflop']:.3f}")
        lines.append(f"| {name.replace('_', ' ')} | {' | '.join(cells)} |")
    totals = " | ".join(f"**{row['seconds']:.1f}** | 100% | {row['tflop']:.3f}" for row in visitors)
    lines.append(f"| **whole study** | {totals} |")
    return "\n".join(lines)
