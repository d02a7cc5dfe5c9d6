"""What one browser session (or one API client) owns: its data, its results, its training run.

Held in a `gr.State`, so each user has their own; the only thing shared between users is the cache of
untouched zero-shot models (`MODELS`), which nobody modifies.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import gc
import inspect
import logging
import shutil
import tempfile
import threading
import time
import traceback
import weakref
from pathlib import Path

import gradio as gr

from ..config import DEFAULT_MODEL, UserError

logger = logging.getLogger("lora_demo.ui")

GENERIC_ERROR = "Something went wrong on the server (the details are in its log). Please try again."
OUT_OF_MEMORY = (
    "The server ran out of memory for this request. Try again with fewer reviews, a shorter max length or a "
    "smaller batch size; if many people are using the demo, try again in a few minutes."
)

# The CPU budget shared by every session. Events of one group run at most `concurrency_limit` at a time and the
# rest wait in gradio's queue, which shows each waiting user their place.
TRAIN_SLOTS = {"concurrency_id": "train", "concurrency_limit": 1}  # training and the measured steps
EVALUATE_SLOTS = {"concurrency_id": "evaluate", "concurrency_limit": 1}  # data loads, test-set scoring, batch files
CLASSIFY_SLOTS = {"concurrency_id": "classify", "concurrency_limit": 2}  # one review: milliseconds, never waits long
CLOSE_WAIT_SECONDS = 30  # how long closing a session waits for its training thread to finish its step


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
        self.closed = False
        self.last_used = time.monotonic()  # set by `guard` at every event of the session, which also reopens it

    def __deepcopy__(self, memo):
        # gradio deep-copies the initial state for each new session; a session starts empty, with its own flag
        close_idle_sessions()
        session = SessionData(model_name=self.model_name)
        OPEN_SESSIONS.add(session)
        return session

    def scratch_dir(self) -> Path:
        """This session's own temporary folder (adapter zips, labelled CSVs); made on first use."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="lora-demo-session-")
        return Path(self._scratch)

    @property
    def training(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def close(self) -> None:
        """End the session: stop its training run, drop its data and models, delete its temporary folder.

        Called when the browser tab closes (`demo.unload`) and when gradio deletes the state; safe to call twice.
        """
        self.closed = True
        self.stop_event.set()
        if self.worker is not None and self.worker is not threading.current_thread():
            self.worker.join(timeout=CLOSE_WAIT_SECONDS)  # it stops after its current step
        self.worker = None
        self.splits = self.baseline = self.tuned = self.train_result = self.tuned_eval = None
        self.history, self.runs, self.export_zip = [], [], None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        release_memory()


OPEN_SESSIONS: weakref.WeakSet[SessionData] = weakref.WeakSet()  # every session gradio has made
IDLE_SECONDS = 2 * 3600


def close_idle_sessions(idle_seconds: float = IDLE_SECONDS) -> list[SessionData]:
    """Close the sessions nobody has used for `idle_seconds` and that are not training; returns them.

    Browsers and gradio_client announce when they leave (`demo.unload`); a client that calls the HTTP API without
    gradio's heartbeat never does, so what its session holds is freed here, when a new session arrives.
    """
    cutoff = time.monotonic() - idle_seconds
    idle = [s for s in list(OPEN_SESSIONS) if not s.closed and not s.training and s.last_used < cutoff]
    for session in idle:
        session.close()
    return idle


def release_memory() -> None:
    """Collect the freed objects and hand the freed heap back to the operating system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by the process instead
        pass


def end_session(state: gr.State):
    """A `demo.unload` handler for `state`: when a tab closes (or an API client goes away), close its session.

    Unload events get no inputs, so the session's `SessionData` is looked up in gradio's own per-session store by
    the request's session hash. The value is then stored again, which starts gradio's countdown for closed sessions;
    when it runs out gradio deletes the state and calls its `delete_callback`.
    """

    def unload(request: gr.Request):
        sessions = request.app.state_holder.session_data
        values = sessions.get(request.session_hash)
        if values is None or state._id not in values.state_data:
            return  # the session never used its state
        session = values.state_data[state._id]
        session.close()
        values[state._id] = session
        logger.info("session %s closed", request.session_hash[:8])

    return unload


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
        # the traceback's frames hold the failed work's locals (a model being trained): let them go now, not
        # whenever the last reference to the error (a log record, gradio's error message) disappears
        traceback.clear_frames(err.__traceback__)
        if out_of_memory(err):
            release_memory()
            return gr.Error(OUT_OF_MEMORY, print_exception=False)
        return gr.Error(GENERIC_ERROR, print_exception=False)

    def touch(args):
        # an event of the session: it is in use, and open again if it had been reported gone (a dropped connection)
        for arg in args:
            if isinstance(arg, SessionData):
                arg.last_used, arg.closed = time.monotonic(), False

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            touch(args)
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise translate(err) from None

        generator.guarded = True
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        touch(args)
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise translate(err) from None

    function.guarded = True
    return function


def out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    return (
        isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err)
    )


def progress_callback(progress, desc: str):
    """Adapt `gr.Progress` to the package's `progress(done, total)` callbacks."""
    return lambda done, total: progress((done, total), desc=desc, unit="reviews")


def download_progress(progress, desc: str):
    """Adapt `gr.Progress` to a download's byte counts, shown in MB.

    The Hub client counts bytes in its own threads, and `gr.Progress` finds its event through context variables:
    each report runs in a copy of the handler's context.
    """
    context = contextvars.copy_context()

    def report(done: int, total: int):
        context.copy().run(progress, (round(done / 1e6, 1), round(total / 1e6, 1)), desc=desc, unit="MB")

    return report


def ensure_splits(session: SessionData, progress=None) -> list[str]:
    """Load the default data when the session has none yet; returns notes to show the user."""
    if session.splits is not None:
        return []
    from ..config import DataConfig
    from ..data import load_splits

    downloading = None
    if progress:
        progress(0, desc="Loading the default data")
        downloading = download_progress(progress, "Downloading IMDb from the Hugging Face Hub")
    set_splits(session, load_splits(DataConfig(), fit_to_data=True, progress=downloading))
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
