"""Choose `TrainConfig.short_windows` on validation reviews only, as the default recipe's value was chosen.

Scores zero-shot and LoRA trained with each share of sentence windows on two validation sets: the split's IMDb
validation reviews, and sentence windows (1-3 sentences) of 300 held-out reviews of IMDb's *train* split that
are neither training nor validation reviews. Never the 160 hand-written short reviews (a test set) and never
IMDb's test split. Prints one JSON line per setting. Run from the repository root (about 2 minutes per setting
on an idle 2-core CPU):

    python scripts/choose_short_windows.py --imdb ../shared/data/imdb --shares 0,1 --seed 42
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_demo.augment import sentence_windows  # noqa: E402
from lora_demo.baseline import zero_shot_predict  # noqa: E402
from lora_demo.config import DataConfig, LoraSettings, TrainConfig  # noqa: E402
from lora_demo.data import load_reviews, load_splits  # noqa: E402
from lora_demo.inference import classify_texts, serving_copy  # noqa: E402
from lora_demo.models import load_bundle  # noqa: E402
from lora_demo.train import train_lora  # noqa: E402

HELD_OUT = 300


def accuracy(labels, frame) -> float:
    return float(np.mean(np.array(labels) == frame["label"].to_numpy()))


def validation_sets(imdb: str, seed: int):
    """The split (its test part unused) and the short validation windows of held-out training-split reviews."""
    splits = load_splits(DataConfig(source=imdb, seed=seed, test_size=2))
    seen = set(splits.train["text"]) | set(splits.val["text"])
    everything = load_reviews(imdb)["train"]
    held_out = everything[~everything["text"].isin(seen)].sample(n=HELD_OUT, random_state=seed + 100)
    return splits, sentence_windows(held_out, HELD_OUT, seed=seed + 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imdb", default="../shared/data/imdb", help="IMDb folder with train and test files")
    parser.add_argument("--shares", default="0,1", help="comma-separated short_windows values to compare")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split, the windows and training")
    args = parser.parse_args(argv)
    splits, short_val = validation_sets(args.imdb, args.seed)
    zero_shot = serving_copy(load_bundle("minilm", seed=args.seed))
    scores = {
        "imdb_val": accuracy(zero_shot_predict(zero_shot, splits.val["text"].tolist()).labels, splits.val),
        "short_val": accuracy(zero_shot_predict(zero_shot, short_val["text"].tolist()).labels, short_val),
    }
    print(json.dumps({"seed": args.seed, "model": "zero-shot", **scores}), flush=True)
    for share in (float(s) for s in args.shares.split(",")):
        config = TrainConfig(seed=args.seed, short_windows=share)
        tuned, result = train_lora(
            load_bundle("minilm", seed=args.seed), splits.train, splits.val, LoraSettings(), config
        )
        model = serving_copy(tuned)
        scores = {
            name: accuracy(classify_texts(model, frame["text"].tolist()).labels, frame)
            for name, frame in (("imdb_val", splits.val), ("short_val", short_val))
        }
        row = {"seed": args.seed, "short_windows": share, "steps": result.steps, "seconds": round(result.seconds, 1)}
        print(json.dumps({**row, **scores}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
