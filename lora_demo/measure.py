"""Measuring tools shared by `bench` and the resources panel: memory, the machine's own peak, FLOPs, latency.

Speed figures do not carry between machines (the same command took 40 s on one and 72 s on another of the
same kind), so the bench reports them beside what this machine can do: the rate of one large matrix
product, measured in the same run, and the share of it that training reached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import multiprocessing
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch

MATMUL_SIZE = 2048


class PeakRSS:
    """Highest resident memory of this process while the block runs, sampled every 20 ms."""

    def __init__(self):
        self.peak = 0
        self._done = threading.Event()
        self._process = psutil.Process()

    def read(self) -> int:
        return self._process.memory_info().rss

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self.read())
            self._done.wait(0.02)

    def __enter__(self):
        gc.collect()
        self.peak = self.read()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())

    @property
    def mb(self) -> float:
        return self.peak / 2**20


class _MallInfo2(ctypes.Structure):  # glibc's `struct mallinfo2`: ten size_t counters, in this order
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@functools.cache
def _mallinfo2():
    """glibc's `mallinfo2` (2.33 and later), or None on another C library."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    function.restype = _MallInfo2
    return function


def allocated_bytes() -> int | None:
    """Bytes the C allocator has handed out and not had back (every CPU tensor's storage among them): what the
    process holds, whatever freed memory the allocator keeps resident. None where glibc's `mallinfo2` is missing."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return info.uordblks + info.hblkhd


class PeakAllocated(PeakRSS):
    """Highest `allocated_bytes()` while the block runs, sampled every 20 ms.

    Unlike resident memory it does not depend on what ran before: pages an earlier run freed but the allocator
    kept (or fragmented) count in RSS and not here, so two runs of the same work read the same, in any order.
    """

    def read(self) -> int:
        return allocated_bytes() or 0


def cpu_info() -> dict:
    """The CPU as /proc/cpuinfo names it (first core), with the flags that decide bf16 speed."""
    info = {"cpu_family": None, "model": None, "model_name": None, "bf16_flags": []}
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return info
    for line in path.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "cpu family" and info["cpu_family"] is None:
            info["cpu_family"] = value
        elif key == "model" and info["model"] is None:
            info["model"] = value
        elif key == "model name" and info["model_name"] is None:
            info["model_name"] = value
        elif key == "flags" and not info["bf16_flags"]:
            info["bf16_flags"] = sorted(f for f in value.split() if f in ("avx512_bf16", "amx_bf16", "amx_tile"))
    return info


def matmul_gflops(dtype: torch.dtype, size: int = MATMUL_SIZE, repeats: int = 12) -> float:
    """GFLOP/s of a `size`² by `size`² matrix product in `dtype`: the best of `repeats` timed products.

    The best rather than the median: on a shared machine slow calls are other people's work, and the
    point of the figure is what this CPU can do when it is ours. (`machine_figures` gives the median too:
    on a virtual CPU whose core is shared with another tenant the two can differ twofold.)
    """
    return _gflops(size, min(matmul_seconds(dtype, size, repeats)))


def _gflops(size: int, seconds: float) -> float:
    return 2 * size**3 / seconds / 1e9


def matmul_seconds(dtype: torch.dtype, size: int = MATMUL_SIZE, repeats: int = 12) -> list[float]:
    """Seconds of each of `repeats` timed `size`² by `size`² products in `dtype`, after two untimed ones."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    for _ in range(2):  # warm-up: thread pool, packing buffers
        torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return seconds


def machine_figures() -> dict:
    """The CPU, its thread count and its measured 2048² matmul GFLOP/s in fp32 and bf16: the best (the peak) and
    the median (`matmul_gflops_typical`) of 24 products."""
    figures = {"matmul_gflops": {}, "matmul_gflops_typical": {}}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        seconds = matmul_seconds(dtype, repeats=24)
        figures["matmul_gflops"][name] = round(_gflops(MATMUL_SIZE, min(seconds)), 1)
        figures["matmul_gflops_typical"][name] = round(_gflops(MATMUL_SIZE, statistics.median(seconds)), 1)
    return {**cpu_info(), "threads": torch.get_num_threads(), "matmul_size": MATMUL_SIZE, **figures}


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU attention (scores and weighted sum), which torch's counter does not list."""
    batch, heads, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (dim + value_dim)


def _sdpa_cpu_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # the gradients of scores and of the weighted sum: two products each, twice the forward
    return 2 * _sdpa_cpu_flops(query_shape, key_shape, value_shape)


def flop_counter():
    """A `FlopCounterMode` that also counts the CPU attention kernels (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        # torch's counter hands these the tensors' shapes
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


class FlopTally:
    """The FLOPs of every batch that `inference.run_batches` runs, in any thread, while the tally is open
    (`with FlopTally() as tally:`): exact counts from torch's counter, which costs a few percent of the time.
    One tally at a time per process (the bench's whole-study run)."""

    active: FlopTally | None = None

    def __init__(self):
        self.total = 0
        self._taken = 0
        self._lock = threading.Lock()

    def __enter__(self):
        if FlopTally.active is not None:
            raise RuntimeError("a FLOP tally is already open in this process")
        FlopTally.active = self
        return self

    def __exit__(self, *exc):
        FlopTally.active = None

    def add(self, flop: int) -> None:
        with self._lock:
            self.total += flop

    def take(self) -> int:
        """The FLOPs counted since the last `take`."""
        with self._lock:
            new, self._taken = self.total - self._taken, self.total
            return new


def counted(step: Callable):
    """`step` itself, or, while a `FlopTally` is open, `step` counted into it."""
    tally = FlopTally.active
    if tally is None:
        return step

    def step_counted(*args, **kwargs):
        with flop_counter() as counter:
            result = step(*args, **kwargs)
        tally.add(counter.get_total_flops())
        return result

    return step_counted


def latency_ms(predict: Callable[[], object], warmup: int = 5, repeats: int = 30) -> tuple[float, float]:
    """p50 and p95 in milliseconds of `predict()`, after `warmup` calls that are not timed.

    Every pipeline of the bench goes through this with the same counts, so all are warmed the same way.
    """
    for _ in range(warmup):
        predict()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), float(np.percentile(times, 95))


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MB: exact, nothing sampled.

    VmHWM belongs to the process's own address space; `ru_maxrss` would also keep the parent's size from
    before the spawned child's `exec`, so it is only the fallback where /proc is missing.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _call_measured(function: Callable, args: tuple, threads: int):
    torch.set_num_threads(threads)
    result = function(*args)
    return result, peak_rss_mb()


def run_isolated(function: Callable, *args) -> tuple[object, float]:
    """Run `function(*args)` in a fresh process (spawned) and return its result and that process's peak RSS.

    Each pipeline in its own process, so one's memory never counts toward another's, and none inherits
    warm caches or allocator state from the one before. `function` and `args` must pickle.

    Returns:
        (the function's result, peak resident memory of the process in MB)
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_call_measured, (function, args, torch.get_num_threads()))
