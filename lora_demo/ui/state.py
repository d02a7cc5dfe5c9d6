"""What one browser session (or one API client) owns: its data, its results, its training run.

Held in a `gr.State`, so each user has their own; the only thing shared between users is the cache of
untouched zero-shot models (`MODELS`), which nobody modifies.
"""

from __future__ import annotations

import functools
import inspect
import logging
import tempfile
import threading
from pathlib import Path

import gradio as gr

from ..config import DEFAULT_MODEL, UserError

logger = logging.getLogger("lora_demo.ui")

GENERIC_ERROR = "Something went wrong on the server (the details are in its log). Please try again."


class SessionData:
    """One session's data and results.

    A plain class, not a dataclass: gradio serialises dataclass state values, and a session holds a thread,
    an event and models. `data_version` counts data loads; metrics remember the version they were computed
    on, so a reload never shows numbers of other test reviews.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL):
        self.splits = None  # lora_demo.data.Splits
        self.data_version = 0
        self.model_name = model_name
        self.baseline: dict | None = None  # model, data_version, metrics, predictions
        self.tuned = None  # lora_demo.models.ModelBundle wrapped with LoRA
        self.tuned_max_length = 256
        self.train_result = None  # lora_demo.train.TrainResult
        self.history: list[dict] = []
        self.tuned_eval: dict | None = None  # data_version, metrics, predictions
        self._scratch: str | None = None  # see scratch_dir()
        self.export_zip: str | None = None  # the latest run's adapter zip, for the download button
        self.runs: list[dict] = []  # every finished run: name, settings, metrics, history (see ui.train.record_run)
        self.stop_event = threading.Event()
        self.worker: threading.Thread | None = None

    def __deepcopy__(self, memo):
        # gradio deep-copies the initial state for each new session; a session starts empty, with its own flag
        return SessionData(model_name=self.model_name)

    def scratch_dir(self) -> Path:
        """This session's own temporary folder (adapter zips, labelled CSVs); made on first use."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="lora-demo-session-")
        return Path(self._scratch)

    @property
    def training(self) -> bool:
        return self.worker is not None and self.worker.is_alive()


class LazyModelCache:
    """`lora_demo.models.ModelCache`, created on first use so that torch is not imported at startup.

    It holds untouched registry models for zero-shot inference, shared read-only by all sessions.
    """

    def __init__(self):
        self._cache = None
        self._lock = threading.Lock()

    def get(self, name: str):
        with self._lock:
            if self._cache is None:
                from ..models import ModelCache

                self._cache = ModelCache()
        return self._cache.get(name)


MODELS = LazyModelCache()


def guard(fn):
    """Turn a handler's exceptions into messages for the user, for functions and generators alike.

    `UserError` becomes `gr.Error` with its message; anything else is logged with its traceback and
    reaches the user as a generic message. The session state is only changed by handlers after their
    work succeeded, so an error leaves it as it was.
    """

    def translate(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, UserError):
            return gr.Error(str(err), print_exception=False)
        logger.exception("unexpected error in %s", getattr(fn, "__name__", fn))
        return gr.Error(GENERIC_ERROR, print_exception=False)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise translate(err) from None

        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise translate(err) from None

    return function


def progress_callback(progress, desc: str):
    """Adapt `gr.Progress` to the package's `progress(done, total)` callbacks."""
    return lambda done, total: progress((done, total), desc=desc, unit="reviews")


def ensure_splits(session: SessionData, progress=None) -> list[str]:
    """Load the default data when the session has none yet; returns notes to show the user."""
    if session.splits is not None:
        return []
    from ..config import DataConfig
    from ..data import load_splits

    if progress:
        progress(0, desc="Loading the default data")
    set_splits(session, load_splits(DataConfig(), fit_to_data=True))
    return [
        "No data was loaded yet, so the default data was loaded: "
        + describe_splits(session.splits)
        + ". Change it on the Dataset tab."
    ]


def set_splits(session: SessionData, splits) -> None:
    session.splits = splits
    session.data_version += 1


def describe_splits(splits) -> str:
    sizes = splits.sizes()
    counts = f"{sizes['train']} / {sizes['val']} / {sizes['test']}"
    return f"{counts} train / validation / test reviews from `{splits.source}`"


def model_markdown(session_or_name) -> str:
    from ..config import get_model_spec

    name = session_or_name if isinstance(session_or_name, str) else session_or_name.model_name
    spec = get_model_spec(name)
    return f"**Model:** `{spec.name}`: {spec.description}. Choose it on the Baseline tab."


def whole_number(value, name: str) -> int:
    """A control's number as an int; sliders and number boxes may send 8.0 or nothing at all."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"`{name}` must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise UserError(f"`{name}` must be a whole number, got {value!r}")
    return int(number)
