"""Controls made from the config dataclasses (their defaults, ranges and help), and small value helpers."""

from __future__ import annotations

import contextvars

import gradio as gr

from ..config import UserError, field_default, field_help, field_range


def slider(cls, name: str, label: str, step: float, **kwargs) -> gr.Slider:
    """A slider for a config field: its range, default and help come from the dataclass."""
    low, high = field_range(cls, name)
    default = field_default(cls, name)
    return gr.Slider(
        low,
        high,
        value=default,
        step=step,
        label=label,
        info=f"{field_help(cls, name)}; default {default:g}",
        **kwargs,
    )


def number(cls, name: str, label: str, **kwargs) -> gr.Number:
    """A number box for a config field, with its range and default."""
    low, high = field_range(cls, name)
    default = field_default(cls, name)
    return gr.Number(default, minimum=low, maximum=high, label=label, **kwargs)


def whole_number(value, name: str) -> int:
    """A control's number as an int; sliders and number boxes may send 8.0 or nothing at all."""
    try:
        value_as_float = float(value)
    except (TypeError, ValueError):
        raise UserError(f"`{name}` must be a whole number, got {value!r}") from None
    if not value_as_float.is_integer():
        raise UserError(f"`{name}` must be a whole number, got {value!r}")
    return int(value_as_float)


def study_progress(progress):
    """Adapt `gr.Progress` to the study's `progress(what, done, total)`."""
    return lambda what, done, total: progress((done, total), desc=what, unit="reviews")


def download_progress(progress, desc: str):
    """Adapt `gr.Progress` to a download's byte counts, shown in MB.

    The Hub client counts bytes in its own threads, and `gr.Progress` finds its event through context variables:
    each report runs in a copy of the handler's context.
    """
    context = contextvars.copy_context()

    def report(done: int, total: int):
        context.copy().run(progress, (round(done / 1e6, 1), round(total / 1e6, 1)), desc=desc, unit="MB")

    return report


def notes_markdown(notes) -> str:
    return "".join(f"\n\n> **Note:** {note}" for note in notes)
