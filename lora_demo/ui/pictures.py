"""The explaining pictures in the app: what LoRA is, to scale, next to the Train tab's LoRA controls.

Builders create the components where a tab calls them; `wire_lora_picture` redraws the picture whenever the
model or a LoRA control changes. Everything heavy (torch, PEFT, plotly) is imported inside the handlers, so
the first page needs only gradio.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..config import UserError, get_model_spec
from .state import guard


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
    )
