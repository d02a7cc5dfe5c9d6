"""A stop request that reaches a training job wherever it runs: in this process, or in a forked worker.

The flag is a file: `set()` creates it and the job's `StopCallback` looks for it after each step; the job marks
the end of its training with a second file (`finish()`), so whoever asked can tell when it has stopped. A path
pickles and a forked worker sees the same file system, so both cross the process boundary that a
`threading.Event` cannot.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
import time
from pathlib import Path

FOLDER = Path(tempfile.gettempdir()) / "lora-demo-stop"


class StopFlag:
    """A picklable stop request; a new flag starts unset."""

    def __init__(self, path: str | None = None):
        if path is None:
            FOLDER.mkdir(exist_ok=True)
            path = str(FOLDER / secrets.token_hex(8))
        self.path = path

    def set(self) -> None:
        Path(self.path).touch()

    def clear(self) -> None:
        """Unset, and forget that a run finished: the flag's files are gone."""
        Path(self.path).unlink(missing_ok=True)
        Path(self.path + ".done").unlink(missing_ok=True)

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def finish(self) -> None:
        """Said by the job: its training has ended (finished, stopped or failed) and holds nothing any more."""
        Path(self.path + ".done").touch()

    def finished(self) -> bool:
        return os.path.exists(self.path + ".done")

    def __repr__(self) -> str:
        return f"StopFlag({self.path!r}, set={self.is_set()})"


class RunStop:
    """What ends a training run after its current step: the caller's flag, the job's own time budget, or the job
    itself (its consumer went away). Lives inside the job; `train.StopCallback` asks `is_set()` each step."""

    def __init__(self, flag: StopFlag | None, seconds: float | None = None):
        self.flag = flag
        self.deadline = time.monotonic() + seconds if seconds else None
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def is_set(self) -> bool:
        return self._event.is_set() or (self.flag is not None and self.flag.is_set()) or self.out_of_time
