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

from .cache import Cache
from .config import ASSETS_DIR, LABEL_NAMES, DataConfig, UserError

logger = logging.getLogger(__name__)

HUB_DATASET = "stanfordnlp/imdb"
HUB_DATASET_FILES = ("plain_text/train-*.parquet", "plain_text/test-*.parquet")
BUILTIN_FILE = ASSETS_DIR / "reviews.jsonl"
IMDB_SENTENCES_FILE = ASSETS_DIR / "imdb-test-sentences.jsonl"  # written by scripts/make_imdb_sentences.py
SHORT_HALVES_SEED = 160  # the one split of the hand-written reviews into a dev and a test half
SAMPLE_DIR = ASSETS_DIR / "imdb-sample"  # written by scripts/make_imdb_sample.py
DATA_ENV = "LORA_DEMO_DATA"
NAMED_SOURCES = ("hub", "sample", "builtin")  # sources given by name rather than by path
SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
_LABEL_WORDS = {"negative": 0, "neg": 0, "positive": 1, "pos": 1, "0": 0, "1": 1}
COLUMNS = ("text", "label")

# Caps on what one split (or one single file) may hold, checked before it is read whole: a parquet file of a
# few MB can hold millions of rows. IMDb's splits hold 25,000 reviews, about 33 million characters in all,
# the longest review about 14,000 characters.
MAX_ROWS = 100_000
MAX_REVIEW_CHARS = 100_000
MAX_TOTAL_CHARS = 100_000_000
MAX_TEXT_FILE_BYTES = 256 * 2**20  # CSV and JSON are read as they are stored, so their size bounds the text
CHUNK_ROWS = 2_000  # rows read and checked at a time
_SHARD = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})$")  # train-00000-of-00002


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
    note = (
        f"Using {describe_source('sample')} (`sample`, shipped in assets/imdb-sample): no data was given and the "
        f"Hugging Face Hub is not reachable. Point at the full data set with --data PATH or {DATA_ENV}=PATH."
    )
    logger.info(note)  # callers show the note to the user
    return "sample", [note]


@lru_cache(maxsize=1)
def count_sample() -> tuple[int, int]:
    """Reviews in the shipped IMDb sample: (train, test)."""
    import pyarrow.parquet as pq

    return tuple(pq.read_metadata(SAMPLE_DIR / f"{split}.parquet").num_rows for split in ("train", "test"))


def describe_source(source: str) -> str:
    """What a source is, in words for the user, with its counts read from the files.

    `sample`: "a 1,000 + 1,000 review sample of real IMDb"; `builtin`: "the 160 hand-written short reviews
    shipped with the app, not IMDb"; `hub`: IMDb from the Hub; anything else (a path) is named as it is.
    """
    if source == "sample":
        train, test = count_sample()
        return f"a {train:,} + {test:,} review sample of real IMDb"
    if source == "builtin":
        return f"the {count_builtin():,} hand-written short reviews shipped with the app, not IMDb"
    if source == "hub":
        return f"IMDb from the Hugging Face Hub ({HUB_DATASET})"
    return f"`{source}`"


def load_short_reviews() -> pd.DataFrame:
    """The hand-written short reviews of `assets/reviews.jsonl`: the out-of-domain test set.

    They are shorter and plainer than IMDb's (a median of 25 words), like the reviews people type in the
    app, and none of them is in IMDb; every one is a test review, none is ever trained on by default.
    """
    return read_split([BUILTIN_FILE])


def short_review_halves() -> dict[str, pd.DataFrame]:
    """The hand-written short reviews split once, seeded and stratified, into `dev` (choices of recipe and
    settings may look at it) and `test` (reported, never used to choose)."""
    frame = load_short_reviews()
    dev, test = train_test_split(frame, test_size=0.5, stratify=frame["label"], random_state=SHORT_HALVES_SEED)
    return {"dev": dev.sort_index(), "test": test.sort_index()}


def load_imdb_sentences() -> pd.DataFrame:
    """The second short-review test set: the last 1-3 sentences of 240 IMDb *test* reviews, labelled as their
    review (`scripts/make_imdb_sentences.py`); about one in six carries no sentiment of its own or reads against
    its review's label (checked by hand on 40 of them), which caps what any model scores on it."""
    return read_split([IMDB_SENTENCES_FILE])


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
        return {"all": read_split([BUILTIN_FILE])}
    if source == "sample":
        return {split: read_split([SAMPLE_DIR / f"{split}.parquet"]) for split in ("train", "test")}
    if source == "hub":
        return _load_hub(progress)
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data source {source!r} does not exist: give a folder, a file, 'hub', 'sample' or 'builtin'")
    if path.is_file():
        return {"all": read_split([path])}
    imdb_root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    if (imdb_root / "train" / "pos").is_dir():
        return {split: _read_aclimdb(imdb_root / split) for split in ("train", "test")}
    found = {split: _find_split_files(path, split) for split in ("train", "test")}
    if not all(found.values()):
        raise UserError(
            f"folder {source!r} holds no train and test files: expected train.parquet/csv/jsonl and "
            f"test.parquet/csv/jsonl, or an aclImdb folder with train/pos and train/neg"
        )
    return {split: read_split(files) for split, files in found.items()}


def _find_split_files(folder: Path, split: str) -> list[Path]:
    """The file of a split (`train.parquet`), or all its shards in order (`train-00000-of-00002.parquet`, ...).

    Raises:
        UserError: shards with one missing, or several files that could each be the split.
    """
    for suffix in SUFFIXES:
        candidates = sorted(p for p in folder.glob(f"{split}*{suffix}") if p.is_file())
        exact = [p for p in candidates if p.stem == split]
        shards = [p for p in candidates if (m := _SHARD.match(p.stem)) and m["split"] == split]
        if exact and not shards:
            return exact
        if len(candidates) == 1 and not shards:
            return candidates
        if shards and len(shards) == len(candidates):
            return _complete_shards(shards, split)
        if candidates:
            raise UserError(
                f"{folder}: several files could be the {split} split ({', '.join(p.name for p in candidates[:4])}): "
                f"keep one {split}{suffix}, or shards named {split}-00000-of-00002{suffix}, ..."
            )
    return []


def _complete_shards(shards: list[Path], split: str) -> list[Path]:
    totals = {int(_SHARD.match(p.stem)["total"]) for p in shards}
    indices = sorted(int(_SHARD.match(p.stem)["index"]) for p in shards)
    if len(totals) != 1 or indices != list(range(next(iter(totals)))):
        raise UserError(
            f"the {split} split is sharded but incomplete or mixed ({', '.join(p.name for p in shards[:4])}): "
            f"expected every shard {split}-00000-of-N to {split}-(N-1)-of-N"
        )
    return shards


@dataclass
class ReadBudget:
    """What is left of one split's caps while its files are read, so the caps hold for all shards together."""

    name: str
    rows: int = MAX_ROWS
    chars: int = MAX_TOTAL_CHARS

    def take_rows(self, rows: int) -> None:
        self.rows -= rows
        if self.rows < 0:
            raise UserError(
                f"{self.name} holds at least {MAX_ROWS - self.rows:,} reviews, more than the limit of {MAX_ROWS:,} "
                f"per split (IMDb's splits hold 25,000): use a smaller file"
            )

    def take_text(self, lengths) -> None:
        """Count the characters of a chunk's texts (any iterable of lengths, None for missing)."""
        lengths = [n for n in lengths if n is not None]
        self.take_chars(max(lengths, default=0), sum(lengths))

    def take_chars(self, longest: int, total: int) -> None:
        """Count a chunk of text by its longest value and its total length."""
        if longest > MAX_REVIEW_CHARS:
            raise UserError(
                f"{self.name} has a review of {longest:,} characters: the limit is {MAX_REVIEW_CHARS:,} "
                f"per review (IMDb's longest is about 14,000)"
            )
        self.chars -= total
        if self.chars < 0:
            raise UserError(
                f"{self.name} holds more than {MAX_TOTAL_CHARS:,} characters of text: the limit is "
                f"{MAX_TOTAL_CHARS:,} per split (IMDb's splits hold about 33 million); use a smaller file"
            )


def read_split(files: list[Path]) -> pd.DataFrame:
    """Read one split from its file or shards, within the caps, and clean it (see `normalise_frame`).

    Raises:
        UserError: an unreadable or empty file, missing columns, bad labels, or more than the caps allow.
    """
    name = files[0].name if len(files) == 1 else f"{_SHARD.match(files[0].stem)['split']} ({len(files)} shards)"
    budget = ReadBudget(name)
    frames = [_read_table(path, budget) for path in files]
    return normalise_frame(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], name)


def _read_table(path: Path, budget: ReadBudget) -> pd.DataFrame:
    """The `text` and `label` columns of one file, read in chunks that are checked against `budget`."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise UserError(f"{path.name} is empty: expected reviews with a text and a label column")
    if suffix not in (".parquet", ".csv", ".jsonl", ".json"):
        raise UserError(f"{path.name}: unsupported file type {suffix!r}; use .parquet, .csv or .jsonl")
    if suffix != ".parquet" and path.stat().st_size > MAX_TEXT_FILE_BYTES:
        raise UserError(
            f"{path.name} is {path.stat().st_size / 2**20:,.0f} MB: the limit for {suffix[1:]} files is "
            f"{MAX_TEXT_FILE_BYTES // 2**20} MB (IMDb's train split is about 33 MB); use a smaller file or parquet"
        )
    try:
        if suffix == ".parquet":
            return _read_parquet(path, budget)
        if suffix == ".json":  # one JSON document cannot be read in parts; its size is capped above
            return _checked_chunk(pd.read_json(path), path, budget)
        if suffix == ".csv":
            reader = pd.read_csv(path, chunksize=CHUNK_ROWS)
        else:
            reader = pd.read_json(path, lines=True, chunksize=CHUNK_ROWS)
        with reader:
            chunks = [_checked_chunk(chunk, path, budget) for chunk in reader]
    except UserError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise UserError(f"{path.name} could not be read as {suffix[1:]}: {str(err).splitlines()[0][:200]}") from err
    return pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]


def _checked_chunk(chunk: pd.DataFrame, path: Path, budget: ReadBudget) -> pd.DataFrame:
    """Keep a chunk's text and label columns after counting its rows and characters against the caps."""
    _check_columns(list(chunk.columns), path.name)
    chunk = chunk[list(COLUMNS)]
    budget.take_rows(len(chunk))
    budget.take_text(chunk["text"].dropna().astype(str).str.len().tolist())
    return chunk


def _check_columns(columns: list, name: str) -> None:
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{name} has no {' or '.join(missing)} column (found: {', '.join(map(str, columns))})")


def _read_parquet(path: Path, budget: ReadBudget) -> pd.DataFrame:
    """Rows from the footer before anything is read; then batches kept dictionary-encoded until measured."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    _check_columns(schema.names, path.name)
    types = {name: schema.field(name).type for name in COLUMNS}
    if pa.types.is_nested(types["text"]) or pa.types.is_nested(types["label"]):
        raise UserError(f"{path.name}: the text and label columns must hold plain values, not lists or records")
    strings = [n for n, t in types.items() if pa.types.is_string(t) or pa.types.is_large_string(t)]
    parquet = pq.ParquetFile(path, read_dictionary=strings)
    metadata = parquet.metadata
    budget.take_rows(metadata.num_rows)
    # stored (decompressed) bytes bound what reading plain-encoded pages allocates; checked before reading them
    positions = [parquet.schema_arrow.get_field_index(n) for n in COLUMNS]
    stored = sum(
        metadata.row_group(g).column(i).total_uncompressed_size
        for g in range(metadata.num_row_groups)
        for i in positions
    )
    if stored > 2 * MAX_TOTAL_CHARS:
        raise UserError(
            f"{path.name} holds {stored / 2**20:,.0f} MB of text and labels once decompressed: the limit is "
            f"{2 * MAX_TOTAL_CHARS // 2**20:,} MB (IMDb's splits hold about 33 MB); use a smaller file"
        )
    frames = []
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=list(COLUMNS)):
        for name in COLUMNS:  # a dictionary-encoded label can be as large as a text once decoded
            lengths = _decoded_lengths(batch.column(name))
            budget.take_chars(pc.max(lengths).as_py() or 0, pc.sum(lengths).as_py() or 0)
        frames.append(_decode(batch).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))


def _decoded_lengths(array):
    """Characters of each value once decoded, computed from a dictionary's values without decoding them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(array.type):
        return pc.take(_decoded_lengths(array.dictionary), array.indices)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return pc.utf8_length(array)
    if pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        return pc.binary_length(array)
    return pa.nulls(len(array), pa.int64())  # numbers and the like: short once turned into text


def _decode(batch):
    """A record batch with its dictionary-encoded columns turned back into plain ones."""
    import pyarrow as pa

    columns = [
        column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def normalise_frame(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the columns, map word labels to 0/1, clean the text and drop empty reviews."""
    _check_columns(list(frame.columns), name)
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
    files = [(label, file) for label, sub in ((0, "neg"), (1, "pos")) for file in sorted((folder / sub).glob("*.txt"))]
    if not files:
        raise UserError(f"{folder} has no reviews in pos/ and neg/")
    budget = ReadBudget(f"{folder.name}/")
    budget.take_rows(len(files))
    budget.take_text(file.stat().st_size for _, file in files)  # bytes: at least as many as characters
    rows = [{"text": file.read_text(encoding="utf-8", errors="replace"), "label": label} for label, file in files]
    return normalise_frame(pd.DataFrame(rows), folder.name)


def _load_hub(progress: Callable[[int, int], None] | None = None, read=None) -> dict[str, pd.DataFrame]:
    """The Hub's IMDb: its train and test parquet shards, downloaded once into the Hugging Face cache, read by
    `read(folder)` (default: `_read_hub`).

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
    return (read or _read_hub)(folder)


def _read_hub(folder: Path) -> dict[str, pd.DataFrame]:
    reviews = {}
    for split in ("train", "test"):
        shards = sorted(folder.glob(f"plain_text/{split}-*.parquet"))
        if not shards:
            raise UserError(f"{HUB_DATASET} on the Hub has no plain_text/{split}-*.parquet file")
        reviews[split] = read_split(shards)  # within the same caps as a local file
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


SHARED_SOURCES = 3  # cleaned sources kept per process, shared read-only by every session that loads them


def shared_reviews(source: str, progress: Callable[[int, int], None] | None = None) -> dict[str, pd.DataFrame]:
    """`load_reviews(source)`, read and cleaned once per process while its files are unchanged: every visitor
    on the same data shares one copy (read-only: splitting copies what it takes). The Hub's copy is named by its
    snapshot folder once fetched, so it is read again only when the Hub has a new commit."""
    if source == "hub":
        return _load_hub(progress, read=lambda folder: _SOURCES.get(("hub", str(folder)), lambda: _read_hub(folder)))
    return _SOURCES.get((source, _signature(source)), lambda: load_reviews(source, progress))


_SOURCES = Cache(SHARED_SOURCES)


def _signature(source: str) -> tuple:
    """What says a source's files are unchanged: each file's path, size and modification time."""
    if source in ("builtin", "sample"):
        return ()
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if len(files) > 10_000:  # an aclImdb folder: one file per review; its folder's own times stand for them
        files = sorted(p for p in path.rglob("*") if p.is_dir()) + [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


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
    reviews = shared_reviews(source, progress)
    if fit_to_data:
        config, more = fit_sizes(config, reviews)
        notes += more
    train, val, test = split_reviews(reviews, config)
    test, dropped = drop_seen_reviews(test, [train, val])
    if dropped:
        notes.append(
            f"Left out of the test set: {dropped} of its {len(test) + dropped} reviews, which stand word for word "
            "among the training or validation reviews too (the data holds duplicates)"
        )
    return Splits(train=train, val=val, test=test, source=source, config=replace(config, source=source), notes=notes)


def drop_seen_reviews(test: pd.DataFrame, seen: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """`test` without the reviews whose text is also in one of `seen`, and how many were dropped.

    IMDb's own train and test splits share a few identical reviews; a model must never be tested on a review it
    trained on, so such a review leaves the test set (the rest of the split is unchanged).
    """
    texts = set().union(*(frame["text"] for frame in seen))
    keep = ~test["text"].isin(texts)
    return test[keep].reset_index(drop=True), int((~keep).sum())


def review_hash(text: str) -> str:
    """A short, stable name for one cleaned review (16 hex digits of its SHA-1), to find shared reviews."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def texts_fingerprint(texts) -> str:
    """A short, stable name for a list of texts in its order (a hash of their `review_hash`es)."""
    return review_hash("\n".join(review_hash(text) for text in texts))


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
