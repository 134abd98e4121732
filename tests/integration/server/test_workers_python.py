"""`ferry serve --workers 2` (shared batching) with a Python model: its instance process starts
once, in its owner, and the other worker attaches to it (server/runtimes/python/runtime.py), so
the requests both workers take run in that one process, in executions that count once in the
server's statistics; when the process is killed, the requests in flight on every worker fail
clearly and both workers serve again once the owner has restarted it. Requests open fresh
connections, so they reach both workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.python_models import killed_under_load, write_batch_probe
from tests.support.server_process import ServerProcess, running_server
from tests.support.workers import fresh, metric_value, served_by, wait_for_log

pytestmark = pytest.mark.slow

ATTACHED = "Python model instance 'probe_0' attached to its process in the owner worker"
KILLED_MESSAGES = (
    "Python model instance 'probe_0' (pid {pid}) was killed by SIGKILL; its in-flight "
    "requests failed and it is being restarted",  # in the owner
    "Python model instance 'probe_0' (pid {pid}) went away in the model's owner worker; its "
    "in-flight requests failed and it is being restarted",  # in the other worker
)


def infer(server: ServerProcess, value: float) -> tuple[int, dict[str, Any], str]:
    """One request on a fresh connection: (status, outputs by name or the error, its id)."""
    request_id = f"p-{uuid.uuid4().hex[:10]}"
    body = {
        "id": request_id,
        "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}],
    }
    status, payload = fresh(f"http://{server.http_url}/v2/models/probe/infer", body)
    answer = json.loads(payload) if payload else {}
    if status != 200:
        return status, answer, request_id
    return status, {o["name"]: o["data"] for o in answer["outputs"]}, request_id


def model_stats(server: ServerProcess) -> dict[str, Any]:
    status, payload = fresh(f"http://{server.http_url}/v2/models/probe/stats")
    assert status == 200, payload
    stats: dict[str, Any] = json.loads(payload)["model_stats"][0]
    return stats


@contextlib.contextmanager
def serving_probe(repository: Path, delay_s: float) -> Iterator[ServerProcess]:
    """Two workers serving the batch probe (plain dynamic batching: its process is shared),
    once the worker that does not own it has attached to its process."""
    write_batch_probe(repository, "probe", max_batch_size=8, delay_s=delay_s, queue_delay_us=0)
    with running_server(repository, "--workers", "2", "--log-requests") as server:
        both_serving(server)
        yield server


def both_serving(server: ServerProcess, started: int = 2, attached: int = 1) -> None:
    """Wait until `started` workers have started serving (the first two, or a replacement too)
    and the worker that does not own the probe has attached `attached` times."""
    wait_for_log(server, "models ready", started)
    wait_for_log(server, ATTACHED, attached)


def test_one_process_runs_every_workers_requests_and_each_execution_counts_once(
    tmp_path: Path,
) -> None:
    with serving_probe(tmp_path, delay_s=0.02) as server:
        values = [float(i) for i in range(96)]
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda v: infer(server, v), values))
        assert [status for status, _, _ in answers] == [200] * len(values)
        for value, (_, outputs, _) in zip(values, answers, strict=True):
            assert outputs["Y"] == [value] * 4
        assert len({outputs["PID"][0] for _, outputs, _ in answers}) == 1  # one process
        workers = Counter(
            worker for worker, _ in served_by(server, [a[2] for a in answers]).values()
        )
        assert set(workers) == {0, 1}, workers  # both workers took requests
        # each execution of B requests answered B of ours with BATCH = B: the statistics must
        # hold exactly those executions, counted once whichever workers' batches they ran
        sizes = Counter(int(outputs["BATCH"][0]) for _, outputs, _ in answers)
        assert max(sizes) <= 8
        executions = {size: count // size for size, count in sizes.items()}
        assert all(count % size == 0 for size, count in sizes.items()), sizes
        stats = model_stats(server)
        assert stats["inference_count"] == len(values)
        assert stats["execution_count"] == sum(executions.values())
        batch_stats = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
        assert batch_stats == executions
        assert stats["inference_stats"]["success"]["count"] == len(values)


def test_a_killed_shared_process_fails_in_flight_requests_on_every_worker_then_serves_again(
    tmp_path: Path,
) -> None:
    with serving_probe(tmp_path, delay_s=0.3) as server:
        status, outputs, _ = infer(server, 1.0)
        assert status == 200
        first_pid = int(outputs["PID"][0])
        errors: list[str] = []

        def load(stop: threading.Event) -> None:
            value = 0.0
            while not stop.is_set():
                value += 1
                status, answer, _ = infer(server, value)
                if status != 200:
                    errors.append(f"{status} {answer.get('error')}")

        with killed_under_load(first_pid, load, threads=8, after_s=0.6):
            deadline = time.monotonic() + 60
            while True:
                status, outputs, _ = infer(server, 2.0)
                if status == 200 and int(outputs["PID"][0]) != first_pid:
                    break
                assert time.monotonic() < deadline, (errors, server.log()[-3000:])
                assert fresh(f"http://{server.http_url}/v2/health/ready")[0] == 200
                time.sleep(0.05)
        expected = {f"500 {message.format(pid=first_pid)}" for message in KILLED_MESSAGES}
        # (a batch sent in the moment between the kill and its connection's end)
        expected.add("503 Python model instance 'probe_0' is restarting after a crash")
        assert errors, "the requests in flight at the kill must fail"
        assert set(errors) <= expected, errors
        # both workers serve again, from the new process
        answers = [infer(server, float(i)) for i in range(30)]
        assert all(status == 200 for status, _, _ in answers), answers
        assert {int(outputs["PID"][0]) for _, outputs, _ in answers} != {first_pid}
        assert len({int(outputs["PID"][0]) for _, outputs, _ in answers}) == 1
        workers = {worker for worker, _ in served_by(server, [a[2] for a in answers]).values()}
        assert workers == {0, 1}


def test_sigterm_drains_every_workers_requests_through_the_shared_process(
    tmp_path: Path,
) -> None:
    """Sixteen slow requests accepted over both workers (each its own execution) all answer
    after SIGTERM: the owner finalizes the process only after the other worker has drained."""
    write_batch_probe(tmp_path, "probe", max_batch_size=1, delay_s=0.3, queue_delay_us=0)
    clients = 16
    with running_server(tmp_path, "--workers", "2", "--log-requests") as server:
        both_serving(server)
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(infer, server, float(i)) for i in range(clients)]
            started = time.monotonic()
            while True:  # until all are accepted: queued, in the process (2 a worker), or done
                pending = metric_value(
                    server.metrics_url,
                    'nv_inference_pending_request_count{model="probe",version="1"}',
                )
                done = model_stats(server)["execution_count"]
                if pending + done + 4 >= clients and time.monotonic() - started > 1.0:
                    break
                assert time.monotonic() - started < 30
                time.sleep(0.01)
            server.process.send_signal(signal.SIGTERM)
            answers = [future.result(timeout=120) for future in futures]
        assert [status for status, _, _ in answers] == [200] * clients, answers
        for value, (_, outputs, _) in enumerate(answers):
            assert outputs["Y"] == [float(value)] * 4
        workers = {worker for worker, _ in served_by(server, [a[2] for a in answers]).values()}
        assert workers == {0, 1}
        assert server.process.wait(timeout=60) == 0


def answers_from_both_workers(server: ServerProcess, count: int = 24) -> set[int]:
    """`count` requests on fresh connections: all answered, by both workers; the pids of the
    processes that ran them."""
    answers = [infer(server, float(i)) for i in range(count)]
    assert [status for status, _, _ in answers] == [200] * count, answers
    workers = {worker for worker, _ in served_by(server, [a[2] for a in answers]).values()}
    assert workers == {0, 1}
    return {int(outputs["PID"][0]) for _, outputs, _ in answers}


def test_unload_and_load_reach_the_shared_process_from_every_worker(tmp_path: Path) -> None:
    write_batch_probe(tmp_path, "probe", max_batch_size=8, queue_delay_us=0)
    flags = ("--model-control-mode", "explicit", "--load-model", "probe", "--log-requests")
    with running_server(tmp_path, "--workers", "2", *flags) as server:
        both_serving(server)
        (first,) = answers_from_both_workers(server)
        base = f"http://{server.http_url}/v2/repository/models/probe"
        assert fresh(f"{base}/unload", {})[0] == 200
        statuses = Counter(infer(server, 1.0)[0] for _ in range(20))
        assert statuses == {404: 20}, statuses  # on both workers: not a crash, no 500
        assert "went away" not in server.log()  # the process said it was finalizing
        assert fresh(f"{base}/load", {})[0] == 200
        both_serving(server, attached=2)
        (second,) = answers_from_both_workers(server)
        assert second != first  # a new process, initialized once, shared again


def test_the_other_worker_attaches_again_when_the_owner_worker_restarts(tmp_path: Path) -> None:
    write_batch_probe(tmp_path, "probe", max_batch_size=8, queue_delay_us=0)
    with running_server(tmp_path, "--workers", "2", "--log-requests") as server:
        both_serving(server)
        (first,) = answers_from_both_workers(server)
        owner = int(Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.kill(owner, signal.SIGKILL)  # the worker that runs the process: it goes too
        deadline = time.monotonic() + 90
        while True:  # the replacement loads the model and starts a new process
            status, outputs, _ = infer(server, 3.0)
            if status == 200 and int(outputs["PID"][0]) != first:
                break
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
        both_serving(server, started=3, attached=2)
        (second,) = answers_from_both_workers(server)
        assert second != first
