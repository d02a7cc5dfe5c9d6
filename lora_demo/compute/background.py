"""A training run in a thread of its own, inside the training job: its events through a queue, a stop flag, then
its result or its error.

The Trainer calls back; the job (`compute.jobs.train`) is a generator: this thread turns the one into the other,
so the job can yield each event while the Trainer trains, wherever the job runs. Nothing here knows about gradio.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ..train import TrainEvent

T = TypeVar("T")
_DONE = object()  # put on the queue when the work has ended, however it ended


class TrainingJob(Generic[T]):
    """Run `work(on_event, stop_event)` in a daemon thread.

    Args:
        work: the training; it calls `on_event` with each `TrainEvent` and ends after its current step once
            `stop_event` is set (`train.StopCallback`).
        name: the thread's name, for the server log.
        stop_event: the flag to use (a session keeps one per run); default: a new one.
    """

    def __init__(
        self,
        work: Callable[[Callable[[TrainEvent], None], threading.Event], T],
        name: str = "lora-train",
        stop_event: threading.Event | None = None,
    ):
        self.stop_event = stop_event or threading.Event()
        self._work = work
        self._queue: queue.Queue = queue.Queue()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        try:
            self._result = self._work(self._queue.put, self.stop_event)
        except BaseException as err:  # handed to whoever asks for the result
            self._error = err
        finally:
            self._queue.put(_DONE)

    def start(self) -> TrainingJob[T]:
        self.stop_event.clear()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the run to end after its current step; what it trained so far is kept."""
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def batches(self, interval: float) -> Iterator[list[TrainEvent]]:
        """The events as they come, in batches at most every `interval` seconds; ends when the work has ended.

        A batch may be empty: a caller that redraws on a timer still gets its turn during a long step.
        """
        finished, last = False, time.monotonic()
        while not finished:
            batch = []
            try:
                while True:
                    wait = max(0.0, interval - (time.monotonic() - last))
                    item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
                    if item is _DONE:
                        finished = True
                        break
                    batch.append(item)
            except queue.Empty:
                pass
            last = time.monotonic()
            yield batch

    def result(self) -> T:
        """What the work returned, once it has ended.

        Raises:
            whatever the work raised.
        """
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result
