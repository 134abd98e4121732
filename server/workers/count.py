"""How many workers `ferry serve --workers 0` starts: one per CPU this process may use."""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_AUTO_WORKERS = 8
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """The cgroup v2 CPU quota in whole CPUs, rounded up (a Kubernetes CPU limit); None if none."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), capped by its cgroup's CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    return max(1, cpus if limit is None else min(cpus, limit))


def auto_workers() -> int:
    """One worker per available CPU, at most MAX_AUTO_WORKERS (each an interpreter and its loop)."""
    return min(available_cpus(), MAX_AUTO_WORKERS)


def worker_cpu_threads(workers: int) -> int:
    """The intra-op threads an ONNX Runtime session of one worker gets when its config sets
    none: its share of the available CPUs (0, the runtime's default, for a single process).

    ONNX Runtime's default is one thread per core, spinning between runs. With N workers that is
    N pools on the same cores: the transformer encoder with --workers 2 on 2 cores served
    118-124 req/s with the default and 290-327 req/s with one thread per worker (wrk, HTTP
    binary, c=64, same run). A config's `intra_op_thread_count` still wins."""
    return 0 if workers <= 1 else max(1, available_cpus() // workers)


def model_cpu_threads(workers: int, shared_batching: bool) -> int:
    """`worker_cpu_threads`, except under --shared-batching: a model is then loaded in its
    owner only (an ensemble has no session), so its sessions get every CPU (ONNX Runtime's
    default, 0), as in a single process."""
    return 0 if shared_batching else worker_cpu_threads(workers)
