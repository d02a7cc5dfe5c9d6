"""Write the offline IMDb sample shipped in `assets/imdb-sample/` from a full copy of IMDb.

A seeded, label-balanced sample of the real train and test splits, so that a machine with no data and no
Hub still runs the study on real reviews. Run from the repository root:

    python scripts/make_imdb_sample.py --imdb ../shared/data/imdb

The same source, sizes and seed write byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "assets" / "imdb-sample"


def sample_balanced(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """`size` rows, half of each label, drawn with `seed` and shuffled.

    Raises:
        SystemExit: when `size` is odd or a label has fewer than `size / 2` rows.
    """
    if size % 2:
        raise SystemExit(f"the sample size must be even (half of each label), got {size}")
    parts = []
    for label in (0, 1):
        rows = frame[frame["label"] == label]
        if len(rows) < size // 2:
            raise SystemExit(f"label {label} has only {len(rows)} reviews, fewer than {size // 2}")
        parts.append(rows.sample(n=size // 2, random_state=seed + label))
    # the full files are sorted by label: shuffle so that the first N rows are not all negative
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)[["text", "label"]]


def write_sample(imdb: Path, output: Path, train_size: int, test_size: int, seed: int) -> dict[str, int]:
    """Sample both splits of `imdb` (train.parquet, test.parquet) into `output`; returns the bytes written."""
    output.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, size in (("train", train_size), ("test", test_size)):
        frame = pd.read_parquet(imdb / f"{split}.parquet", columns=["text", "label"])
        frame["label"] = frame["label"].astype("int64")
        target = output / f"{split}.parquet"
        sample_balanced(frame, size, seed).to_parquet(target, index=False, compression="zstd")
        written[split] = target.stat().st_size
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--imdb",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "imdb",
        help="folder with IMDb's train.parquet and test.parquet (columns text, label)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the sample")
    parser.add_argument("--train-size", type=int, default=1000, help="training reviews (even: half per label)")
    parser.add_argument("--test-size", type=int, default=1000, help="test reviews (even: half per label)")
    parser.add_argument("--seed", type=int, default=10, help="seed of the draw")
    args = parser.parse_args(argv)
    if not all((args.imdb / f"{split}.parquet").is_file() for split in ("train", "test")):
        print(f"error: {args.imdb} holds no train.parquet and test.parquet", file=sys.stderr)
        return 2
    written = write_sample(args.imdb, args.output, args.train_size, args.test_size, args.seed)
    for split, size in written.items():
        print(f"wrote {args.output / (split + '.parquet')} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
