"""A stand-in for ZeroGPU's `spaces.GPU`, with the same contract, for running the CLI, the app and the tests as a
ZeroGPU Space runs them (`LORA_DEMO_FAKE_ZEROGPU=1`; `lora_demo.compute.runner` imports this file).

What `spaces` 0.51 does (`spaces/zero/wrappers.py`), and this does too:
- each call of a decorated function runs in a forked worker process, not in the caller;
- its arguments, its return value and every value a generator yields are pickled across (here with `pickle` to
  bytes, so anything that would not cross the real boundary fails here too); what the function changes in the
  objects it was given stays in the worker and is lost;
- a call past its duration is cut: its worker is killed and the caller gets an error ("GPU task aborted");
  `duration` may be a number of seconds or a callable of the call's arguments (default 60 s);
- an exception in the worker reaches the caller as a "ZeroGPU worker error" naming only its class;
- a consumer that closes a generator makes the worker close the function's generator at its next value.

Unlike `spaces`, a worker serves one call and exits (`spaces` may reuse an idle one), so a model a job loaded is
loaded again by the next job. There is no GPU: the worker runs on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Callable

DEFAULT_DURATION = 60
CALLS = {"regular": 0, "generator": 0}  # calls made from this process, for tests

_fork = multiprocessing.get_context("fork")


class GPUTaskAborted(RuntimeError):
    """The platform cut the call (past its duration) or its worker died."""


def GPU(task: Callable | None = None, *, duration=None, size=None):
    """`@GPU`, `@GPU(duration=...)` or `GPU(fn, duration=...)`, as `spaces.GPU`."""
    if task is None:
        return functools.partial(GPU, duration=duration, size=size)
    if inspect.isgeneratorfunction(task):
        return _generator_wrapper(task, duration)
    return _regular_wrapper(task, duration)


def _seconds(duration, args, kwargs) -> float:
    value = duration(*args, **kwargs) if callable(duration) else duration
    if value is None:
        return DEFAULT_DURATION
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


def _start(target, task, args, kwargs):
    """Fork a worker for one call; returns (process, the end the caller reads, the stop event)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked after the tokenizers' thread pool ran
    reader, writer = _fork.Pipe(duplex=False)
    stop = _fork.Event()
    payload = pickle.dumps((args, kwargs))  # the arguments cross as bytes, as through spaces' queue
    process = _fork.Process(target=target, args=(task, payload, writer, stop), daemon=True)
    process.start()
    writer.close()
    return process, reader, stop


def _send(writer, message) -> None:
    try:
        data = pickle.dumps(message)
    except Exception as err:  # a value that does not pickle is the caller's error, as with spaces
        data = pickle.dumps(("error", type(err).__name__, traceback.format_exc()))
    try:
        writer.send_bytes(data)
    except OSError:  # the caller has gone (it closed the generator): nobody is left to tell
        pass


def _error(err: BaseException) -> tuple:
    return ("error", type(err).__name__, "".join(traceback.format_exception(err)))


def _run_regular(task, payload, writer, stop):
    args, kwargs = pickle.loads(payload)
    try:
        _send(writer, ("ok", task(*args, **kwargs)))
    except Exception as err:
        _send(writer, _error(err))
    writer.close()


def _run_generator(task, payload, writer, stop):
    args, kwargs = pickle.loads(payload)
    values = task(*args, **kwargs)
    try:
        for value in values:
            if stop.is_set():
                values.close()
                break
            _send(writer, ("yield", value))
        _send(writer, ("end",))
    except Exception as err:
        _send(writer, _error(err))
    writer.close()


def _receive(reader, process, deadline_seconds: float, started: float):
    left = deadline_seconds - (time.monotonic() - started)
    if left <= 0 or not reader.poll(left):
        process.kill()
        process.join()
        raise GPUTaskAborted(f"GPU task aborted: past its duration of {deadline_seconds:.0f} s")
    try:
        message = pickle.loads(reader.recv_bytes())
    except EOFError:
        process.join()
        raise GPUTaskAborted(f"GPU task aborted: the worker exited with code {process.exitcode}") from None
    if message[0] == "error":
        print(message[2])  # spaces prints the worker's traceback on the server
        process.join()
        raise RuntimeError(f"ZeroGPU worker error: {message[1]}")
    return message


@contextlib.contextmanager
def _call(kind: str, target, task, duration, args, kwargs):
    """One call in a worker of its own: yields a function that receives the worker's next message, and the event
    that asks a generator to stop; the worker is gone when the block ends."""
    CALLS[kind] += 1
    seconds, started = _seconds(duration, args, kwargs), time.monotonic()
    process, reader, stop = _start(target, task, args, kwargs)
    try:
        yield (lambda: _receive(reader, process, seconds, started)), stop
    finally:
        reader.close()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


def _regular_wrapper(task, duration):
    @functools.wraps(task)
    def call(*args, **kwargs):
        with _call("regular", _run_regular, task, duration, args, kwargs) as (receive, _):
            return receive()[1]

    call.zerogpu = None
    return call


def _generator_wrapper(task, duration):
    @functools.wraps(task)
    def call(*args, **kwargs):
        with _call("generator", _run_generator, task, duration, args, kwargs) as (receive, stop):
            while (message := receive())[0] != "end":
                try:
                    yield message[1]
                except GeneratorExit:  # the consumer went away: the worker ends its generator at the next value
                    stop.set()
                    raise

    call.zerogpu = None
    return call
