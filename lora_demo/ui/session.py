"""What one browser session (or one API client) owns: a study of its own, its files, its running job.

Held in a `gr.State`, so each user has their own; the only thing shared between users is the cache of untouched
zero-shot models, which nobody modifies. Every detail of gradio's own session handling (its per-session store,
read when a tab closes) lives in this file.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

import gradio as gr

from ..config import DEFAULT_MODEL

logger = logging.getLogger("lora_demo.ui")

# The CPU budget shared by every session. Only long work waits in gradio's queue, which shows each waiting user
# their place: events of one group run at most `concurrency_limit` at a time.
TRAIN_SLOTS = {"concurrency_id": "train", "concurrency_limit": 1}  # training and the measured steps
EVALUATE_SLOTS = {"concurrency_id": "evaluate", "concurrency_limit": 1}  # data loads, test-set scoring, batch files
EXPLAIN_SLOTS = {"concurrency_id": "explain", "concurrency_limit": 1}  # a review's words, one model call per word
# Work that needs no queue: what a page needs when it opens (no model), and Classify, which answers one review in
# milliseconds and must answer while the queue is full. It runs outside the queue, and Classify takes one of
# `CLASSIFY_AT_ONCE` places (waiting at most `CLASSIFY_WAIT_SECONDS` for one) so a crowd cannot swamp the CPU.
UNQUEUED = {"queue": False}
CLASSIFY_AT_ONCE = 2
CLASSIFY_WAIT_SECONDS = 20
_CLASSIFY_PLACES = threading.BoundedSemaphore(CLASSIFY_AT_ONCE)


def classify_place(fn):
    """Run `fn` once one of Classify's places is free; after `CLASSIFY_WAIT_SECONDS` say the app is busy."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..config import UserError

        if not _CLASSIFY_PLACES.acquire(timeout=CLASSIFY_WAIT_SECONDS):
            raise UserError("Classify is busy with other visitors' reviews: please try again in a few seconds")
        try:
            return fn(*args, **kwargs)
        finally:
            _CLASSIFY_PLACES.release()

    return wrapper


CLOSE_WAIT_SECONDS = 30  # how long closing a session waits for its training thread to finish its step
IDLE_SECONDS = 30 * 60  # a session nobody has used for this long is closed (`LORA_DEMO_IDLE_MINUTES`)
SWEEP_SECONDS = 60  # how often idle sessions are looked for


class SharedModels:
    """The untouched zero-shot models every session reads (`study.Models`), made on first use.

    Created lazily so that the first page needs no torch.
    """

    def __init__(self):
        self._models = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._models is None:
                from ..study import Models

                self._models = Models()
        return self._models


MODELS = SharedModels()


class SessionData:
    """One session: its `Study` (data, baseline, LoRA model, runs), its temporary folder and its latest download.

    A plain class, not a dataclass: gradio serialises dataclass state values, and a session holds a thread and
    models. The study is made on first use, so building the app imports no torch.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL):
        self._model_name = model_name
        self._study = None
        self._scratch: str | None = None  # see scratch_dir()
        self.export_zip: str | None = None  # the latest run's adapter zip, for the download button
        self.runs_key = secrets.token_hex(16)  # names this session's folder of app-saved runs (lora_demo.runs)
        self.closed = False
        self.last_used = time.monotonic()  # set by `guard` at every event of the session, which also reopens it
        self._lock = threading.Lock()  # the page's load event and a first click make the study at the same time

    def __deepcopy__(self, memo):
        # gradio deep-copies the initial state for each new session; a session starts empty
        start_sweeping()
        close_idle_sessions()
        session = SessionData(model_name=self._model_name)
        OPEN_SESSIONS.add(session)
        return session

    @property
    def study(self):
        """The session's `lora_demo.study.Study`, made on first use, once.

        A session's events run in several concurrency groups at once: a visitor who presses "Run the whole study"
        while the page's load event still runs would otherwise get two studies, train in one and find the other
        (no model) when the run ends.
        """
        with self._lock:
            if self._study is None:
                from ..study import Study

                self._study = Study(self._model_name, models=MODELS.get())
            return self._study

    @property
    def holds_study(self) -> bool:
        """Whether the session holds a study (data, models, runs): False once it is closed."""
        return self._study is not None

    @property
    def splits(self):
        """The study's loaded data, or None; asking makes no study (a visitor who only looks holds nothing)."""
        return self._study.splits if self._study is not None else None

    @property
    def model_name(self) -> str:
        return self._study.model_name if self._study is not None else self._model_name

    @property
    def training(self) -> bool:
        return self._study is not None and self._study.training

    def scratch_dir(self) -> Path:
        """This session's own temporary folder (adapter zips, labelled CSVs); made on first use."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="lora-demo-session-")
        return Path(self._scratch)

    def close(self) -> None:
        """End the session: stop its training run, drop its study, delete its temporary folder.

        Called when the browser tab closes (`demo.unload`) and when gradio deletes the state; safe to call twice.
        """
        self.closed = True
        study, self._study = self._study, None
        if study is not None:
            study.stop_training(wait=CLOSE_WAIT_SECONDS)  # it stops after its current step
            study.release()
        del study
        self.export_zip = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        release_memory()


OPEN_SESSIONS: weakref.WeakSet[SessionData] = weakref.WeakSet()  # every session gradio has made


def idle_seconds() -> float:
    """How long a session may go unused before it is closed: `LORA_DEMO_IDLE_MINUTES`, else `IDLE_SECONDS`."""
    value = os.environ.get("LORA_DEMO_IDLE_MINUTES")
    try:
        return float(value) * 60 if value else IDLE_SECONDS
    except ValueError:
        raise SystemExit(f"LORA_DEMO_IDLE_MINUTES must be a number of minutes, got {value!r}") from None


def close_idle_sessions(idle: float | None = None) -> list[SessionData]:
    """Close the sessions nobody has used for `idle` seconds (default `idle_seconds()`) and that are not
    training; returns them.

    Browsers and gradio_client announce when they leave (`demo.unload`); a client that calls the HTTP API without
    gradio's heartbeat never does, so what its session holds is freed here: when a new session arrives, and every
    `SWEEP_SECONDS` by a thread of its own (`start_sweeping`), so a quiet Space frees it too.
    """
    cutoff = time.monotonic() - (idle_seconds() if idle is None else idle)
    idle = [s for s in list(OPEN_SESSIONS) if not s.closed and not s.training and s.last_used < cutoff]
    for session in idle:
        session.close()
    return idle


_SWEEPER: list[threading.Thread] = []
_SWEEPER_LOCK = threading.Lock()


def start_sweeping() -> None:
    """Start, once per process, the thread that closes idle sessions every `SWEEP_SECONDS`."""

    def sweep():
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                closed = close_idle_sessions()
            except Exception:  # noqa: BLE001 (a failed sweep is logged; the next one tries again)
                logger.exception("closing idle sessions failed")
                continue
            if closed:
                logger.info("closed %d idle session(s)", len(closed))

    with _SWEEPER_LOCK:
        if not _SWEEPER:
            _SWEEPER.append(threading.Thread(target=sweep, name="lora-demo-idle-sweeper", daemon=True))
            _SWEEPER[0].start()


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
    the request's session hash (gradio-internal: `app.state_holder.session_data[...].state_data`, pinned with
    gradio and covered by the disconnect tests). The value is then stored again, which starts gradio's countdown
    for closed sessions; when it runs out gradio deletes the state and calls its `delete_callback`.
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
