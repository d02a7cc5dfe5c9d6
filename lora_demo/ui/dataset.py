"""Dataset tab: choose the source, sizes and seed; see sample rows, the label balance and review lengths."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ..config import DEFAULT_MAX_LENGTH, DataConfig, UserError, field_default, field_help
from .classify import MAX_BATCH_BYTES as MAX_UPLOAD_BYTES  # the app's `max_file_size`, for every upload
from .errors import guard
from .session import EVALUATE_SLOTS, SessionData
from .widgets import download_progress, notes_markdown, number, whole_number

SAMPLE_ROWS = 8
SAMPLE_CHARS = 160
SIZE_FIELDS = ("train_size", "val_size", "test_size")
# The app never reads a path a user typed: the source is one of these names, and a user's own data comes as an upload
# (into gradio's upload folder, limited to the app's `max_file_size`).
SOURCES = {
    "default": "The server's default data",  # page_load names what it resolves to here: see `source_choices`
    "hub": "IMDb from the Hugging Face Hub",
    "builtin": "The built-in sample: hand-written short reviews shipped with the app (not IMDb)",
    "upload": "My own file: upload it below",
}
DATA_FILE_TYPES = [".csv", ".parquet", ".jsonl"]


def source_kind(source: str) -> str:
    """What a resolved source is: `hub`, `sample` and `builtin` described, a path the server's local copy.

    The app never reads a path a user typed, so a path here is the server's own (`$LORA_DEMO_DATA`).
    """
    from ..data import NAMED_SOURCES, describe_source

    return describe_source(source) if source in NAMED_SOURCES else "the server's local copy"


def source_words(source: str) -> str:
    """A resolved source in words for the header; a path is named too."""
    from ..data import NAMED_SOURCES

    return source_kind(source) if source in NAMED_SOURCES else f"{source_kind(source)}, `{source}`"


def splits_words(splits, with_name: bool = False) -> str:
    """The loaded data's source in words (`with_name`: after its name, as the CLI's `--data` takes it); an upload
    keeps the name it was loaded under (its file name)."""
    if splits.source != splits.config.source:
        return splits.source
    return f"`{splits.source}` ({source_kind(splits.source)})" if with_name else source_words(splits.source)


def source_choices(default_source: str) -> list[tuple[str, str]]:
    """The source dropdown's choices; the `default` one says what it resolves to here (`default_source`)."""
    from ..data import count_builtin, describe_source

    where = {
        "hub": describe_source("hub"),
        "sample": f"{describe_source('sample')} (no local copy here and no Hub)",
    }.get(default_source, "its local copy")
    labels = {
        **SOURCES,
        "default": f"The server's default: {where}",
        "builtin": f"The built-in sample: the {count_builtin():,} hand-written short reviews shipped with the app "
        "(not IMDb)",
    }
    return [(labels[name], name) for name in SOURCES]


def data_source(source, upload) -> tuple[str | None, str | None]:
    """The `DataConfig.source` for a source name (and the uploaded file), and the name to show for an upload."""
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
    if source == "default":
        return None, None
    if source != "upload":
        return source, None
    if not upload:
        raise UserError("upload a file first (a `text` and a `label` column; .csv, .parquet or .jsonl)")
    path = Path(upload)
    if path.suffix.lower() not in DATA_FILE_TYPES:
        raise UserError(f"{path.name}: upload a .csv, .parquet or .jsonl file with a `text` and a `label` column")
    return str(path), f"your file {path.name}"


@lru_cache(maxsize=1)
def minilm_tokenizer():
    """The bundled MiniLM tokenizer, for token counts; read-only, so one copy serves every session."""
    from ..config import get_model_spec
    from ..models import load_tokenizer

    return load_tokenizer(get_model_spec("minilm"))


def sample_rows(frame) -> list[list]:
    from ..data import label_word

    rows = []
    for text, label in frame.head(SAMPLE_ROWS)[["text", "label"]].itertuples(index=False):
        short = text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS].rsplit(" ", 1)[0] + " …"
        rows.append([short, label_word(label)])
    return rows


def seq2seq_example(frame) -> str:
    from ..data import format_seq2seq, label_word

    text, label = frame.iloc[0]["text"], frame.iloc[0]["label"]
    short = text if len(text) <= 300 else text[:300].rsplit(" ", 1)[0] + " …"
    return (
        "**The text-to-text format** (how the T5 models of the study see a review; MiniLM reads the plain text "
        "and has a classification head instead):\n\n"
        f"- input: `{format_seq2seq(short)}`\n- target: `{label_word(label)}`"
    )


def describe_splits(splits) -> str:
    sizes = splits.sizes()
    return (
        f"{sizes['train']} / {sizes['val']} / {sizes['test']} train / validation / test reviews from "
        f"{splits_words(splits, with_name=True)}"
    )


def load_data(source, upload, train_size, val_size, test_size, seed, session: SessionData, progress=gr.Progress()):
    """Load and split the reviews; returns the summary, sample rows, charts and the text-to-text example."""
    path, shown_as = data_source(source, upload)
    sizes = [whole_number(value, name) for value, name in zip((train_size, val_size, test_size), SIZE_FIELDS)]
    config = DataConfig(path, *sizes, seed=whole_number(seed, "seed"))
    # sizes left at their defaults shrink to fit a small source, as in the CLI; chosen sizes never do
    untouched = all(size == field_default(DataConfig, name) for size, name in zip(sizes, SIZE_FIELDS))
    progress(0.1, desc="Loading reviews")
    downloading = download_progress(progress, "Downloading IMDb from the Hugging Face Hub")
    splits = session.study.load_data(config, fit_to_data=untouched, shown_as=shown_as, progress=downloading)
    progress(0.6, desc="Counting tokens")
    return data_view(splits)


def data_view(splits, notes=()) -> tuple:
    """What the tab shows of loaded splits: the summary, sample rows, the two charts and the text-to-text example.

    The whole-study button fills the tab with it too, so the tab never says "no data" about data a study loaded.
    """
    from ..models import token_lengths
    from ..plots import label_balance_figure, length_histogram_figure

    texts = [*splits.train["text"], *splits.val["text"], *splits.test["text"]]
    lengths = token_lengths(minilm_tokenizer(), texts)
    notes = list(dict.fromkeys([*notes, *splits.notes]))  # a study's own notes repeat the split's
    summary = f"Loaded {describe_splits(splits)} (seed {splits.config.seed})." + notes_markdown(notes)
    return (
        summary,
        sample_rows(splits.train),
        label_balance_figure(splits.label_counts()),
        length_histogram_figure(lengths, DEFAULT_MAX_LENGTH),
        seq2seq_example(splits.train),
    )


def build(session: gr.State) -> SimpleNamespace:
    gr.Markdown(
        "Load IMDb reviews and split them stratified into train / validation / test, or bring your own: a "
        "`.csv`, `.parquet` or `.jsonl` file with a `text` and a `label` column (0/1 or negative/positive), "
        "split the same way."
    )
    with gr.Row():
        source = gr.Dropdown(
            [(label, name) for name, label in SOURCES.items()],
            value="default",
            label="Data source",
            scale=3,
            elem_id="data-source",
        )
        seed = gr.Number(
            label="Seed",
            value=field_default(DataConfig, "seed"),
            precision=0,
            info=field_help(DataConfig, "seed"),
            scale=1,
        )
    with gr.Row():
        sizes = [
            number(DataConfig, name, label, precision=0, info=f"default {field_default(DataConfig, name)}")
            for name, label in zip(SIZE_FIELDS, ("Train reviews", "Validation reviews", "Test reviews"))
        ]
    upload = gr.File(
        label=f"Your own reviews: .csv, .parquet or .jsonl, up to {MAX_UPLOAD_BYTES // 2**20} MB",
        file_types=DATA_FILE_TYPES,
        height=120,
        elem_id="data-upload",
    )
    load = gr.Button("Load data", variant="primary")
    summary = gr.Markdown(
        label="summary",
        value="No data loaded yet: press **Load data** (other tabs load the defaults if you skip this).",
    )
    with gr.Row():
        balance = gr.Plot(label="Label balance", show_label=False, elem_id="label-balance")
        lengths = gr.Plot(label="Review lengths", show_label=False, elem_id="review-lengths")
    rows = gr.Dataframe(
        headers=["review (shortened)", "label"],
        label="Sample of the training reviews",
        interactive=False,
        wrap=True,
        column_widths=["85%", "15%"],
    )
    example = gr.Markdown(label="text-to-text example")

    view = [summary, rows, balance, lengths, example]  # data_view's outputs, in its order
    load_args = {
        "fn": guard(load_data),
        "inputs": [source, upload, *sizes, seed, session],
        "outputs": view,
        **EVALUATE_SLOTS,
    }
    loaded = load.click(**load_args, api_name="load_data")
    upload.upload(guard(lambda: "upload"), outputs=source, api_visibility="private", queue=False)
    # other tabs (the study preset) reload the data with the same handler
    return SimpleNamespace(loaded=loaded, source=source, sizes=sizes, load_args=load_args, view=view)
