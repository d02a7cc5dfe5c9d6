"""The explaining pictures in the app: what LoRA is, to scale, next to the Train tab's LoRA controls.

Builders create the components where a tab calls them; `wire_lora_picture` redraws the picture whenever the
model or a LoRA control changes. Everything heavy (torch, PEFT, plotly) is imported inside the handlers, so
the first page needs only gradio.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..config import UserError, get_model_spec
from .errors import guard
from .session import UNQUEUED


def build_lora_picture() -> SimpleNamespace:
    """The to-scale picture and its sentences (placed where the caller is in the layout)."""
    with gr.Accordion("What LoRA is, to scale", open=True, elem_id="lora-picture-box"):
        plot = gr.Plot(show_label=False, elem_id="lora-picture")
        text = gr.Markdown("Drawing one adapted matrix …", elem_id="lora-picture-text")
    return SimpleNamespace(plot=plot, text=text)


def lora_picture(model_name, r, alpha, dropout, targets, top_layers):
    """One adapted matrix of the recipe as set, drawn to scale, with its counts and what alpha does.

    Returns:
        (figure, markdown); the counts equal the live trainable-parameter count beside it.
    """
    from ..anatomy import lora_shapes
    from ..pictures import lora_shapes_figure
    from .train import lora_settings

    spec = get_model_spec(model_name)
    if any(t not in spec.lora_targets for t in targets or ()):
        return gr.skip(), gr.skip()  # the target list is still being switched to the new model's names
    try:
        shapes = lora_shapes(spec, lora_settings(r, alpha, dropout, targets, top_layers))
    except UserError as err:
        return gr.skip(), f"⚠️ {err}"
    return lora_shapes_figure(shapes), lora_picture_markdown(shapes)


def lora_picture_markdown(shapes) -> str:
    from ..anatomy import describe_module

    return (
        f"LoRA leaves each chosen weight matrix **W** as it is and learns a small correction **B·A** beside it: B "
        f"has {shapes.d_out} rows and A {shapes.d_in} columns like W, but they meet in only **r = {shapes.r}** "
        f"columns / rows, the *rank*. Drawn: the {describe_module(shapes.module)} of layer {shapes.layer}. "
        f"{shapes.sentence()}\n\n{shapes.alpha_sentence()}"
    )


def wire_lora_picture(picture: SimpleNamespace, demo: gr.Blocks, model, lora_controls: list) -> None:
    """Redraw the picture on page load and whenever the model, r, alpha, the targets or the top layers change."""
    r, alpha, _dropout, targets, top_layers = lora_controls
    gr.on(
        [demo.load, model.change, r.change, alpha.change, targets.change, top_layers.change],
        guard(lora_picture),
        inputs=[model, *lora_controls],
        outputs=[picture.plot, picture.text],
        trigger_mode="always_last",
        show_progress="hidden",
        api_visibility="private",
        **UNQUEUED,  # the architecture on the meta device, no weights: never waits behind training
    )


def build_result_sentence() -> gr.Markdown:
    """The study's result in one sentence, for the top of the Compare tab."""
    return gr.Markdown(elem_id="result-sentence")


def build_change_pictures() -> SimpleNamespace:
    """Where LoRA changed the model (heatmap) and how the test reviews moved (2-D map), each with its reading."""
    with gr.Accordion("Where LoRA changed the model", open=True):
        norms_text = gr.Markdown(elem_id="norms-reading")
        norms_plot = gr.Plot(show_label=False, elem_id="norms-heatmap")
    with gr.Accordion("How the test reviews moved", open=True):
        map_text = gr.Markdown(elem_id="map-reading")
        map_plot = gr.Plot(show_label=False, elem_id="review-map")
    return SimpleNamespace(norms_text=norms_text, norms_plot=norms_plot, map_text=map_text, map_plot=map_plot)


NORMS_HELP = (
    " Each cell is one adapted weight matrix: the size of LoRA's update (alpha / r)·B·A next to the size of the "
    "frozen weights W it is added to (Frobenius norms, in percent). Hover a column for what that part of the model "
    "does."
)


def compare_pictures(report: dict, labels, baseline_predicted, finetuned_predicted, texts=None) -> tuple:
    """The sentence, the heatmap and the map with their readings, from a study's report and the test answers.

    Args:
        report: the study's report as a dict (`update_norms` and `projection` may be absent: a run saved without
            them shows why instead).
        labels: the test reviews' true labels, in the report's order; the two models' answers likewise.
        texts: the test reviews, for the map's hovers.

    Returns:
        (sentence, norms reading, heatmap, map reading, map), in the order of `result_outputs`.
    """
    from ..anatomy import norms_reading, result_sentence
    from ..pictures import projection_caption, projection_figure, update_norms_figure
    from ..plots import empty_figure

    norms, projection = report.get("update_norms"), report.get("projection")
    if norms:
        norms_out = (norms_reading(norms) + NORMS_HELP, update_norms_figure(norms))
    else:
        norms_out = ("This run's report has no update sizes.", update_norms_figure([]))
    if projection and len(projection["baseline"]) == len(labels):
        map_out = (
            projection_caption(projection, labels),
            projection_figure(projection, labels, baseline_predicted, finetuned_predicted, texts),
        )
    else:
        map_out = ("This run's report has no map of the test reviews.", empty_figure("No map for this run"))
    return f"**In one sentence:** {result_sentence(report)}", *norms_out, *map_out


NO_PICTURES = (None,) * 5  # what `compare_pictures` fills, left empty before any training


def result_outputs(sentence: gr.Markdown, pictures: SimpleNamespace) -> list:
    """The components `compare_pictures` fills, in its order."""
    return [sentence, pictures.norms_text, pictures.norms_plot, pictures.map_text, pictures.map_plot]
