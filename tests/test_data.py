"""Data: every source format, the checks on what is read, the seeded stratified split and the source order."""

import contextlib
import json
import socket
import threading
import time

import pandas as pd
import pytest

from lora_demo import data
from lora_demo.config import DataConfig, UserError
from lora_demo.data import (
    clean_text,
    fit_sizes,
    format_seq2seq,
    hub_reachable,
    label_word,
    load_reviews,
    load_splits,
    resolve_source,
    split_reviews,
    stratified_sample,
)


def unique_reviews(n: int, start: int = 0) -> pd.DataFrame:
    """`n` reviews with distinct texts, alternating negative / positive."""
    rows = [
        {"text": f"review {i}: the film was {'good' if i % 2 else 'bad'}<br />really", "label": i % 2}
        for i in range(start, start + n)
    ]
    return pd.DataFrame(rows)


def write_frame(frame: pd.DataFrame, path):
    suffix = path.suffix
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        raise AssertionError(suffix)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_folder_with_train_and_test_files(tmp_path, suffix):
    write_frame(unique_reviews(40), tmp_path / f"train{suffix}")
    write_frame(unique_reviews(20, start=1000), tmp_path / f"test{suffix}")
    reviews = load_reviews(str(tmp_path))
    assert set(reviews) == {"train", "test"}
    assert len(reviews["train"]) == 40 and len(reviews["test"]) == 20
    assert reviews["train"]["label"].tolist() == [i % 2 for i in range(40)]
    assert reviews["train"]["label"].dtype.kind == "i"
    assert reviews["test"]["text"].iloc[1] == "review 1001: the film was good really"


def test_folder_prefers_the_split_files_it_finds(tmp_path):
    write_frame(unique_reviews(10), tmp_path / "train-00000.parquet")
    write_frame(unique_reviews(6), tmp_path / "test-00000.parquet")
    (tmp_path / "notes.csv").write_text("nothing,here\n1,2\n")
    reviews = load_reviews(str(tmp_path))
    assert (len(reviews["train"]), len(reviews["test"])) == (10, 6)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["negative", "positive", "Positive", " NEGATIVE "], [0, 1, 1, 0]),
        (["neg", "pos", "pos", "neg"], [0, 1, 1, 0]),
        ([0, 1, 1, 0], [0, 1, 1, 0]),
        (["0", "1", "1", "0"], [0, 1, 1, 0]),
        ([0.0, 1.0, 1.0, 0.0], [0, 1, 1, 0]),
    ],
)
def test_labels_as_numbers_or_words(tmp_path, raw, expected):
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": raw})
    reviews = load_reviews(str(write_frame(frame, tmp_path / "reviews.csv")))
    assert reviews["all"]["label"].tolist() == expected


def test_single_file_is_split_three_ways(tmp_path):
    path = write_frame(unique_reviews(60), tmp_path / "all.jsonl")
    assert set(load_reviews(str(path))) == {"all"}
    splits = load_splits(DataConfig(source=str(path), train_size=20, val_size=10, test_size=10, seed=3))
    assert splits.sizes() == {"train": 20, "val": 10, "test": 10}
    texts = [set(frame["text"]) for frame in (splits.train, splits.val, splits.test)]
    assert not texts[0] & texts[1] and not texts[0] & texts[2] and not texts[1] & texts[2]
    assert splits.label_counts()["train"] == {"negative": 10, "positive": 10}
    assert splits.source == str(path)


def write_aclimdb(root, per_class: int):
    for split in ("train", "test"):
        for sub, word in (("pos", "great"), ("neg", "awful")):
            folder = root / "aclImdb" / split / sub
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}_7.txt").write_text(f"{split} {i}: an {word} film.<br /><br />Really &amp; truly.")


@pytest.mark.parametrize("inside", [False, True])
def test_aclimdb_folder(tmp_path, inside):
    write_aclimdb(tmp_path, per_class=5)
    source = tmp_path / "aclImdb" if inside else tmp_path
    reviews = load_reviews(str(source))
    assert set(reviews) == {"train", "test"}
    train = reviews["train"]
    assert len(train) == 10 and train["label"].sum() == 5
    positive = train[train["label"] == 1]["text"].tolist()
    assert all("great" in text for text in positive)
    assert "train 0: an great film. Really & truly." in positive


def test_aclimdb_folder_without_reviews(tmp_path):
    for split in ("train", "test"):
        for sub in ("pos", "neg"):
            (tmp_path / split / sub).mkdir(parents=True)
    with pytest.raises(UserError, match="no reviews in pos/ and neg/"):
        load_reviews(str(tmp_path))


def test_builtin_sample_is_balanced():
    frame = load_reviews("builtin")["all"]
    assert len(frame) >= 120
    counts = frame["label"].value_counts().to_dict()
    assert counts[0] == counts[1] == len(frame) // 2
    assert (frame["text"].str.len() > 0).all()
    assert not frame["text"].str.contains("<br").any()


def test_shipped_imdb_sample_is_real_balanced_and_disjoint():
    reviews = load_reviews("sample")
    assert set(reviews) == {"train", "test"}
    assert len(reviews["train"]) == len(reviews["test"]) == 1000
    for frame in reviews.values():
        assert frame["label"].value_counts().to_dict() == {0: 500, 1: 500}
        assert not frame["text"].str.contains("<br").any()  # cleaned on the way in
        assert frame["text"].str.split().str.len().median() > 100  # IMDb's long reviews, not the short ones
    assert not set(reviews["train"]["text"]) & set(reviews["test"]["text"])
    assert data.count_sample() == (1000, 1000)


def test_offline_default_runs_the_study_sizes_on_the_sample():
    splits = load_splits(DataConfig(test_size=1000), fit_to_data=True)
    assert splits.source == "sample" and splits.sizes() == {"train": 500, "val": 200, "test": 1000}
    assert any("sample of real IMDb" in note for note in splits.notes)
    assert not any("fewer reviews" in note for note in splits.notes)


def test_short_reviews_are_every_hand_written_review():
    short = data.load_short_reviews()
    assert len(short) == data.count_builtin() == 160
    assert short["label"].value_counts().to_dict() == {0: 80, 1: 80}
    assert short["text"].str.split().str.len().median() < 40
    assert not set(short["text"]) & set(load_reviews("sample")["train"]["text"])


def test_the_hand_written_reviews_split_once_into_a_dev_and_a_test_half():
    halves = data.short_review_halves()
    dev, test = halves["dev"], halves["test"]
    assert len(dev) == len(test) == 80 and dev["label"].sum() == test["label"].sum() == 40
    assert not set(dev["text"]) & set(test["text"])
    assert sorted([*dev["text"], *test["text"]]) == sorted(data.load_short_reviews()["text"])
    assert data.short_review_halves()["test"]["text"].tolist() == test["text"].tolist()  # the same split each time


def test_the_imdb_test_endings_are_short_balanced_and_apart_from_the_hand_written_ones():
    endings = data.load_imdb_sentences()
    assert len(endings) == 240 and endings["label"].value_counts().to_dict() == {0: 120, 1: 120}
    assert endings["text"].str.split().str.len().between(6, 60).all()
    assert not set(endings["text"]) & set(data.load_short_reviews()["text"])


def test_missing_source():
    with pytest.raises(UserError, match="does not exist"):
        load_reviews("/nonexistent/reviews.csv")


def test_wrong_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["a", "b"], "sentiment": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        load_reviews(str(path))
    assert "no text or label column" in str(err.value)
    assert "review, sentiment" in str(err.value)


def test_missing_label_column_only(tmp_path):
    path = write_frame(pd.DataFrame({"text": ["a", "b"], "stars": [1, 9]}), tmp_path / "reviews.jsonl")
    with pytest.raises(UserError, match="has no label column"):
        load_reviews(str(path))


@pytest.mark.parametrize("labels", [["positive", "maybe"], [0, 2], ["1", "-1"]])
def test_bad_labels(tmp_path, labels):
    path = write_frame(pd.DataFrame({"text": ["a", "b"], "label": labels}), tmp_path / "reviews.csv")
    with pytest.raises(UserError, match="labels must be 0/1 or negative/positive"):
        load_reviews(str(path))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".json"])
def test_empty_file(tmp_path, suffix):
    (tmp_path / f"reviews{suffix}").write_bytes(b"")
    with pytest.raises(UserError, match=f"reviews{suffix} is empty"):
        load_reviews(str(tmp_path / f"reviews{suffix}"))


def test_empty_train_file_in_a_folder(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"")
    write_frame(unique_reviews(4), tmp_path / "test.csv")
    with pytest.raises(UserError, match="train.csv is empty"):
        load_reviews(str(tmp_path))


@pytest.mark.parametrize("content", ["text,label\n", 'text,label\n"",1\n" ",0\n'])
def test_file_with_no_reviews(tmp_path, content):
    (tmp_path / "reviews.csv").write_text(content)
    with pytest.raises(UserError, match="reviews.csv holds no reviews"):
        load_reviews(str(tmp_path / "reviews.csv"))


def test_unsupported_file_type(tmp_path):
    (tmp_path / "reviews.txt").write_text("text,label\na,1\n")
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        load_reviews(str(tmp_path / "reviews.txt"))


def test_folder_without_split_files(tmp_path):
    write_frame(unique_reviews(4), tmp_path / "reviews.csv")
    with pytest.raises(UserError, match="holds no train and test files"):
        load_reviews(str(tmp_path))


def test_blank_reviews_are_dropped(tmp_path):
    frame = pd.DataFrame({"text": ["fine film", "<br />", "   ", None, "bad"], "label": [1, 0, 1, 0, 0]})
    reviews = load_reviews(str(write_frame(frame, tmp_path / "reviews.jsonl")))["all"]
    assert reviews["text"].tolist() == ["fine film", "bad"]
    assert reviews["label"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Great film.<br /><br />Go see it.", "Great film. Go see it."),
        ("A<br>B<BR/>C", "A B C"),
        ("Tom &amp; Jerry &quot;rocks&quot; &#39;twice&#39;", "Tom & Jerry \"rocks\" 'twice'"),
        ("  many    spaces\n\tand lines  ", "many spaces and lines"),
        ("<i>italic</i> text", "italic text"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_format_seq2seq_and_label_word():
    assert format_seq2seq("A fine film.") == "review: A fine film."
    assert label_word(0) == "negative"
    assert label_word(1) == "positive"


@pytest.fixture
def two_splits():
    return {"train": unique_reviews(100), "test": unique_reviews(40, start=1000)}


def test_split_sizes_and_stratification(two_splits):
    train, val, test = split_reviews(two_splits, DataConfig(train_size=30, val_size=20, test_size=10))
    assert (len(train), len(val), len(test)) == (30, 20, 10)
    for frame, half in ((train, 15), (val, 10), (test, 5)):
        assert frame["label"].value_counts().to_dict() == {0: half, 1: half}
    assert set(test["text"]) <= set(two_splits["test"]["text"])  # test comes from the test split
    assert set(train["text"]) | set(val["text"]) <= set(two_splits["train"]["text"])  # the rest from train
    assert not set(train["text"]) & set(val["text"])


def test_split_is_seeded(two_splits):
    config = DataConfig(train_size=30, val_size=20, test_size=10, seed=7)
    first = split_reviews(two_splits, config)
    again = split_reviews(two_splits, config)
    other = split_reviews(two_splits, DataConfig(train_size=30, val_size=20, test_size=10, seed=8))
    for a, b in zip(first, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert set(first[0]["text"]) != set(other[0]["text"])
    assert set(first[2]["text"]) != set(other[2]["text"])


def test_split_sizes_larger_than_the_data(two_splits):
    with pytest.raises(UserError, match="holds only 100"):
        split_reviews(two_splits, DataConfig(train_size=90, val_size=20, test_size=10))
    with pytest.raises(UserError, match="asked for 50 test reviews but the data holds only 40"):
        split_reviews(two_splits, DataConfig(train_size=10, val_size=10, test_size=50))
    with pytest.raises(UserError, match="= 130 reviews but the data holds only 100"):
        split_reviews({"all": unique_reviews(100)}, DataConfig(train_size=100, val_size=20, test_size=10))


def test_stratified_sample_of_everything_and_too_small_a_class():
    frame = unique_reviews(10)
    sample, rest = stratified_sample(frame, 10, seed=1, what="train")
    assert len(sample) == 10 and rest.empty
    assert sorted(sample["text"]) == sorted(frame["text"])
    lopsided = pd.DataFrame({"text": list("abcdef"), "label": [0, 0, 0, 0, 0, 1]})
    with pytest.raises(UserError, match="cannot split"):
        stratified_sample(lopsided, 2, seed=1, what="train")


def test_fit_sizes_shrinks_to_a_small_source():
    reviews = {"all": unique_reviews(160)}
    fitted, notes = fit_sizes(DataConfig(), reviews)
    assert fitted.train_size + fitted.val_size + fitted.test_size <= 160
    assert (fitted.train_size, fitted.val_size, fitted.test_size) == (44, 17, 89)  # 500 / 200 / 1000, scaled
    assert len(notes) == 1 and "44 / 17 / 89" in notes[0]
    big = {"train": unique_reviews(1000), "test": unique_reviews(1000)}
    assert fit_sizes(DataConfig(), big) == (DataConfig(), [])


def test_fit_sizes_when_the_test_split_is_the_small_one():
    reviews = {"train": unique_reviews(1000), "test": unique_reviews(50)}
    fitted, notes = fit_sizes(DataConfig(), reviews)
    assert fitted.test_size <= 50 and notes
    train, val, test = split_reviews(reviews, fitted)
    assert len(test) == fitted.test_size


def test_load_splits_fit_to_data_on_builtin():
    splits = load_splits(DataConfig(source="builtin"), fit_to_data=True)
    assert splits.source == "builtin"
    assert splits.sizes() == {"train": 44, "val": 17, "test": 89}
    assert splits.config.train_size == 44 and splits.config.source == "builtin"
    assert any("fewer reviews" in note for note in splits.notes)
    with pytest.raises(UserError, match="holds only 160"):
        load_splits(DataConfig(source="builtin"), fit_to_data=False)


def test_summary_is_json_ready():
    splits = load_splits(DataConfig(source="builtin", train_size=20, val_size=10, test_size=10, seed=5))
    summary = json.loads(json.dumps(splits.summary()))
    assert summary["sizes"] == {"train": 20, "val": 10, "test": 10}
    assert summary["label_counts"]["val"] == {"negative": 5, "positive": 5}
    assert summary["seed"] == 5 and summary["source"] == "builtin" and summary["notes"] == []


def test_explicit_source_beats_environment_beats_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "hub_reachable", lambda: True)
    assert resolve_source(None) == ("hub", [])
    monkeypatch.setenv("LORA_DEMO_DATA", str(tmp_path))
    assert resolve_source(None) == (str(tmp_path), [])
    assert resolve_source("builtin") == ("builtin", [])


def test_offline_falls_back_to_the_imdb_sample_without_waiting(monkeypatch):
    monkeypatch.setattr(data, "_ask_endpoint", lambda *a, **k: pytest.fail("tried the network offline"))
    started = time.perf_counter()
    reachable = hub_reachable()
    elapsed = time.perf_counter() - started
    assert reachable is False
    assert elapsed < 1.0  # the offline flag is read, the network is never tried
    source, notes = resolve_source(None)
    assert source == "sample"
    assert len(notes) == 1 and "a 1,000 + 1,000 review sample of real IMDb (`sample`" in notes[0]
    assert "LORA_DEMO_DATA" in notes[0]


@pytest.mark.parametrize(
    ("endpoint", "asked"),
    [(None, "https://huggingface.co"), ("http://mirror.local:8080/", "http://mirror.local:8080")],
)
def test_hub_reachable_asks_the_endpoint_and_trusts_the_answer_for_a_while(monkeypatch, endpoint, asked):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    if endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    else:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
    calls, now = [], [1000.0]
    monkeypatch.setattr(data, "_ask_endpoint", lambda url, timeout: calls.append((url, timeout)) or True)
    monkeypatch.setattr(data.time, "monotonic", lambda: now[0])
    assert hub_reachable() is True
    now[0] += data.PROBE_SECONDS - 1
    assert hub_reachable() is True
    assert calls == [(asked, 3.0)]  # asked once while the answer is fresh
    now[0] += 2
    assert hub_reachable() is True
    assert len(calls) == 2  # and again once it is stale: a Hub that recovers is used again


@contextlib.contextmanager
def local_server(answer: bytes | None):
    """A server on 127.0.0.1 that answers each connection with `answer`, or holds it silent (None)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []

    def serve():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)
                if answer is not None:
                    conn.recv(4096)
                    conn.sendall(answer)
                    conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_any_http_answer_is_reachable_and_silence_is_not():
    with local_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n") as url:
        assert data._ask_endpoint(url, timeout=3.0) is True
    with local_server(None) as url:  # accepts the connection, never answers: a Hub that is too slow
        started = time.perf_counter()
        assert data._ask_endpoint(url, timeout=0.5) is False
        assert time.perf_counter() - started < 2.0
    with local_server(None) as url:
        pass
    assert data._ask_endpoint(url, timeout=0.5) is False  # nobody listens


def test_hub_unreachable_when_the_endpoint_does_not_answer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(data, "_ask_endpoint", lambda url, timeout: False)
    assert hub_reachable() is False
    assert resolve_source(None)[0] == "sample"


def test_hub_source_offline_is_a_user_error():
    with pytest.raises(UserError, match="not reachable"):
        load_reviews("hub")


def test_data_from_environment(monkeypatch, tmp_path):
    write_frame(unique_reviews(30), tmp_path / "train.csv")
    write_frame(unique_reviews(10, start=500), tmp_path / "test.csv")
    monkeypatch.setenv("LORA_DEMO_DATA", str(tmp_path))
    splits = load_splits(DataConfig(train_size=10, val_size=6, test_size=4))
    assert splits.source == str(tmp_path) and splits.notes == []
    assert splits.sizes() == {"train": 10, "val": 6, "test": 4}


@pytest.mark.needs_data
def test_real_imdb_parquet(imdb_dir):
    splits = load_splits(DataConfig(source=str(imdb_dir), train_size=40, val_size=20, test_size=20))
    assert splits.label_counts()["train"] == {"negative": 20, "positive": 20}
    assert not splits.train["text"].str.contains("<br", regex=False).any()
    assert not set(splits.train["text"]) & set(splits.val["text"])


def test_a_test_review_that_duplicates_a_training_review_leaves_the_test_set(tmp_path):
    # IMDb's train and test splits share a few identical reviews: none may be a test of a model trained on it
    train = unique_reviews(60)
    test = pd.concat([unique_reviews(40).assign(text=lambda f: "test " + f["text"]), train.iloc[:30]])
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    splits = load_splits(DataConfig(source=str(tmp_path), train_size=40, val_size=20, test_size=70, seed=1))
    seen = set(splits.train["text"]) | set(splits.val["text"])
    assert not set(splits.test["text"]) & seen
    assert len(splits.test) == 40 and "Left out of the test set: 30 of its 70 reviews" in splits.notes[-1]
