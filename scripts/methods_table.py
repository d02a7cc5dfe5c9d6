"""The README's methods table: the `methods` of several `train --methods ... --report` reports (one per seed),
as means and spreads (min-max over the seeds) per method.

    for seed in 42 43 44; do
      python -m lora_demo train --data ../shared/data/imdb --test-size 2000 --seed $seed --no-resources \
        --methods full,lora,dora,rslora,loraplus,ia3 --report methods-$seed.json
    done
    python scripts/methods_table.py methods-42.json methods-43.json methods-44.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def spread(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    values = [v * scale for v in values]
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(reports: list[dict]) -> str:
    comparisons = [report["methods"] for report in reports]
    names = list(comparisons[0]["methods"])
    lines = [
        "| Method | Test accuracy | F1 | p vs LoRA | Trainable | Shipped | Train s | Peak MB | Short reviews "
        "| Cosine to untouched (on / off) | lr chosen |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rows = [c["methods"][name] for c in comparisons]

        def values(key, rows=rows):
            return [row[key] for row in rows]

        p_values = [p for p in values("p_value_vs_lora") if p is not None]
        shift_on = [row["embedding_shift"]["adapter_on"] for row in rows]
        shift_off = [row["embedding_shift"]["adapter_off"] for row in rows]
        off = "–" if None in shift_off else spread(shift_off)
        short = [v for v in values("short_reviews_accuracy") if v is not None]
        # resident-memory readings (reports before the allocator's) carried the methods run before: left out
        memory = [row["peak_memory_mb"] for row in rows if row.get("memory_measured") != "process_rss_above_start"]
        lines.append(
            f"| {name} | {spread(values('accuracy'))} | {spread(values('f1'))} "
            f"| {', '.join(f'{p:.3f}' for p in p_values) or '–'} | {rows[0]['trainable_params']:,} "
            f"| {spread(values('shipped_bytes'), 2, 1 / 2**20)} MB | {spread(values('train_seconds'), 0)} "
            f"| {spread(memory, 0) if memory else '–'} | {spread(short) if short else '–'} "
            f"| {spread(shift_on)} / {off} | {', '.join(f'{lr:g}' for lr in values('chosen_lr'))} |"
        )
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    reports = [json.loads(Path(path).read_text()) for path in paths]
    print(table(reports))
    for report in reports:
        comparison = report["methods"]
        print(f"\nseed {report['train_config']['seed']}: {comparison['sentence']} Work: {comparison['work']}")


if __name__ == "__main__":
    main(sys.argv[1:])
