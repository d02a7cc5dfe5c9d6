"""A visitor's run, owned by their session rather than by one connection: it goes on when the page that started it
reloads or drops its connection, and any page of the session can follow it from the start.

`LiveRun` runs a study's stream (`Study.steps`) in a thread of its own and records every event; `follow()` replays
them and then waits for the next. Runs take turns for the machine in one `Line` per process, first come first
served: a run waiting for its turn reports its place and an estimate of the wait, from the work of the runs ahead
and the speed measured on the runs that finished.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    """The run waits for its turn: `ahead` runs before it, about `seconds` (None: not measured yet)."""

    ahead: int
    seconds: float | None


@dataclass(frozen=True)
class Progress:
    """A long step's progress (scoring the test reviews, …), as `Study.steps` reports it."""

    what: str
    done: int
    total: int


class Line:
    """Runs take turns, first come first served; at most `capacity` wait.

    The wait is estimated from each run's work (reviews through the model) and the seconds per unit of work
    measured on the runs that finished in this process.
    """

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._runs: list[LiveRun] = []  # the running one first, then the waiting ones in order
        self._cond = threading.Condition()
        self._seconds_per_work: float | None = None

    def join(self, run: LiveRun) -> None:
        """Take a place. Raises the `UserError` saying the line is full."""
        from .config import UserError

        with self._cond:
            if len(self._runs) > self.capacity:
                waiting = len(self._runs) - 1
                raise UserError(
                    f"{waiting} runs are already waiting for the machine: please try again in a few minutes"
                )
            self._runs.append(run)

    def wait_turn(self, run: LiveRun, report: Callable[[Waiting], None]) -> bool:
        """Block until `run` is first in line (reporting its place when it changes); False if it left the line."""
        told = None
        with self._cond:
            while run in self._runs and self._runs[0] is not run:
                ahead = self._runs[: self._runs.index(run)]
                place = (len(ahead), self._estimate(ahead))
                if place != told:
                    report(Waiting(*place))
                    told = place
                self._cond.wait(timeout=5)  # the estimate is redone as the run ahead goes
            return run in self._runs

    def leave(self, run: LiveRun, work_done: float | None = None, seconds: float | None = None) -> None:
        """Leave the line (finished, stopped or gone); a finished run's speed updates the estimate."""
        with self._cond:
            if run in self._runs:
                self._runs.remove(run)
            if work_done and seconds:
                measured = seconds / work_done
                old = self._seconds_per_work
                self._seconds_per_work = measured if old is None else 0.5 * old + 0.5 * measured
            self._cond.notify_all()

    def _estimate(self, ahead: list[LiveRun]) -> float | None:
        if self._seconds_per_work is None:
            return None
        seconds = 0.0
        for other in ahead:
            left = other.work
            if other.started is not None:  # the one running: what its own speed says is left of it
                left = max(0.0, other.work - (time.monotonic() - other.started) / self._seconds_per_work)
            seconds += left * self._seconds_per_work
        return seconds


class LiveRun:
    """`steps()` run in a thread of its own once it is `line`'s turn, its events kept for every follower.

    Args:
        steps: makes the event stream (called in the run's thread, with a progress callback).
        work: how much work the run is (reviews through the model), for the line's estimates.
        line: where runs take turns; None: start at once.
        name: the thread's name.
    """

    def __init__(self, steps: Callable[[Callable], Iterator], work: float, line: Line | None, name: str = "lora-run"):
        self.work = work
        self.events: list = []
        self.error: BaseException | None = None
        self.done = False
        self.started: float | None = None
        self.cancelled = False
        self._steps, self._line = steps, line
        self._cond = threading.Condition()
        if line is not None:
            line.join(self)
        # the caller's context goes with the run: on ZeroGPU the GPU calls are made for the visitor whose request
        # started it (gradio keeps the request in a context variable), so they count against the visitor's quota
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name=name, daemon=True)
        self._thread.start()

    def _add(self, event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def _run(self):
        try:
            if self._line is not None and not self._line.wait_turn(self, self._add):
                return
            with self._cond:  # started or cancelled, never both
                if self.cancelled:
                    return
                self.started = time.monotonic()
            for event in self._steps(lambda what, done, total: self._add(Progress(what, done, total))):
                self._add(event)
        except BaseException as err:  # handed to every follower
            self.error = err
        finally:
            if self._line is not None:
                seconds = None if self.started is None or self.error or self.cancelled else self.seconds
                self._line.leave(self, self.work, seconds)
            with self._cond:
                self.done = True
                self._cond.notify_all()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0

    @property
    def waiting(self) -> bool:
        return not self.done and self.started is None

    def cancel(self) -> bool:
        """Leave the line if the run has not started yet; returns whether it had not."""
        with self._cond:
            if self.started is not None or self.done or self.cancelled:
                return False
            self.cancelled = True
        if self._line is not None:
            self._line.leave(self)
        return True

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def follow(self, start: int = 0, poll: float = 1.0) -> Iterator:
        """Every event from `start` on, as it comes; ends with the run (raising its error, if it failed).

        Yields None every `poll` seconds while nothing happens, so a follower can notice it is no longer wanted.
        """
        seen = start
        while True:
            with self._cond:
                if len(self.events) <= seen and not self.done:
                    self._cond.wait(timeout=poll)
                batch, finished = self.events[seen:], self.done  # nothing is added once done
            seen += len(batch)
            if not batch and not finished:
                yield None
            yield from batch
            if finished:
                if self.error is not None:
                    raise self.error
                return
