"""Write `assets/imdb-test-sentences.jsonl`: short reviews cut from IMDb *test* reviews, a second short-review
test set that no choice of this project has looked at.

Each row is the last 1-3 sentences of one IMDb test review (where a review usually gives its verdict), 6 to 60
words, labelled as its review; half positive, half negative, drawn with a seed. Never from training reviews, so
no model trained on IMDb's train split has seen them. Run from the repository root:

    python scripts/make_imdb_sentences.py --imdb ../shared/data/imdb

The same source, size and seed write a byte-identical file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lora_demo.augment import split_sentences  # noqa: E402
from lora_demo.data import clean_text  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "assets" / "imdb-test-sentences.jsonl"
MIN_WORDS, MAX_WORDS = 6, 60


def ending(text: str, sentences: int) -> str | None:
    """The last `sentences` sentences of a cleaned review, or None when they fall outside the word bounds."""
    cut = " ".join(split_sentences(text)[-sentences:])
    return cut if MIN_WORDS <= len(cut.split()) <= MAX_WORDS else None


def draw(test: pd.DataFrame, size: int, seed: int) -> list[dict]:
    """`size` endings, half of each label, from distinct reviews; each row keeps its review's row number."""
    if size % 2:
        raise SystemExit(f"the size must be even (half of each label), got {size}")
    rng = np.random.default_rng(seed)
    rows = []
    for label in (0, 1):
        picked = 0
        for index in rng.permutation(np.flatnonzero(test["label"].to_numpy() == label)):
            text = ending(clean_text(test["text"].iat[index]), int(rng.integers(1, 4)))
            if text is None:
                continue
            rows.append({"text": text, "label": label, "review": int(index)})
            picked += 1
            if picked == size // 2:
                break
        else:
            raise SystemExit(f"label {label} has fewer than {size // 2} reviews with a usable ending")
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--imdb",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "imdb",
        help="folder with IMDb's test.parquet (columns text, label)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON-lines file to write")
    parser.add_argument("--size", type=int, default=240, help="rows (even: half per label)")
    parser.add_argument("--seed", type=int, default=19, help="seed of the draw")
    args = parser.parse_args(argv)
    source = args.imdb / "test.parquet"
    if not source.is_file():
        print(f"error: {args.imdb} holds no test.parquet", file=sys.stderr)
        return 2
    rows = draw(pd.read_parquet(source, columns=["text", "label"]), args.size, args.seed)
    args.output.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {args.output} ({args.output.stat().st_size / 1e3:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
