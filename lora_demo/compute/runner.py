"""Where a job runs: in this process, or through ZeroGPU's `spaces.GPU` in a forked worker.

`runner()` picks: `SPACES_ZERO_GPU` set (a ZeroGPU Space) runs every job through `spaces.GPU`; with
`LORA_DEMO_FAKE_ZEROGPU=1` the stand-in from `tests/zerogpu_stub.py` takes its place (the same contract: a forked
worker, arguments, results and every yielded value pickled across, the duration enforced), so anyone can run the
CLI or the app as ZeroGPU runs it; otherwise jobs run in this process.

In a worker a job's errors come back as values (a user's mistake keeps its message; a crash is named), because
the platform replaces any exception but its own with a bare "worker error". A call the platform cut (past its
duration) or aborted ends in `JobAborted`, a `UserError` that says so.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..config import REPO_ROOT, UserError, out_of_memory

logger = logging.getLogger("lora_demo.compute")

GENERATORS = frozenset({"train"})  # jobs that stream values while they run
# the duration a GPU call asks for: a floor (loading the model onto the GPU), a cost per review of work
# (`jobs.WORK`) and a cap. Generous for an H200 slice, where 1,000 reviews score in a few seconds.
DURATION_FLOOR = 20
SECONDS_PER_REVIEW = {"minilm": 0.01, "t5-small": 0.03, "flan-t5-small": 0.03}
DURATION_CAP = 120
TRAIN_BUDGET_SHARE = 0.85  # a training job stops itself, keeping what it trained, at this share of its duration


class JobAborted(UserError):
    """A job in a worker was cut by the platform (past its duration) or failed there; the session keeps its state."""


def duration(name: str, args: tuple, kwargs: dict) -> int:
    """Seconds a GPU call of job `name` asks for, from its work: floor + reviews x cost, at most the cap."""
    from .jobs import WORK

    ref = args[0]
    per_review = SECONDS_PER_REVIEW.get(ref.name, 0.03)
    return int(min(DURATION_CAP, DURATION_FLOOR + math.ceil(WORK[name](*args, **kwargs) * per_review)))


def check_fits(name: str, *args, **kwargs) -> None:
    """Refuse up front a job whose work would need more than a GPU call's cap (ZeroGPU only).

    Raises:
        UserError: saying what to make smaller.
    """
    from .jobs import WORK

    ref = args[0]
    needed = DURATION_FLOOR + WORK[name](*args, **kwargs) * SECONDS_PER_REVIEW.get(ref.name, 0.03)
    if needed > DURATION_CAP:
        what = "fewer training reviews or epochs" if name in GENERATORS else "fewer reviews"
        job = name.replace("_", " ")
        if name == "method":  # (ref, frames, test, short, method, ...): say which
            job, what = f"{args[4]} run", "fewer training reviews or epochs, or leave it out of the comparison"
        raise UserError(
            f"this {job} would need about {needed:.0f} s of GPU time, more than the "
            f"{DURATION_CAP} s a ZeroGPU call may take: use {what}"
        )


def _run_in_worker(name: str, args: tuple, kwargs: dict):
    """In the worker: the job, its result or its error as a value (`("ok", value)` or `("error", kind, text)`)."""
    from . import jobs

    try:
        return ("ok", getattr(jobs, name)(*args, **kwargs))
    except Exception as err:  # noqa: BLE001 (every error goes back as a value)
        return _error_value(err)


def _stream_in_worker(name: str, args: tuple, kwargs: dict):
    from . import jobs

    try:
        for value in getattr(jobs, name)(*args, **kwargs):
            yield ("ok", value)
    except Exception as err:  # noqa: BLE001
        yield _error_value(err)


def _error_value(err: Exception) -> tuple:
    import traceback

    if isinstance(err, UserError):
        return ("error", "user", str(err))
    if out_of_memory(err):
        return ("error", "memory", str(err))
    return ("error", "crash", "".join(traceback.format_exception(err)))


def _raise(name: str, kind: str, text: str):
    if kind == "user":
        raise UserError(text)
    if kind == "memory":
        raise MemoryError(text)
    logger.error("job %s failed in its worker:\n%s", name, text)
    raise JobAborted(f"the {name.replace('_', ' ')} job failed in its GPU worker ({text.strip().splitlines()[-1]})")


class Runner:
    """Runs jobs by name, here. `in_workers`: whether each call crosses a process boundary."""

    name = "in-process"
    in_workers = False

    def call(self, name: str, *args, progress=None, **kwargs):
        from . import jobs

        return getattr(jobs, name)(*args, **({"progress": progress} if progress else {}), **kwargs)

    def stream(self, name: str, *args, **kwargs) -> Iterator:
        from . import jobs

        return getattr(jobs, name)(*args, **kwargs)

    def budget(self, name: str, *args, **kwargs) -> float | None:
        """Seconds a job may run before it ends itself (None: no limit here)."""
        return None

    def check(self, name: str, *args, **kwargs) -> None:
        """Refuse a job this runner could not finish, before any job starts (`check_fits` on ZeroGPU)."""


class WorkerRunner(Runner):
    """Runs jobs through a `spaces.GPU`-like decorator: a worker per call, everything pickled across."""

    in_workers = True

    def __init__(self, gpu: Callable, name: str = "zerogpu"):
        self.name = name
        self._call = gpu(_run_in_worker, duration=duration)
        self._stream = gpu(_stream_in_worker, duration=duration)

    def call(self, name: str, *args, progress=None, **kwargs):
        check_fits(name, *args, **kwargs)
        started = time.monotonic()
        try:
            outcome = self._call(name, args, kwargs)
        except Exception as err:  # the platform's own error: the call was cut or its worker died
            raise self._aborted(name, args, kwargs, started, err) from None
        if outcome[0] == "error":
            _raise(name, *outcome[1:])
        return outcome[1]

    def stream(self, name: str, *args, **kwargs) -> Iterator:
        check_fits(name, *args, **kwargs)
        started = time.monotonic()
        values = self._stream(name, args, kwargs)
        try:
            for outcome in values:
                if outcome[0] == "error":
                    _raise(name, *outcome[1:])
                yield outcome[1]
        except (UserError, MemoryError, GeneratorExit):
            raise
        except Exception as err:
            raise self._aborted(name, args, kwargs, started, err) from None
        finally:
            values.close()

    def budget(self, name: str, *args, **kwargs) -> float:
        return TRAIN_BUDGET_SHARE * duration(name, args, kwargs)

    def check(self, name: str, *args, **kwargs) -> None:
        check_fits(name, *args, **kwargs)

    def _aborted(self, name, args, kwargs, started, err) -> JobAborted:
        seconds, limit = time.monotonic() - started, duration(name, args, kwargs)
        logger.warning("job %s ended in the platform after %.0f s (limit %s s): %r", name, seconds, limit, err)
        how = f"ran past its {limit} s GPU time" if seconds >= limit else "was stopped by the GPU platform"
        return JobAborted(
            f"the {name.replace('_', ' ')} job {how} ({err}); nothing of this session was lost: try again, "
            "with fewer reviews if it keeps happening"
        )


@functools.cache
def runner() -> Runner:
    """The runner this process uses (see the module's docstring)."""
    if os.environ.get("LORA_DEMO_FAKE_ZEROGPU", "").lower() in ("1", "true"):
        return WorkerRunner(_stand_in().GPU, name="zerogpu stand-in")
    if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true"):
        import spaces

        return WorkerRunner(spaces.GPU)
    return Runner()


def _stand_in():
    """`tests/zerogpu_stub.py`, the ZeroGPU stand-in, imported from the repository."""
    import sys

    if "zerogpu_stub" in sys.modules:  # the tests imported it already: one module, one count of calls
        return sys.modules["zerogpu_stub"]
    path = Path(REPO_ROOT) / "tests" / "zerogpu_stub.py"
    if not path.is_file():
        raise UserError(f"LORA_DEMO_FAKE_ZEROGPU is set, but the stand-in {path} is not here")
    spec = importlib.util.spec_from_file_location("zerogpu_stub", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zerogpu_stub"] = module
    spec.loader.exec_module(module)
    return module
