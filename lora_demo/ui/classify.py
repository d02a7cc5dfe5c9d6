"""Classify tab: label your own review with the baseline and, once trained, the LoRA model."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..calibration import SURE_ACCURACY
from ..config import DEFAULT_MAX_LENGTH, DEFAULT_MODEL, LABEL_NAMES, UserError
from .errors import guard
from .runs import build_loader
from .session import EVALUATE_SLOTS, EXPLAIN_SLOTS, UNQUEUED, SessionData, classify_place
from .train import model_markdown

EXAMPLES = [
    "This movie was amazing!",
    "Terrible acting and a boring plot.",
    "The visuals were stunning, but the story was weak.",
    "Not bad at all, I actually enjoyed it more than I expected.",
    "I wouldn't say it was good, but it wasn't terrible either.",
    "Oh great, another two hours of my life I will never get back. Brilliant.",
    "The first half drags, yet the ending is so moving that it is worth the wait.",
]
MAX_BATCH_ROWS = 2_000
MAX_BATCH_BYTES = 5 * 2**20  # also the app's `max_file_size`, so larger uploads never reach the server's disk
MAX_CHARS = 20_000  # per review, documented in the README; the model reads at most its first and last tokens


def review_text(text) -> str:
    """The cleaned review, or a UserError that says what is wrong with it (shared by Classify and its explanation)."""
    from ..data import clean_text

    if text is not None and not isinstance(text, str):
        raise UserError(
            f"send one review as a string, not {type(text).__name__}: for many reviews use the batch CSV "
            f"(up to {MAX_BATCH_ROWS:,} rows)"
        )
    text = clean_text(text or "")
    if not text:
        raise UserError("type or paste a review first (the text is empty)")
    if len(text) > MAX_CHARS:
        raise UserError(f"the review is {len(text):,} characters long: keep it under {MAX_CHARS:,}")
    return text


NOT_SURE = "not sure"


def confidences(predictions, i: int = 0) -> dict[str, float]:
    """A gr.Label value for one answer: its label with its (calibrated) confidence and the other label with the
    rest; the label reads "positive · not sure" when the calibrated confidence is below the model's threshold."""
    label, confidence = predictions.labels[i], predictions.confidence[i]
    if label not in (0, 1):
        return {"unmapped (neither word)": confidence}
    name = LABEL_NAMES[label]
    if predictions.sure and not predictions.sure[i]:
        name = f"{name} · {NOT_SURE}"
    return {name: confidence, LABEL_NAMES[1 - label]: 1.0 - confidence}


def answer_sentence(who: str, predictions, calibration) -> str:
    """What one model answered, how sure it is (calibrated where it can be) and whether that is sure enough."""
    label, confidence = predictions.label_names()[0], predictions.confidence[0]
    if not predictions.sure or calibration is None:
        return f"{who}: **{label}**, {confidence:.0%} (softmax, not calibrated: too few validation reviews)."
    if predictions.sure[0]:
        return f"{who}: **{label}**, {confidence:.0%} calibrated confidence."
    return (
        f"{who}: **{label}**, {confidence:.0%} calibrated confidence: **{NOT_SURE}** (below "
        f"{calibration.sure_from:.0%}, the confidence from which its validation answers were right "
        f"{SURE_ACCURACY:.0%} of the time)."
    )


def classify(text, session: SessionData):
    """The baseline's label and calibrated confidence and, once trained, the LoRA model's, for one review; a model
    whose calibrated confidence is below its threshold says "not sure" beside its label."""
    text = review_text(text)
    study = session.study
    base, tuned = study.classify([text])
    zero_shot = answer_sentence(
        f"Zero-shot `{study.model_name}`", base, study.calibration("baseline", DEFAULT_MAX_LENGTH)
    )
    if tuned is None:
        note = f"{zero_shot} Train a LoRA adapter on the **Train LoRA** tab to see the fine-tuned model's answer too."
        return confidences(base), None, note
    lora = answer_sentence(f"`{study.tuned.name}` with the LoRA adapter", tuned, study.calibration("finetuned"))
    return confidences(base), confidences(tuned), f"{zero_shot} {lora}"


def highlighted(attributions: list[tuple[str, float]], scale: float) -> list[tuple[str, float | None]]:
    """gr.HighlightedText value: each span with its score on a shared -1..1 scale (None: no colour).

    HighlightedText colours scores above 0 red and below 0 blue-purple; the sign is flipped so that words pushing
    toward *negative* are red and words pushing toward *positive* are purple (gradio's blue).
    """
    return [(span + " ", round(-score / scale, 3) if scale else None) for span, score in attributions]


def explain(text, session: SessionData):
    """Occlusion attribution of the typed review for the baseline and, once trained, the LoRA model."""
    results = session.study.explain(review_text(text))  # classify has already said anything wrong with the text
    scale = max((abs(score) for result in results for _, score in result), default=0.0)
    values = [highlighted(result, scale) for result in results]
    return values[0], values[1] if len(values) > 1 else None


def classify_file(path, session: SessionData) -> str:
    """Label every review of an uploaded CSV (a `text` column): the CSV back with each model's label, calibrated
    confidence and whether it is sure (`*_sure`, where the model is calibrated)."""
    import pandas as pd

    from ..data import clean_text

    if not path:
        raise UserError("upload a CSV file with a `text` column first")
    if not str(path).lower().endswith(".csv"):
        raise UserError("upload a .csv file (a `text` column, one review per row)")
    try:
        frame = pd.read_csv(path, dtype={"text": str}, nrows=MAX_BATCH_ROWS + 1, encoding_errors="replace")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"could not read the CSV: {str(err).splitlines()[0]}") from None
    if "text" not in frame.columns:
        raise UserError(f"the CSV needs a `text` column; it has: {', '.join(map(str, frame.columns)) or 'none'}")
    if len(frame) > MAX_BATCH_ROWS:
        raise UserError(f"the CSV has more than {MAX_BATCH_ROWS:,} rows: split it into smaller files")
    texts = [clean_text(t)[:MAX_CHARS] if isinstance(t, str) else "" for t in frame["text"]]
    if not any(texts):
        raise UserError("the `text` column is empty")
    keep = [i for i, t in enumerate(texts) if t]
    out = frame.copy()
    baseline, tuned = session.study.classify([texts[i] for i in keep])
    for name, predictions in (("baseline", baseline), ("lora", tuned)):
        if predictions is None:
            continue
        labels, confidence, sure = [""] * len(texts), [None] * len(texts), [None] * len(texts)
        for k, (i, label, p) in enumerate(zip(keep, predictions.label_names(), predictions.confidence)):
            labels[i], confidence[i] = label, round(p, 4)
            if predictions.sure:
                sure[i] = predictions.sure[k]
        # `_sure` is empty for a model with no calibration (too few validation reviews): its confidence is raw
        out[f"{name}_label"], out[f"{name}_confidence"], out[f"{name}_sure"] = labels, confidence, sure
    target = session.scratch_dir() / "labelled.csv"
    out.to_csv(target, index=False)
    return str(target)


def build(session: gr.State) -> SimpleNamespace:
    model_info = gr.Markdown(model_markdown(DEFAULT_MODEL))
    text = gr.Textbox(label="Review", lines=4, placeholder="Type a movie review …")
    go = gr.Button("Classify", variant="primary")
    gr.Examples(
        EXAMPLES,
        inputs=text,
        label="Examples: plain, mixed, negated and sarcastic",
        cache_examples=False,
        api_visibility="private",
    )
    note = gr.Markdown(label="note")
    with gr.Row():
        baseline = gr.Label(label="Baseline (zero-shot)", num_top_classes=2, elem_id="baseline-label")
        lora = gr.Label(label="LoRA fine-tuned", num_top_classes=2, elem_id="lora-label")

    gr.Markdown(
        "**Why this label?** Each word is left out in turn and the model asked again: **purple** words pushed it "
        "toward *positive* (without them it is less sure the review is positive), **red** words toward "
        "*negative*; the stronger the colour, the larger the push, on one scale for both models."
    )
    with gr.Row():
        baseline_words = gr.HighlightedText(label="Baseline: words by influence", elem_id="baseline-words")
        lora_words = gr.HighlightedText(label="LoRA: words by influence", elem_id="lora-words")

    build_loader(session, "saved-runs-classify")
    with gr.Accordion("Batch: label a CSV of reviews", open=False):
        gr.Markdown(
            f"Upload a CSV with a `text` column (up to {MAX_BATCH_ROWS:,} rows and {MAX_BATCH_BYTES // 2**20} MB); "
            "you get it back with the baseline's and, once trained, the LoRA model's label, calibrated confidence "
            "and whether that confidence is sure (`*_sure`: False where Classify would say *not sure*)."
        )
        with gr.Row():
            upload = gr.File(label="CSV to label", file_types=[".csv"], elem_id="batch-upload")
            labelled = gr.File(label="Labelled CSV", interactive=False, elem_id="batch-result")
        label_file = gr.Button("Label the file")
    label_file.click(
        guard(classify_file),
        inputs=[upload, session],
        outputs=labelled,
        api_visibility="private",
        **EVALUATE_SLOTS,
    )

    gr.on(
        [go.click, text.submit],
        guard(classify_place(classify)),
        inputs=[text, session],
        outputs=[baseline, lora, note],
        api_name="classify",
        preprocess=False,  # the raw value, so that an API call sending a list is refused rather than stringified
        **UNQUEUED,  # answers while the queue is full; `classify_place` bounds how many run at once
    ).success(
        guard(explain),
        inputs=[text, session],
        outputs=[baseline_words, lora_words],
        api_visibility="private",
        show_progress="minimal",
        **EXPLAIN_SLOTS,
    )
    return SimpleNamespace(model_info=model_info)
