"""Every handler's guard: user mistakes become messages, crashes one generic line, out-of-memory advice."""

from __future__ import annotations

import functools
import inspect
import logging
import time
import traceback

import gradio as gr

from ..config import UserError
from ..config import out_of_memory as out_of_memory
from .session import SessionData, release_memory

logger = logging.getLogger("lora_demo.ui")

GENERIC_ERROR = "Something went wrong on the server (the details are in its log). Please try again."
OUT_OF_MEMORY = (
    "The server ran out of memory for this request. Try again with fewer reviews, a shorter max length or a "
    "smaller batch size; if many people are using the demo, try again in a few minutes."
)


def translate(err: Exception, where: str) -> gr.Error:
    """The message a user sees for `err`: its own words for a UserError, one generic line for anything else."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, UserError):
        return gr.Error(str(err), print_exception=False)
    logger.exception("unexpected error in %s", where)
    # the traceback's frames hold the failed work's locals (a model being trained): let them go now, not
    # whenever the last reference to the error (a log record, gradio's error message) disappears
    traceback.clear_frames(err.__traceback__)
    if out_of_memory(err):
        release_memory()
        return gr.Error(OUT_OF_MEMORY, print_exception=False)
    return gr.Error(GENERIC_ERROR, print_exception=False)


def _touch(args):
    # an event of the session: it is in use, and open again if it had been reported gone (a dropped connection)
    for arg in args:
        if isinstance(arg, SessionData):
            arg.last_used, arg.closed = time.monotonic(), False


def guard(fn):
    """Turn a handler's exceptions into messages for the user, for functions and generators alike.

    `UserError` becomes `gr.Error` with its message; anything else is logged with its traceback and reaches the
    user as a generic message. Handlers change the session only after their work succeeded, so an error leaves
    it as it was.
    """
    where = getattr(fn, "__name__", str(fn))
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            _touch(args)
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise translate(err, where) from None

        generator.guarded = True
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        _touch(args)
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise translate(err, where) from None

    function.guarded = True
    return function
