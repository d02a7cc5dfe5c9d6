"""A session's run: recorded for every follower, taking turns in one line with places and estimates."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from lora_demo.config import UserError
from lora_demo.live import Line, LiveRun, Progress, Waiting

VISITOR = contextvars.ContextVar("visitor", default=None)


def steps_of(values, gate: threading.Event | None = None, seen: list | None = None):
    def steps(report):
        if seen is not None:
            seen.append(VISITOR.get())
        report("scoring", 1, 2)
        for value in values:
            if gate is not None:
                gate.wait(10)
            yield value

    return steps


def test_every_follower_sees_every_event_from_the_start_and_the_error():
    gate = threading.Event()
    run = LiveRun(steps_of(["a", "b", "c"], gate), work=1, line=None)
    early = run.follow()
    gate.set()
    run.join(10)
    late = [event for event in run.follow() if event is not None]  # a page that came back after the end
    assert late == [Progress("scoring", 1, 2), "a", "b", "c"]
    assert [event for event in early if event is not None] == late

    def broken(report):
        yield "a"
        raise UserError("the data changed")

    failed = LiveRun(broken, work=1, line=None)
    with pytest.raises(UserError, match="the data changed"):
        list(failed.follow())


def test_runs_take_turns_and_a_waiting_run_is_told_its_place_and_the_wait():
    line, gates = Line(capacity=2), [threading.Event() for _ in range(3)]
    first = LiveRun(steps_of(["1"], gates[0]), work=100, line=line)
    second = LiveRun(steps_of(["2"], gates[1]), work=50, line=line)
    third = LiveRun(steps_of(["3"], gates[2]), work=10, line=line)
    with pytest.raises(UserError, match="2 runs are already waiting"):
        LiveRun(steps_of(["4"]), work=1, line=line)
    time.sleep(0.2)
    assert second.events == [Waiting(1, None)] and third.events == [Waiting(2, None)]  # no speed measured yet
    gates[0].set()
    first.join(10)
    time.sleep(0.2)
    assert second.started is not None and third.events[-1].ahead == 1
    assert third.events[-1].seconds is not None  # the first run's speed now estimates the wait
    assert third.cancel() and not third.cancel()  # Stop while waiting: out of the line
    gates[1].set()
    second.join(10)
    third.join(10)
    assert third.cancelled and third.started is None and "3" not in third.events


def test_a_run_carries_the_context_of_the_request_that_started_it():
    seen = []
    VISITOR.set("visitor-7")
    LiveRun(steps_of(["a"], seen=seen), work=1, line=None).join(10)
    assert seen == ["visitor-7"]
