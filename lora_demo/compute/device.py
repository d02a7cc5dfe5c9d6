"""The device policy: where models and batches go, and whether bf16 pays there.

CUDA when it is there (under `torchrun`, each rank's own GPU), else the CPU; `LORA_DEMO_DEVICE=cpu|cuda` overrides.
bf16 is the default only where it is native: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX;
`LORA_DEMO_BF16=0` turns it off everywhere (fp32, as a CPU without fast bf16 runs: what the bench compares).
The CLI, the bench, the app and every job ask here, so they agree.
"""

from __future__ import annotations

import functools
import os

import torch

from ..config import UserError

DEVICES = ("cpu", "cuda")


def device() -> torch.device:
    """The device models and batches go to.

    Raises:
        UserError: `LORA_DEMO_DEVICE` names something else, or `cuda` where no GPU is visible.
    """
    wanted = os.environ.get("LORA_DEMO_DEVICE", "").strip().lower()
    if wanted and wanted not in DEVICES:
        raise UserError(f"LORA_DEMO_DEVICE must be one of {', '.join(DEVICES)}, got {wanted!r}")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError("LORA_DEMO_DEVICE=cuda, but no CUDA GPU is visible to this process")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def cpu_budget() -> int:
    """The CPUs this process may use: its affinity, cut to the container's CPU quota (cgroup v2 or v1), which on a
    Space can be 2 while the host shows many more."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cpus, quota)) if quota else cpus


def _cgroup_quota() -> int | None:
    for path, split in (("/sys/fs/cgroup/cpu.max", True), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", False)):
        try:
            text = open(path).read().split()
            if split:
                limit, period = text[0], text[1]
            else:
                limit, period = text[0], open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read().split()[0]
        except (OSError, IndexError):
            continue
        if limit in ("max", "-1"):
            return None
        return max(1, int(int(limit) / int(period) + 0.5))
    return None


@functools.cache
def fit_threads() -> int:
    """Once per process, before the first model: torch's intra-op threads cut to `cpu_budget()` where torch took
    more (it counts the host's cores); every handler shares them. Returns the count in use."""
    budget = cpu_budget()
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)
    return torch.get_num_threads()


def on_gpu() -> bool:
    return device().type == "cuda"


@functools.cache
def _cpu_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def bf16_native() -> bool:
    """Whether the policy's device runs bfloat16 matrix products natively (elsewhere they are emulated, slower);
    False under `LORA_DEMO_BF16=0`.

    Raises:
        UserError: `LORA_DEMO_BF16` is set to something other than 0 or 1.
    """
    wanted = os.environ.get("LORA_DEMO_BF16", "").strip()
    if wanted not in ("", "0", "1"):
        raise UserError(f"LORA_DEMO_BF16 must be 0 (fp32) or 1 (bf16 where native), got {wanted!r}")
    if wanted == "0":
        return False
    if on_gpu():
        return torch.cuda.is_bf16_supported()
    return _cpu_bf16()


def runtime(bf16: bool) -> dict:
    """Where a job ran, as the report keeps it: the device kind, its name and the dtype of its products."""
    where = device()
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else _cpu_name()
    return {"device": where.type, "device_name": name, "dtype": "bfloat16" if bf16 else "float32"}


@functools.cache
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "cpu"
