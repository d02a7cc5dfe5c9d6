"""What visitors cost one server process: the whole study's time for a first and a second visitor on the same
data, and the memory an idle and a trained session hold.

    python scripts/visitors.py [--data sample] [--sessions 10]

Visitors here are studies in one process, as the app's sessions are (`Study.steps`, the default recipe and sizes).
The second visitor shares what the first computed alike (the cleaned source, the zero-shot answers, the TF-IDF
rung); every model job runs again for its own trained model. Memory is this process's resident set, measured after
a garbage collection, so it includes what the allocator keeps: read it as an upper bound per session.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def rss_mb() -> float:
    import psutil

    from lora_demo.ui.session import release_memory

    gc.collect()
    release_memory()
    return psutil.Process().memory_info().rss / 2**20


def whole_study(data: str) -> tuple[float, object]:
    from lora_demo.config import DataConfig, get_model_spec, recipe
    from lora_demo.study import Compared, Study

    started = time.perf_counter()
    study = Study()
    study.load_data(DataConfig(source=data), fit_to_data=True)
    lora, config = recipe("fast", get_model_spec("minilm"))
    next(event for event in study.steps(lora, config) if isinstance(event, Compared))
    return time.perf_counter() - started, study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sample")
    parser.add_argument("--sessions", type=int, default=10, help="idle sessions to measure memory over")
    parser.add_argument("--report", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    from lora_demo.compute.device import fit_threads
    from lora_demo.config import DataConfig
    from lora_demo.study import Study

    fit_threads()
    first_seconds, first = whole_study(args.data)
    second_seconds, second = whole_study(args.data)
    print(f"whole study, first visitor {first_seconds:.1f} s, second visitor {second_seconds:.1f} s")
    first.release(), second.release()
    del first, second
    base = rss_mb()
    idle = []
    for _ in range(args.sessions):
        study = Study()
        study.load_data(DataConfig(source=args.data), fit_to_data=True)
        study.baseline()
        idle.append(study)
    per_idle = (rss_mb() - base) / args.sessions
    trained = []
    before = rss_mb()
    for _ in range(3):
        seconds, study = whole_study(args.data)
        study.release()  # its serving copy leaves the process cache, as when its session closes
        trained.append(study)
    per_trained = (rss_mb() - before) / 3
    figures = {
        "first_visitor_seconds": round(first_seconds, 1),
        "second_visitor_seconds": round(second_seconds, 1),
        "idle_session_mb": round(per_idle, 1),
        "trained_session_mb": round(per_trained, 1),
        "adapter_kb": round(trained[0].tuned.weights.nbytes / 1024),
    }
    print(
        f"memory per session with data and a baseline: {per_idle:.1f} MB; with a trained model, its report and "
        f"scores: {per_trained:.1f} MB (its adapter {figures['adapter_kb']} KB)"
    )
    if args.report:
        Path(args.report).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
