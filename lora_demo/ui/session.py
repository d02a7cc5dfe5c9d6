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
from ..live import Line

logger = logging.getLogger("lora_demo.ui")

WAITING_RUNS = 8  # runs that may wait for the machine at once (`LORA_DEMO_WAITING_RUNS`); past it: try again later
# The CPU budget shared by every session. Only long work waits in gradio's queue, which shows each waiting user
# their place: events of one group run at most `concurrency_limit` at a time.
TRAIN_SLOTS = {"concurrency_id": "train", "concurrency_limit": 1}  # the measured LoRA vs full fine-tuning steps
# a page following its session's run (`live.LiveRun`): the runs themselves take turns in `LINE`, one at a time, and
# a page that waits there holds no CPU, so as many pages follow as runs may wait
RUN_SLOTS = {"concurrency_id": "runs", "concurrency_limit": WAITING_RUNS + 2}
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
REATTACH_SECONDS = 120  # a session whose pages all closed waits this long for a reload (`LORA_DEMO_REATTACH_SECONDS`)
SWEEP_SECONDS = 60  # how often idle and left sessions are looked for (more often when the wait above is shorter)


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
        self.key: str | None = None  # the browser's key for this session (`gr.BrowserState`), once it has a page
        self.pages: set[str] = set()  # the connections (gradio session hashes) showing it now
        self.left_at: float | None = None  # when its last page went away: it waits `reattach_seconds()` for a reload
        self.run = None  # its latest `live.LiveRun`: a run belongs to the session, not to the page that started it

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
        """Whether the session's run trains, or waits for its turn to."""
        running = self.run is not None and not self.run.done
        return running or (self._study is not None and self._study.training)

    def start_run(self, steps, work: float) -> object:
        """Start the session's run (`live.LiveRun` of `steps(progress)`) in the process's line of runs.

        Raises:
            UserError: while another run of the session is going, or when the line is full.
        """
        from ..config import UserError
        from ..live import LiveRun

        if self.training:
            raise UserError("a run is already going in this session: it is shown here; press Stop to end it")
        self.run = LiveRun(steps, work, LINE, name=f"lora-run-{self.model_name}")
        return self.run

    def stop(self) -> str | None:
        """Stop the session's run: leave the line if it waits, else end its training after the current step.
        Returns what was done, or None when nothing ran."""
        if self.run is not None and self.run.cancel():
            return "Left the line before the run started; nothing was trained."
        if self._study is not None and self._study.stop_training():
            if getattr(self.run, "kind", None) == "methods":
                return "Stopping the comparison after the current step; the methods finished by then are compared."
            return "Stopping after the current step; the model trained so far is kept and scored."
        return None

    def attach(self, page: str) -> None:
        """A page shows this session (opened, or reloaded with the browser's key)."""
        self.pages.add(page)
        self.left_at, self.closed = None, False

    def state_deleted(self) -> None:
        """gradio drops a connection's state (an hour after it closed): close the session unless a page shows it."""
        if not self.pages:
            self.close()

    def leave(self, page: str) -> None:
        """A page went away; when none is left the session waits `reattach_seconds()` for a reload, then closes."""
        self.pages.discard(page)
        if not self.pages:
            self.left_at = time.monotonic()

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
        if self.key is not None:
            BY_KEY.pop(self.key, None)
        if self.run is None and self._study is None and self._scratch is None:
            return  # closed already, or never held anything: nothing to free (and no collection to pay for)
        run, self.run = self.run, None
        if run is not None:
            run.cancel()
        study, self._study = self._study, None
        if study is not None:
            study.abandoned = True
            study.stop_training(wait=CLOSE_WAIT_SECONDS)  # it stops after its current step
            study.release()
        if run is not None:
            run.join(timeout=CLOSE_WAIT_SECONDS)  # its scoring after the stop, if any
        del study, run
        self.export_zip = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        release_memory()


OPEN_SESSIONS: weakref.WeakSet[SessionData] = weakref.WeakSet()  # every session gradio has made
BY_KEY: dict[str, SessionData] = {}  # the sessions browsers hold a key to, until they close
_BY_KEY_LOCK = threading.Lock()


def _number_from_env(name: str, default: float, scale: float = 1.0) -> float:
    value = os.environ.get(name)
    try:
        return float(value) * scale if value else default
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {value!r}") from None


def reattach_seconds() -> float:
    return _number_from_env("LORA_DEMO_REATTACH_SECONDS", REATTACH_SECONDS)


LINE = Line(capacity=int(_number_from_env("LORA_DEMO_WAITING_RUNS", WAITING_RUNS)))  # runs take turns


def session_for(key: str | None, fresh: SessionData, page: str) -> tuple[SessionData, str]:
    """The session a page shows: the browser's own (`key`) if it is still open, else `fresh` under a new key.

    Returns the session and the key the browser keeps (`gr.BrowserState`).
    """
    with _BY_KEY_LOCK:
        session = BY_KEY.get(key) if key else None
        if session is None or session.closed:
            session = fresh
            if session.key is None:
                session.key = secrets.token_urlsafe(24)
            BY_KEY[session.key] = session
    session.attach(page)
    return session, session.key


def idle_seconds() -> float:
    """How long a session may go unused before it is closed: `LORA_DEMO_IDLE_MINUTES`, else `IDLE_SECONDS`."""
    return _number_from_env("LORA_DEMO_IDLE_MINUTES", IDLE_SECONDS, scale=60)


def close_idle_sessions(idle: float | None = None) -> list[SessionData]:
    """Close the sessions nobody has used for `idle` seconds (default `idle_seconds()`) and that are not
    training; returns them.

    Browsers and gradio_client announce when they leave (`demo.unload`); a client that calls the HTTP API without
    gradio's heartbeat never does, so what its session holds is freed here: when a new session arrives, and every
    `SWEEP_SECONDS` by a thread of its own (`start_sweeping`), so a quiet Space frees it too.
    """
    now = time.monotonic()
    cutoff = now - (idle_seconds() if idle is None else idle)
    left = now - reattach_seconds()

    def gone(s: SessionData) -> bool:  # nobody uses it, or all its pages left and none came back (training or not)
        return (not s.training and s.last_used < cutoff) or (s.left_at is not None and s.left_at < left)

    idle = [s for s in list(OPEN_SESSIONS) if not s.closed and gone(s)]
    for session in idle:
        session.close()
    return idle


_SWEEPER: list[threading.Thread] = []
_SWEEPER_LOCK = threading.Lock()


def start_sweeping() -> None:
    """Start, once per process, the thread that closes idle sessions every `SWEEP_SECONDS`."""

    def sweep():
        while True:
            time.sleep(min(SWEEP_SECONDS, max(0.1, reattach_seconds() / 4), 5.0))
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
    """A `demo.unload` handler for `state`: when an API client goes away, close its session; when a page goes away,
    its session waits `reattach_seconds()` for the browser to come back (a reload), then closes.

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
        if session.key is None:  # an API client: no browser to come back
            session.close()
            logger.info("session %s closed", request.session_hash[:8])
        else:  # a page: its browser may reload; the session waits for it, then closes (`close_idle_sessions`)
            session.leave(request.session_hash)
            logger.info("page %s left its session", request.session_hash[:8])
        values[state._id] = session

    return unload
