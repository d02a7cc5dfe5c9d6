"""Choose the default recipe's training settings on validation reviews only, as its values were chosen.

Trains LoRA with each candidate setting (`TrainConfig` fields over the default recipe) at each seed and scores it
on three validation sets: the split's IMDb validation reviews; sentence windows (1-3 sentences) of 300 held-out
reviews of IMDb's *train* split that are neither training nor validation reviews; and the dev half of the
hand-written short reviews (`data.short_review_halves`). Never their test half, never IMDb's test split, never
the IMDb test endings. Prints one JSON line per seed and setting, then each setting's means. Run from the
repository root (about 2 minutes per setting and seed on an idle 2-core CPU):

    python scripts/choose_recipe.py --imdb ../shared/data/imdb --seeds 1,2,3 \
        --candidates "short_windows=1" "short_windows=0"
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_demo.augment import sentence_windows  # noqa: E402
from lora_demo.baseline import zero_shot_predict  # noqa: E402
from lora_demo.calibration import Calibration, expected_calibration_error  # noqa: E402
from lora_demo.config import DataConfig, LoraSettings, TrainConfig  # noqa: E402
from lora_demo.data import load_reviews, load_splits, short_review_halves  # noqa: E402
from lora_demo.inference import classify_texts, serving_copy  # noqa: E402
from lora_demo.models import load_bundle  # noqa: E402
from lora_demo.train import train_lora  # noqa: E402

HELD_OUT = 300
SETS = ("imdb_val", "short_val", "dev_half")


def validation_sets(imdb: str, seed: int):
    """The split (its test part unused) and the three validation sets, by name."""
    splits = load_splits(DataConfig(source=imdb, seed=seed, test_size=2))
    seen = set(splits.train["text"]) | set(splits.val["text"])
    everything = load_reviews(imdb)["train"]
    held_out = everything[~everything["text"].isin(seen)].sample(n=HELD_OUT, random_state=seed + 100)
    sets = {
        "imdb_val": splits.val,
        "short_val": sentence_windows(held_out, HELD_OUT, seed=seed + 100),
        "dev_half": short_review_halves()["dev"],
    }
    return splits, sets


def scored(predict, sets: dict, seed: int) -> dict:
    """Accuracy on each set, and ECE on each after a temperature fitted on IMDb validation (`_ece`) and after one
    fitted on IMDb validation with a sentence window of each of its reviews (`_ece_windows`)."""
    answers = {name: predict(frame["text"].tolist()) for name, frame in sets.items()}
    val = sets["imdb_val"]
    windows = sentence_windows(val, len(val), seed=seed + 200)
    window_answers = predict(windows["text"].tolist())
    calibrations = {
        "": Calibration.fit(answers["imdb_val"], val["label"]),
        "_windows": Calibration.fit(
            replace(answers["imdb_val"], positive=answers["imdb_val"].positive + window_answers.positive),
            [*val["label"], *windows["label"]],
        ),
    }
    row = {f"temperature{key}": round(c.temperature, 3) for key, c in calibrations.items()}
    for name, frame in sets.items():
        labels = frame["label"].to_numpy()
        row[name] = round(float(np.mean(np.array(answers[name].labels) == labels)), 4)
        for key, calibration in calibrations.items():
            ece = expected_calibration_error(calibration.apply(answers[name]).positive, labels)
            row[f"{name}_ece{key}"] = round(ece, 4)
    return row


def overrides(text: str) -> dict:
    """`name=value,name=value` as TrainConfig fields (numbers as numbers)."""
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    return {name.strip(): json.loads(value) for name, value in pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imdb", default="../shared/data/imdb", help="IMDb folder with train and test files")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds of the split, windows and training")
    parser.add_argument(
        "--candidates", nargs="+", default=["short_windows=1", "short_windows=0"], help="TrainConfig overrides each"
    )
    args = parser.parse_args(argv)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        splits, sets = validation_sets(args.imdb, seed)
        zero_shot = serving_copy(load_bundle("minilm", seed=seed))
        row = {
            "seed": seed,
            "candidate": "zero-shot",
            **scored(lambda t, m=zero_shot: zero_shot_predict(m, t), sets, seed),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        for candidate in args.candidates:
            config = TrainConfig(seed=seed, **overrides(candidate))
            tuned, result = train_lora(
                load_bundle("minilm", seed=seed), splits.train, splits.val, LoraSettings(), config
            )
            model = serving_copy(tuned)
            row = {"seed": seed, "candidate": candidate, "steps": result.steps, "seconds": round(result.seconds, 1)}
            row.update(scored(lambda t, m=model: classify_texts(m, t), sets, seed))
            print(json.dumps(row), flush=True)
            rows.append(row)
    for candidate in ["zero-shot", *args.candidates]:
        mine = [row for row in rows if row["candidate"] == candidate]
        means = {name: round(float(np.mean([row[name] for row in mine])), 4) for name in SETS}
        print(json.dumps({"candidate": candidate, "mean_over_seeds": means}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
