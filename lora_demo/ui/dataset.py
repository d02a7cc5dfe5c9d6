"""Dataset tab: choose the source, sizes and seed; see sample rows, the label balance and review lengths."""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import gradio as gr

from ..config import DataConfig, TrainConfig, field_default, field_help, field_range
from .state import SessionData, describe_splits, guard, whole_number

SAMPLE_ROWS = 8
SAMPLE_CHARS = 160
SIZE_FIELDS = ("train_size", "val_size", "test_size")


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


def load_data(source, train_size, val_size, test_size, seed, session: SessionData, progress=gr.Progress()):
    """Load and split the reviews; returns the summary, sample rows, charts and the text-to-text example."""
    from ..data import load_splits
    from ..models import token_lengths
    from ..plots import label_balance_figure, length_histogram_figure

    sizes = [whole_number(value, name) for value, name in zip((train_size, val_size, test_size), SIZE_FIELDS)]
    config = DataConfig(
        source=(source or "").strip() or None,
        train_size=sizes[0],
        val_size=sizes[1],
        test_size=sizes[2],
        seed=whole_number(seed, "seed"),
    )
    # sizes left at their defaults shrink to fit a small source, as in the CLI; chosen sizes never do
    untouched = all(size == field_default(DataConfig, name) for size, name in zip(sizes, SIZE_FIELDS))
    progress(0.1, desc="Loading reviews")
    splits = load_splits(config, fit_to_data=untouched)
    progress(0.6, desc="Counting tokens")
    texts = [*splits.train["text"], *splits.val["text"], *splits.test["text"]]
    max_length = field_default(TrainConfig, "max_length")
    lengths = token_lengths(minilm_tokenizer(), texts)
    session.splits, session.data_version = splits, session.data_version + 1
    summary = f"Loaded {describe_splits(splits)} (seed {splits.config.seed})."
    summary += "".join(f"\n\n> **Note:** {note}" for note in splits.notes)
    return (
        summary,
        sample_rows(splits.train),
        label_balance_figure(splits.label_counts()),
        length_histogram_figure(lengths, max_length),
        seq2seq_example(splits.train),
    )


def build(session: gr.State) -> SimpleNamespace:
    gr.Markdown(
        "Load IMDb reviews and split them stratified into train / validation / test. The source is a folder "
        "with train and test files (parquet, csv, jsonl), one such file, an `aclImdb` folder, `hub` or `builtin` "
        "(the 160-review sample shipped with the app)."
    )
    with gr.Row():
        source = gr.Textbox(
            label="Data source", placeholder="checking …", info=field_help(DataConfig, "source"), scale=3
        )
        seed = gr.Number(
            label="Seed",
            value=field_default(DataConfig, "seed"),
            precision=0,
            info=field_help(DataConfig, "seed"),
            scale=1,
        )
    with gr.Row():
        sizes = []
        for name, label in zip(SIZE_FIELDS, ("Train reviews", "Validation reviews", "Test reviews")):
            low, high = field_range(DataConfig, name)
            sizes.append(
                gr.Number(
                    label=label,
                    value=field_default(DataConfig, name),
                    precision=0,
                    minimum=low,
                    maximum=high,
                    info=f"default {field_default(DataConfig, name)}",
                )
            )
    load = gr.Button("Load data", variant="primary")
    summary = gr.Markdown(
        label="summary",
        value="No data loaded yet: press **Load data** (other tabs load the defaults if you skip this).",
    )
    with gr.Row():
        balance = gr.Plot(label="Label balance", show_label=False)
        lengths = gr.Plot(label="Review lengths", show_label=False)
    rows = gr.Dataframe(
        headers=["review (shortened)", "label"],
        label="Sample of the training reviews",
        interactive=False,
        wrap=True,
        column_widths=["85%", "15%"],
    )
    example = gr.Markdown(label="text-to-text example")

    load_args = {
        "fn": guard(load_data),
        "inputs": [source, *sizes, seed, session],
        "outputs": [summary, rows, balance, lengths, example],
    }
    loaded = load.click(**load_args, api_name="load_data")
    # other tabs (the study preset) reload the data with the same handler
    return SimpleNamespace(loaded=loaded, source=source, sizes=sizes, load_args=load_args)
