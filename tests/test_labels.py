"""Labels that are true: the header, the data-source dropdown and the notes name each source as what it is.

The shipped sample of real IMDb (`sample`) is never called built-in and carries no warning; the warning is for
the hand-written short reviews (`builtin`) alone; counts come from the files, the study's figures are labelled
as what the original study reported.
"""

from __future__ import annotations

import pytest

from lora_demo import data, ui
from lora_demo.config import STUDY_REPORTED_ACCURACY, DataConfig
from lora_demo.ui import dataset
from lora_demo.ui.session import SessionData

SIZES = {"train_size": 4, "val_size": 2, "test_size": 2}
WARNING = "⚠️"


def data_line(header: str) -> str:
    """The header's `**Data:** …` sentence (the first paragraph is the study, the same for every source)."""
    return header.split("**Data:** ", 1)[1].split("\n", 1)[0]


def loaded_header(source: str, shown_as: str | None = None) -> str:
    session = SessionData()
    session.study.load_data(DataConfig(source=source, **SIZES), shown_as=shown_as)
    return ui.session_header(session)


@pytest.fixture
def local_folder(tmp_path, make_reviews):
    for split, seed in (("train", 1), ("test", 2)):
        make_reviews(12, seed).to_parquet(tmp_path / f"{split}.parquet")
    return tmp_path


@pytest.fixture
def fake_hub(monkeypatch, make_reviews):
    reviews = {"train": make_reviews(12, 3), "test": make_reviews(12, 4)}
    monkeypatch.setattr(data, "_load_hub", lambda progress=None, read=None: {k: v.copy() for k, v in reviews.items()})


def test_the_imdb_sample_is_named_with_its_counts_and_no_warning():
    train, test = data.count_sample()
    header = loaded_header("sample")
    assert data_line(header) == f"a {train:,} + {test:,} review sample of real IMDb."
    assert (train, test) == (1000, 1000)
    assert WARNING not in header and "built-in" not in header.lower()


def test_the_hand_written_reviews_are_named_and_warned_about():
    header = loaded_header("builtin")
    count = data.count_builtin()
    assert data_line(header) == f"the {count} hand-written short reviews shipped with the app, not IMDb."
    warning = header.split("\n\n")[-1]
    assert warning.startswith(f"> {WARNING} **Built-in sample in use.** The data is the 160 hand-written short")
    assert header.count(WARNING) == 1


def test_a_local_folder_hub_and_upload_are_named_without_a_warning(local_folder, fake_hub, tmp_path, make_reviews):
    upload = tmp_path / "my reviews.csv"
    make_reviews(12, 5).to_csv(upload, index=False)
    path, shown_as = dataset.data_source("upload", str(upload))
    headers = {
        "local": loaded_header(str(local_folder)),
        "hub": loaded_header("hub"),
        "upload": loaded_header(path, shown_as),
    }
    assert data_line(headers["local"]) == f"the server's local copy, `{local_folder}`."
    assert data_line(headers["hub"]) == "IMDb from the Hugging Face Hub (stanfordnlp/imdb)."
    assert data_line(headers["upload"]) == "your file my reviews.csv."
    for header in headers.values():
        assert WARNING not in header and "built-in" not in header.lower()


@pytest.mark.parametrize(
    ("default", "named"),
    [
        ("sample", "a 1,000 + 1,000 review sample of real IMDb (no local copy here and no Hub)"),
        ("hub", "IMDb from the Hugging Face Hub (stanfordnlp/imdb)"),
        ("/srv/imdb", "its local copy"),
    ],
)
def test_the_default_choice_and_the_header_say_what_default_resolves_to(monkeypatch, default, named):
    choices = dict((value, label) for label, value in dataset.source_choices(default))
    assert choices["default"] == f"The server's default: {named}"
    assert choices["builtin"].startswith(f"The built-in sample: the {data.count_builtin()} hand-written")
    # before any load the header names the source the default resolves to
    monkeypatch.setattr(ui, "startup_source", lambda: default)
    header = ui.session_header(SessionData())
    expected = {"sample": "a 1,000 + 1,000 review sample of real IMDb", "hub": named}.get(
        default, f"the server's local copy, `{default}`"
    )
    assert data_line(header) == expected + "."
    assert WARNING not in header


def test_no_text_calls_the_imdb_sample_built_in(monkeypatch):
    """Every rendered label that mentions IMDb's sample or the default: none says built-in; only `builtin`'s does."""
    monkeypatch.setattr(ui, "startup_source", lambda: "sample")
    texts = [ui.session_header(SessionData()), loaded_header("sample")]
    for default in ("sample", "hub", "/srv/imdb"):
        texts += [label for label, value in dataset.source_choices(default) if value != "builtin"]
    texts += [dataset.describe_splits(SessionData().study.load_data(DataConfig(source="sample", **SIZES)))]
    texts += data.resolve_source(None)[1]  # the CLI's note when it falls back to the sample
    assert texts[-1].startswith("Using a 1,000 + 1,000 review sample of real IMDb (`sample`")
    for text in texts:
        assert "built-in" not in text.lower() and "builtin" not in text.lower() and WARNING not in text, text


def test_the_header_labels_the_studys_figures_as_its_reported_results():
    zero_shot, lora = STUDY_REPORTED_ACCURACY["zero-shot"], STUDY_REPORTED_ACCURACY["lora"]
    assert f"It reported accuracy {zero_shot:.2f} before and {lora:.2f} after" in ui.STUDY
    assert "The original study took T5-small" in ui.STUDY
    assert "rank 8, alpha 32, dropout 0.1" in ui.STUDY and "on 500 reviews for one epoch" in ui.STUDY


def test_the_upload_label_states_the_apps_max_file_size(monkeypatch):
    import gradio as gr

    assert dataset.MAX_UPLOAD_BYTES == ui.LAUNCH_OPTIONS["max_file_size"]
    monkeypatch.setattr(dataset, "MAX_UPLOAD_BYTES", 3 * 2**20)  # the label follows the constant, not a literal
    with gr.Blocks() as blocks:
        dataset.build(gr.State(SessionData()))
    upload = next(block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "data-upload")
    assert upload.label == "Your own reviews: .csv, .parquet or .jsonl, up to 3 MB"
