"""`ferry serve --workers 0`: one worker per CPU the process may use."""

from __future__ import annotations

import os
from pathlib import Path

from server.workers.count import (
    MAX_AUTO_WORKERS,
    auto_workers,
    available_cpus,
    cgroup_cpu_limit,
    model_cpu_threads,
    worker_cpu_threads,
)


def test_cgroup_quota_in_whole_cpus(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("50000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_auto_is_bounded_by_affinity_and_the_cap() -> None:
    assert 1 <= auto_workers() <= min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS)


def test_each_worker_gets_its_share_of_the_cpus() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert worker_cpu_threads(1) == 0  # one process: the runtime's default, every core
    assert worker_cpu_threads(2) == max(1, available_cpus() // 2)
    assert worker_cpu_threads(cpus * 4) == 1  # never none


def test_under_shared_batching_every_model_runs_in_its_owner_with_every_cpu() -> None:
    assert model_cpu_threads(2, False) == worker_cpu_threads(2)
    assert model_cpu_threads(1, True) == 0
    assert model_cpu_threads(2, True) == 0  # the runtime's default: every core, owner only
