"""A thread-safe cache for what a process shares between its sessions: values made once per key, on first use."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable


class Cache:
    """Values made on first use under a lock of their own per key (a failure is not kept); at most `size` kept,
    the least recently used dropped first (None: all).

    Args:
        size: at most this many values.
        budget, weigh: where given, at most `budget` of `weigh(value)` summed over the values kept (the newest is
            always kept).
    """

    def __init__(
        self, size: int | None = None, budget: float | None = None, weigh: Callable[[object], float] | None = None
    ):
        self._values: collections.OrderedDict = collections.OrderedDict()
        self._locks: dict = {}
        self._lock = threading.Lock()
        self._size = size
        self._budget, self._weigh, self._weights, self._weight = budget, weigh, {}, 0.0

    def get(self, key, make: Callable[[], object]):
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one load per key; other keys are served meanwhile
            with self._lock:
                if key in self._values:
                    return self._values[key]
            value = make()
            with self._lock:
                self._values[key] = value
                if self._weigh is not None:
                    self._weights[key] = self._weigh(value)
                    self._weight += self._weights[key]
                while len(self._values) > 1 and self._over():
                    self._weight -= self._weights.pop(self._values.popitem(last=False)[0], 0.0)
                self._locks.pop(key, None)
            return value

    def peek(self, key):
        """The value kept for `key` (now the most recently used), or None: nothing is made."""
        with self._lock:
            if key not in self._values:
                return None
            self._values.move_to_end(key)
            return self._values[key]

    def put(self, key, value) -> None:
        """Keep `value` for `key`, in place of any value kept for it."""
        with self._lock:
            if key in self._values:
                self._weight -= self._weights.pop(key, 0.0)
                del self._values[key]
        self.get(key, lambda: value)

    @property
    def weight(self) -> float:
        """The sum of `weigh(value)` over the values kept (0 without `weigh`)."""
        with self._lock:
            return self._weight

    def _over(self) -> bool:
        too_many = self._size is not None and len(self._values) > self._size
        return too_many or (self._budget is not None and self._weight > self._budget)

    def drop(self, matches: Callable[[object], bool]) -> None:
        """Forget the values whose key `matches`."""
        with self._lock:
            for key in [key for key in self._values if matches(key)]:
                del self._values[key]
                self._weight -= self._weights.pop(key, 0.0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def clear(self):
        with self._lock:
            self._values.clear()
            self._weights.clear()
            self._weight = 0.0
