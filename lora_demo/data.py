"""Load IMDb-style reviews from wherever they are, clean them and split them stratified.

A source is a folder of train/test files, a single file, an original `aclImdb/` folder, the Hugging Face
Hub, the sample of real IMDb shipped in `assets/imdb-sample/` (`sample`, the offline default) or the 160
hand-written short reviews of `assets/reviews.jsonl` (`builtin`, also the short-review test set). Every
loader returns the same shape: a dict of pandas frames with a cleaned `text` column and an integer `label`
column (0 negative, 1 positive).
"""

from __future__ import annotations

import hashlib
import html
import http.client
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from .config import ASSETS_DIR, LABEL_NAMES, DataConfig, UserError

logger = logging.getLogger(__name__)

HUB_DATASET = "stanfordnlp/imdb"
HUB_DATASET_FILES = ("plain_text/train-*.parquet", "plain_text/test-*.parquet")
BUILTIN_FILE = ASSETS_DIR / "reviews.jsonl"
SAMPLE_DIR = ASSETS_DIR / "imdb-sample"  # written by scripts/make_imdb_sample.py
DATA_ENV = "LORA_DEMO_DATA"
SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
_LABEL_WORDS = {"negative": 0, "neg": 0, "positive": 1, "pos": 1, "0": 0, "1": 1}


@dataclass
class Splits:
    """Train, validation and test reviews, with where they came from and what was noticed on the way."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    source: str
    config: DataConfig
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def label_counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {LABEL_NAMES[k]: int((frame["label"] == k).sum()) for k in (0, 1)}
            for name, frame in (("train", self.train), ("val", self.val), ("test", self.test))
        }

    def summary(self) -> dict:
        return {
            "source": self.source,
            "sizes": self.sizes(),
            "label_counts": self.label_counts(),
            "seed": self.config.seed,
            "notes": list(self.notes),
        }


def clean_text(text: str) -> str:
    """Turn IMDb's HTML-flavoured text into plain text: `<br />` tags, entities, runs of spaces."""
    text = re.sub(r"<br\s*/?>", " ", str(text), flags=re.IGNORECASE)
    text = re.sub(r"<[^>]{0,200}>", " ", text)
    text = html.unescape(text)
    return re.sub(r"\s+", " ", text).strip()


def format_seq2seq(text: str) -> str:
    """The study's text-to-text prompt for T5."""
    return f"review: {text}"


def label_word(label: int) -> str:
    return LABEL_NAMES[int(label)]


PROBE_TIMEOUT = 3.0  # seconds the Hub gets to answer before it counts as unreachable
PROBE_SECONDS = 10.0  # how long an answer is trusted: a Hub that recovers is used again soon after
_probe_answers: dict[str, tuple[float, bool]] = {}  # endpoint -> (when asked, answered)


def offline_mode() -> bool:
    """`HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set: Hub files come from the local cache only."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "0"
    return flag.strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face Hub (`HF_ENDPOINT`) answers an HTTP request within `timeout` seconds.

    Asked at most once per `PROBE_SECONDS` and endpoint, so an offline machine, or a Hub that answers late, costs
    at most `timeout` instead of the Hub client's 25-50 s of retries; any HTTP answer counts as reachable.
    """
    if offline_mode():
        return False
    endpoint = hub_endpoint()
    asked, answered = _probe_answers.get(endpoint, (-PROBE_SECONDS, False))
    if time.monotonic() - asked < PROBE_SECONDS:
        return answered
    answered = _ask_endpoint(endpoint, timeout)
    _probe_answers[endpoint] = (time.monotonic(), answered)
    return answered


hub_reachable.cache_clear = _probe_answers.clear  # tests start from a fresh answer


def _ask_endpoint(endpoint: str, timeout: float) -> bool:
    url = urllib.parse.urlparse(endpoint)
    connection_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(url.hostname, url.port, timeout=timeout)
    try:
        connection.request("HEAD", "/")
        connection.getresponse()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def resolve_source(source: str | None) -> tuple[str, list[str]]:
    """Decide which source to use when the user named none.

    With no data given, no `$LORA_DEMO_DATA` and no Hub, the shipped sample of real IMDb (`sample`) is the
    default, so an offline first run shows the study on real reviews; `builtin` is only used when named.

    Returns:
        The source (a path, `hub` or `sample`) and notes worth showing the user.
    """
    if source:
        return source, []
    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV], []
    if hub_reachable() or _hub_dataset_cached():
        return "hub", []
    train, test = count_sample()
    note = (
        f"Using the shipped sample of real IMDb ({train:,} training and {test:,} test reviews, "
        f"assets/imdb-sample): no data was given and the Hugging Face Hub is not reachable. "
        f"Point at the full data set with --data PATH or {DATA_ENV}=PATH."
    )
    logger.info(note)  # callers show the note to the user
    return "sample", [note]


@lru_cache(maxsize=1)
def count_sample() -> tuple[int, int]:
    """Reviews in the shipped IMDb sample: (train, test)."""
    import pyarrow.parquet as pq

    return tuple(pq.read_metadata(SAMPLE_DIR / f"{split}.parquet").num_rows for split in ("train", "test"))


def load_short_reviews() -> pd.DataFrame:
    """The 160 hand-written short reviews of `assets/reviews.jsonl`: the out-of-domain test set.

    They are shorter and plainer than IMDb's (a median of 25 words), like the reviews people type in the
    app, and none of them is in IMDb; every one is a test review, none is ever trained on by default.
    """
    return _read_table(BUILTIN_FILE)


@lru_cache(maxsize=1)
def count_builtin() -> int:
    return sum(1 for line in BUILTIN_FILE.read_text(encoding="utf-8").splitlines() if line.strip())


def load_reviews(source: str, progress: Callable[[int, int], None] | None = None) -> dict[str, pd.DataFrame]:
    """Load and clean every review of a source.

    Args:
        source: a folder with `train.*` and `test.*` files, a single file, an `aclImdb` folder,
            `hub`, `sample` (real IMDb shipped in `assets/imdb-sample`) or `builtin` (the short reviews).
        progress: called with (bytes done, bytes in all) while the Hub's copy downloads.

    Returns:
        `{"train": frame, "test": frame}` for sources with both splits, `{"all": frame}` for a single file.

    Raises:
        UserError: a missing path, an unknown format, missing columns or labels that are not 0/1 or words.
    """
    if source == "builtin":
        return {"all": _read_table(BUILTIN_FILE)}
    if source == "sample":
        return {split: _read_table(SAMPLE_DIR / f"{split}.parquet") for split in ("train", "test")}
    if source == "hub":
        return _load_hub(progress)
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data source {source!r} does not exist: give a folder, a file, 'hub', 'sample' or 'builtin'")
    if path.is_file():
        return {"all": _read_table(path)}
    imdb_root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    if (imdb_root / "train" / "pos").is_dir():
        return {split: _read_aclimdb(imdb_root / split) for split in ("train", "test")}
    found = {split: _find_split_file(path, split) for split in ("train", "test")}
    if not all(found.values()):
        raise UserError(
            f"folder {source!r} holds no train and test files: expected train.parquet/csv/jsonl and "
            f"test.parquet/csv/jsonl, or an aclImdb folder with train/pos and train/neg"
        )
    return {split: _read_table(file) for split, file in found.items()}


def _find_split_file(folder: Path, split: str) -> Path | None:
    for suffix in SUFFIXES:
        candidates = sorted(folder.glob(f"{split}*{suffix}"))
        if candidates:
            return candidates[0]
    return None


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise UserError(f"{path.name} is empty: expected reviews with a text and a label column")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl")
        else:
            raise UserError(f"{path.name}: unsupported file type {suffix!r}; use .parquet, .csv or .jsonl")
    except UserError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise UserError(f"{path.name} could not be read as {suffix[1:]}: {str(err).splitlines()[0][:200]}") from err
    return normalise_frame(frame, path.name)


def normalise_frame(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the columns, map word labels to 0/1, clean the text and drop empty reviews."""
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise UserError(f"{name} has no {' or '.join(missing)} column (found: {', '.join(map(str, frame.columns))})")
    frame = frame[["text", "label"]].dropna()
    words = frame["label"].astype(str).str.strip().str.lower().str.replace(r"\.0$", "", regex=True)
    labels = words.map(_LABEL_WORDS)
    if labels.isna().any():
        bad = sorted(set(words[labels.isna()]))[:5]
        raise UserError(f"{name}: labels must be 0/1 or negative/positive, found {', '.join(map(repr, bad))}")
    frame = pd.DataFrame({"text": frame["text"].map(clean_text), "label": labels.astype(int)})
    frame = frame[frame["text"] != ""].reset_index(drop=True)
    if frame.empty:
        raise UserError(f"{name} holds no reviews: no row has a non-empty text")
    return frame


def _read_aclimdb(folder: Path) -> pd.DataFrame:
    rows = [
        {"text": file.read_text(encoding="utf-8", errors="replace"), "label": label}
        for label, sub in ((0, "neg"), (1, "pos"))
        for file in sorted((folder / sub).glob("*.txt"))
    ]
    if not rows:
        raise UserError(f"{folder} has no reviews in pos/ and neg/")
    return normalise_frame(pd.DataFrame(rows), folder.name)


def _load_hub(progress: Callable[[int, int], None] | None = None) -> dict[str, pd.DataFrame]:
    """The Hub's IMDb: its train and test parquet shards, downloaded once into the Hugging Face cache.

    Read with pandas rather than `datasets.load_dataset`, which would also fetch the unsupervised split (half of
    the repository's 84 MB) and write an Arrow copy of everything.
    """
    from .hub import fetch_repo, in_cache

    if (offline_mode() or not hub_reachable()) and not in_cache(HUB_DATASET, "dataset", HUB_DATASET_FILES):
        raise UserError(
            f"the Hugging Face Hub is not reachable and {HUB_DATASET} is not in its local cache: use --data PATH "
            "(a local IMDb copy) or 'sample'"
        )
    folder = fetch_repo(HUB_DATASET, "dataset", HUB_DATASET_FILES, progress)
    reviews = {}
    for split in ("train", "test"):
        shards = sorted(folder.glob(f"plain_text/{split}-*.parquet"))
        if not shards:
            raise UserError(f"{HUB_DATASET} on the Hub has no plain_text/{split}-*.parquet file")
        frame = pd.concat([pd.read_parquet(shard) for shard in shards], ignore_index=True)
        reviews[split] = normalise_frame(frame, f"{HUB_DATASET}[{split}]")
    return reviews


def _hub_dataset_cached() -> bool:
    from .hub import in_cache

    return in_cache(HUB_DATASET, "dataset", HUB_DATASET_FILES)


def stratified_sample(frame: pd.DataFrame, size: int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Take `size` rows with the label balance of `frame`; returns (sample, rest).

    Raises:
        UserError: when the frame has fewer rows than asked, or a class too small to stratify.
    """
    if size > len(frame):
        raise UserError(f"asked for {size} {what} reviews but the data holds only {len(frame)}")
    if size == len(frame):
        return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True), frame.iloc[:0]
    try:
        sample, rest = train_test_split(frame, train_size=size, stratify=frame["label"], random_state=seed)
    except ValueError as err:
        raise UserError(f"cannot split {size} {what} reviews stratified from {len(frame)}: {err}") from err
    return sample.reset_index(drop=True), rest.reset_index(drop=True)


def fit_sizes(config: DataConfig, reviews: dict[str, pd.DataFrame]) -> tuple[DataConfig, list[str]]:
    """Shrink sizes the user did not choose to what a small source holds, keeping their proportions."""
    if "all" in reviews:
        available = {"total": len(reviews["all"])}
        wanted = config.train_size + config.val_size + config.test_size
    else:
        available = {"total": len(reviews["train"])}
        wanted = config.train_size + config.val_size
    if wanted <= available["total"] and ("all" in reviews or config.test_size <= len(reviews["test"])):
        return config, []
    scale = min(1.0, (available["total"] * 0.95) / wanted)
    if "all" not in reviews:
        scale = min(scale, len(reviews["test"]) / config.test_size)
    fitted = replace(
        config,
        train_size=max(2, int(config.train_size * scale)),
        val_size=max(2, int(config.val_size * scale)),
        test_size=max(2, int(config.test_size * scale)),
    )
    note = (
        f"The data holds fewer reviews than the default sizes: using {fitted.train_size} / {fitted.val_size} / "
        f"{fitted.test_size} for train / validation / test."
    )
    return fitted, [note]


def split_reviews(reviews: dict[str, pd.DataFrame], config: DataConfig) -> tuple[pd.DataFrame, ...]:
    """Seeded stratified split: train and validation from the train split, test from the test split."""
    seed = config.seed
    if "all" in reviews:
        frame = reviews["all"]
        total = config.train_size + config.val_size + config.test_size
        if total > len(frame):
            raise UserError(
                f"asked for {config.train_size} + {config.val_size} + {config.test_size} = {total} reviews "
                f"but the data holds only {len(frame)}"
            )
        test, rest = stratified_sample(frame, config.test_size, seed, "test")
    else:
        test, _ = stratified_sample(reviews["test"], config.test_size, seed, "test")
        rest = reviews["train"]
        if config.train_size + config.val_size > len(rest):
            raise UserError(
                f"asked for {config.train_size} train + {config.val_size} validation reviews but the train "
                f"split holds only {len(rest)}"
            )
    train, rest = stratified_sample(rest, config.train_size, seed, "train")
    val, _ = stratified_sample(rest, config.val_size, seed + 1, "validation")
    return train, val, test


def load_splits(
    config: DataConfig, fit_to_data: bool = False, progress: Callable[[int, int], None] | None = None
) -> Splits:
    """Resolve the source, load it and split it: the one call the CLI and the app make.

    Args:
        config: source, sizes and seed.
        fit_to_data: shrink sizes the user left at their defaults when the source is smaller.
        progress: called with (bytes done, bytes in all) while the Hub's copy downloads.

    Raises:
        UserError: for any problem with the source or the sizes.
    """
    source, notes = resolve_source(config.source)
    reviews = load_reviews(source, progress)
    if fit_to_data:
        config, more = fit_sizes(config, reviews)
        notes += more
    train, val, test = split_reviews(reviews, config)
    return Splits(train=train, val=val, test=test, source=source, config=replace(config, source=source), notes=notes)


def review_hash(text: str) -> str:
    """A short, stable name for one cleaned review (16 hex digits of its SHA-1), to find shared reviews."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SplitRecord:
    """What a model trained and validated on: the source, seed and sizes, and a hash of every review.

    Kept with every trained model (in memory, in `lora_demo.json`, in saved runs), so that scoring it on reviews
    it has seen is refused instead of reported as a test result.
    """

    source: str
    seed: int
    sizes: dict[str, int]
    review_hashes: frozenset[str]

    @property
    def fingerprint(self) -> str:
        """One hash of all the reviews, the same for the same reviews in any order."""
        return hashlib.sha1("".join(sorted(self.review_hashes)).encode()).hexdigest()[:16]

    def overlap(self, texts) -> int:
        """How many of `texts` are reviews this record's model trained or validated on."""
        return sum(1 for text in texts if review_hash(text) in self.review_hashes)

    def check_unseen(self, texts, what: str = "the test reviews") -> None:
        """Raise a UserError saying how many of `texts` the model has seen, and what to do, if any.

        Raises:
            UserError: when `texts` share reviews with the training or validation reviews.
        """
        shared = self.overlap(texts)
        if shared:
            raise UserError(
                f"{shared} of {what} are among the {len(self.review_hashes)} reviews this model trained and "
                f"validated on ({self.source}, seed {self.seed}): scores on them would not be a test. Load the data "
                f"with seed {self.seed} and the sizes it was trained with ({self.sizes['train']} / "
                f"{self.sizes['val']}), or score it on a source with its own test split"
            )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "seed": self.seed,
            "sizes": dict(self.sizes),
            "fingerprint": self.fingerprint,
            "review_hashes": sorted(self.review_hashes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SplitRecord:
        return cls(data["source"], int(data["seed"]), dict(data["sizes"]), frozenset(data["review_hashes"]))


def trained_on(splits: Splits) -> SplitRecord:
    """The record of what a model trained on `splits` sees: its training and validation reviews."""
    texts = [*splits.train["text"], *splits.val["text"]]
    sizes = {"train": len(splits.train), "val": len(splits.val)}
    return SplitRecord(splits.source, splits.config.seed, sizes, frozenset(review_hash(t) for t in texts))
