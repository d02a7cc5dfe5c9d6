"""The project on a CUDA GPU: the study end to end, with every model on the GPU, timed.

    python scripts/gpu_check.py [--install] [--data PATH] [--report gpu-check.json]

Runs, through the study API the CLI and the app call (`Study.steps`), on the device policy's GPU:
1. the default recipe on the bundled MiniLM (500 / 200 / 1,000 reviews of the shipped IMDb sample, or --data);
2. the original study's preset (`--preset study`: r 8 on q and v, one epoch, 500 / 200 / 100 reviews) on a
   full-size T5-small with random weights (`preset_timing.random_t5_small`: the Hub's weights may be out of reach).
For each it prints the device, the dtype, seconds per training step, the whole study's wall time and the peak
GPU memory, and it fails (exit 1) if any model was loaded anywhere but the GPU. Without CUDA it exits 2 with one
line. `--install` first installs requirements.txt (PyPI's torch==2.13.0 is the CUDA build).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REHEARSAL = {"train_size": 24, "val_size": 8, "test_size": 16}  # --rehearse: the code path, not the figures
REHEARSAL_LENGTH = 64  # tokens per review in the rehearsal
sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="pip install -r requirements.txt first")
    parser.add_argument("--data", default="sample", help="IMDb for the MiniLM study (default: the shipped sample)")
    parser.add_argument("--report", help="write the figures as JSON here")
    parser.add_argument(
        "--rehearse", action="store_true", help="without a GPU, a few reviews on the CPU: the check must fail"
    )
    args = parser.parse_args(argv)
    if args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(REPO_ROOT / "requirements.txt")])
    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print(f"error: no CUDA GPU is visible here (torch {torch.__version__})", file=sys.stderr)
        return 2
    sizes = REHEARSAL if args.rehearse else None
    rows = [check_minilm(args.data, sizes), check_study_preset(args.data, sizes)]
    for row in rows:
        print(
            f"{row['name']}: {row['device_name']} ({row['device']}, {row['dtype']}), {row['steps']} steps at "
            f"{row['seconds_per_step']:.3f} s, whole study {row['wall_seconds']:.1f} s, "
            f"peak GPU memory {row['peak_gpu_mb']:.0f} MB, models off the GPU: {row['models_off_gpu'] or 'none'}"
        )
    if args.report:
        Path(args.report).write_text(json.dumps(rows, indent=2))
    return 1 if any(row["models_off_gpu"] or row["device"] != "cuda" for row in rows) else 0


def watched_loader(loader, placed: list):
    """`loader`, and the device of every model it gave once the policy has placed it (`compute.models.fresh`)."""
    from lora_demo.compute import models

    def load(name, seed=42):
        bundle = loader(name, seed=seed)
        original_to = bundle.model.to

        def to(*args, **kwargs):
            moved = original_to(*args, **kwargs)
            placed.append(str(next(bundle.model.parameters()).device))
            return moved

        bundle.model.to = to
        return bundle

    return models.register_loader(load)


def run_study(name: str, study, lora, config, placed: list) -> dict:
    import torch

    from lora_demo.study import Compared

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    report = next(event.report for event in study.steps(lora, config) if isinstance(event, Compared))
    wall = time.perf_counter() - started
    train, runtime = report.train, report.runtime
    return {
        "name": name,
        "device": runtime["device"],
        "device_name": runtime["device_name"],
        "dtype": runtime["dtype"],
        "steps": train["steps"],
        "seconds_per_step": train["seconds"] / max(1, train["steps"]),
        "wall_seconds": round(wall, 1),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else 0.0,
        "models_off_gpu": sorted({device for device in placed if not device.startswith("cuda")}),
        "baseline_accuracy": report.baseline["accuracy"],
        "lora_accuracy": report.finetuned["accuracy"],
    }


def check_minilm(data: str, sizes: dict | None) -> dict:
    from dataclasses import replace

    from lora_demo.config import DataConfig, get_model_spec, recipe
    from lora_demo.models import load_bundle
    from lora_demo.study import Models, Study

    placed: list = []
    models = Models()
    models.loader = watched_loader(load_bundle, placed)
    study = Study("minilm", models)
    study.load_data(DataConfig(source=data, **(sizes or {})))
    lora, config = recipe("fast", get_model_spec("minilm"))
    if sizes:
        config = replace(config, epochs=1, max_length=REHEARSAL_LENGTH)
    return run_study("minilm, default recipe", study, lora, config, placed)


def check_study_preset(data: str, sizes: dict | None) -> dict:
    from dataclasses import replace

    from lora_demo.config import DataConfig, get_preset
    from lora_demo.preset_timing import STUDY_SIZES, now_settings, random_t5_small
    from lora_demo.study import Models, Study

    placed: list = []
    models = Models(check=lambda spec: None)
    models.loader = watched_loader(lambda name, seed=42: random_t5_small(seed), placed)
    study = Study("t5-small", models)
    preset = get_preset("study")
    study.load_data(replace(DataConfig(source=data), **(sizes or STUDY_SIZES), seed=42))
    lora, config = now_settings(42)
    if sizes:
        config = replace(config, max_length=REHEARSAL_LENGTH)
    return run_study(f"t5-small (random weights), {preset.name} preset", study, lora, config, placed)


if __name__ == "__main__":
    sys.exit(main())
