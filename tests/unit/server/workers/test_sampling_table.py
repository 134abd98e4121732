"""The server's sampling counters under --workers N (server/workers/sampling_table.py): workers
that share the table sample as one process does, a setting change restarts only the counters it
replaced, and the file lock keeps concurrent processes' counts exact."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import pytest

from server.request_log import RequestLog
from server.sampling import local_counter
from server.trace_settings import TraceSettings, parse_trace_config
from server.workers.sampling_table import SamplingTable

CONFIG = ["mode=opentelemetry,rate=3,count=5,level=TIMESTAMPS"]


def workers(folder: Path, n: int, entries: int = 1024) -> list[SamplingTable]:
    """`n` workers' maps of the table (separate opens: separate locks, as in separate processes)."""
    return [SamplingTable(folder, entries) for _ in range(n)]


def sampled(settings: list[TraceSettings], model: str, requests: int) -> list[bool]:
    """`requests` requests taken in turn by each worker's settings."""
    return [
        settings[index % len(settings)].sample(model, False) is not None
        for index in range(requests)
    ]


@pytest.mark.parametrize("count", [5, 1, 0, -1])
def test_workers_trace_every_rate_th_request_of_the_server_and_count_in_all(
    tmp_path: Path, count: int
) -> None:
    config = [f"mode=opentelemetry,rate=3,count={count},level=TIMESTAMPS"]
    one_process = TraceSettings(parse_trace_config(config))
    tables = workers(tmp_path, 3)
    shared = [TraceSettings(parse_trace_config(config), table.counter) for table in tables]
    # 3 workers taking requests in turn: per-worker counters would trace none (each sees every
    # 3rd request as its 1st); the server's trace the 3rd, 6th... as one process
    expected = sampled([one_process], "m", 40)
    assert sampled(shared, "m", 40) == expected
    assert sum(expected) == (13 if count < 0 else min(count, 13))


def test_a_change_restarts_the_counters_it_replaced_once_every_worker_has_it(
    tmp_path: Path,
) -> None:
    supervisor, *tables = workers(tmp_path, 3)
    settings = [TraceSettings(parse_trace_config(CONFIG), table.counter) for table in tables]
    assert sampled(settings, "m", 4) == [False, False, True, False]  # 4 seen by the server
    assert sampled(settings, "cnn", 2) == [False, True]  # the global one counts every model's
    for worker in settings:  # the supervisor asks each worker, then restarts the counters
        worker.update("mlp", {"trace_rate": "2"})
    supervisor.restart_traces("mlp")
    assert sampled(settings, "mlp", 4) == [False, True, False, True]  # mlp's own, from 0
    assert sampled(settings, "m", 3) == [False, False, True]  # the global one went on: 9th
    for worker in settings:
        worker.update("", {"trace_rate": "2"})  # replaces every sampler, mlp's too
    supervisor.restart_traces("")
    assert sampled(settings, "m", 2) == [False, True]
    assert sampled(settings, "mlp", 2) == [False, True]


def test_the_request_log_samples_the_servers_successes_and_a_trace_change_leaves_it(
    tmp_path: Path,
) -> None:
    supervisor, *tables = workers(tmp_path, 3)
    logs = [RequestLog(lambda *_: "200", True, 0.5, table.counter) for table in tables]
    decisions = []
    for index in range(12):
        if index == 5:
            supervisor.restart_traces("")
        decisions.append(logs[index % 2]._sampled())
    # the server logs its every second success (here all worker 1's); counting each its own,
    # the workers would log [False, False, True, True] * 3
    assert decisions == [False, True] * 6
    assert [RequestLog(lambda *_: "200", True, 0.5, local_counter)._sampled()] == [False]


def test_a_full_table_leaves_a_new_key_to_its_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = workers(tmp_path, 2, entries=1)
    one = [TraceSettings(parse_trace_config(CONFIG), t.counter) for t in (first, second)]
    assert sampled(one, "m", 3) == [False, False, True]  # the global counter took the entry
    with caplog.at_level(logging.WARNING, "ferry.workers"):
        for worker in one:
            worker.update("mlp", {"trace_rate": "2"})
        assert sampled(one, "mlp", 4) == [False, False, True, True]  # each worker's own 2nd
    assert "the sampling table is full" in caplog.text
    assert sampled(one, "m", 3) == [False, False, True]


def _count(folder: Path, updates: int) -> None:
    counter = SamplingTable(folder).counter("trace:", 0, 0)
    for _ in range(updates):
        counter.update(lambda seen, other: (seen + 1, other, False))


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    """Read, add and write under the file lock: two processes adding 20,000 each end at 40,000
    (without the lock they lose some of each other's increments)."""
    SamplingTable(tmp_path)  # created before the processes, as the supervisor does
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_count, args=(tmp_path, 20_000)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    seen: list[int] = []

    def read(first: int, second: int) -> tuple[int, int, bool]:
        seen.append(first)
        return first, second, False

    SamplingTable(tmp_path).counter("trace:", 0, 0).update(read)
    assert seen == [40_000]
