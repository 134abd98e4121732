"""Helpers for tests of `ferry serve --workers N`: the worker processes, requests that each
open a fresh connection (SO_REUSEPORT hands each new connection to one worker, so many fresh
connections reach every worker), which worker served a request (its `--log-requests` line), and
a gRPC client held on each worker's connection."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support.server_process import ServerProcess


def worker_pids(supervisor_pid: int) -> list[int]:
    """The supervisor's child processes (its workers), by pid."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text()
    return sorted(int(pid) for pid in children.split())


def wait_for_workers(
    supervisor_pid: int, count: int, other_than: set[int], timeout_s: float = 90.0
) -> list[int]:
    """Wait until `count` workers run and none of them is in `other_than`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = worker_pids(supervisor_pid)
        if len(pids) == count and not set(pids) & other_than:
            return pids
        time.sleep(0.1)
    raise TimeoutError(f"workers did not become {count} new processes")


def fresh(
    url: str, body: dict[str, Any] | None = None, timeout_s: float = 60.0
) -> tuple[int, bytes]:
    """One request on a new connection: (status, body); status 0 when the connection failed."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return 0, b""


def mlp_request(rows: int, features: int = 16) -> dict[str, Any]:
    """A KServe v2 JSON body for the test MLP (`input`, FP32 [rows, features])."""
    x = np.random.default_rng(rows).standard_normal((rows, features)).astype(np.float32)
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [rows, features],
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ]
    }


def metric_value(metrics_url: str, series: str) -> float:
    """The value of one series (`name{labels}` exactly as rendered); 0 when absent."""
    with urllib.request.urlopen(metrics_url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_log(server: ServerProcess, text: str, times: int, timeout_s: float = 90.0) -> None:
    """Wait until `text` appears `times` times in the server's log."""
    deadline = time.monotonic() + timeout_s
    while server.log().count(text) < times:
        assert time.monotonic() < deadline, f"'{text}' not logged {times} times:\n{server.log()}"
        time.sleep(0.1)


def restart_a_worker(server: ServerProcess) -> None:
    """SIGKILL one worker and wait until its replacement serves (it logs 'models ready')."""
    victim = worker_pids(server.process.pid)[0]
    ready = server.log().count("models ready")
    os.kill(victim, signal.SIGKILL)
    wait_for_workers(server.process.pid, 2, {victim})
    wait_for_log(server, "models ready", ready + 1)


_TEXT_REQUEST_LINE = re.compile(r"ferry\.requests: inference.* request_id=(\S+).* worker=(\d+)$")


def worker_lines(log: str, slot: int) -> list[str]:
    """The text log lines worker `slot` wrote (their last field is `worker=<slot>`)."""
    return [line for line in log.splitlines() if line.endswith(f" worker={slot}")]


def request_lines(log: str) -> dict[str, tuple[int, str]]:
    """Request id -> (the worker that served it, "text" or "json"): the `--log-requests` lines
    of a log written as text or as JSON lines."""
    found: dict[str, tuple[int, str]] = {}
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("logger") == "ferry.requests" and entry.get("request_id"):
                found[entry["request_id"]] = (int(entry["worker"]), "json")
        else:
            match = _TEXT_REQUEST_LINE.search(line)
            if match:
                found[match.group(1)] = (int(match.group(2)), "text")
    return found


def served_by(
    server: ServerProcess, request_ids: list[str], timeout_s: float = 30.0
) -> dict[str, tuple[int, str]]:
    """The request log line of each of `request_ids` (waits until all are written)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = request_lines(server.log())
        missing = [rid for rid in request_ids if rid not in lines]
        if not missing:
            return {rid: lines[rid] for rid in request_ids}
        assert time.monotonic() < deadline, f"no request log line for {missing}:\n{server.log()}"
        time.sleep(0.05)


def client_on_each_worker(
    server: ServerProcess, workers: int = 2, tries: int = 24
) -> dict[int, grpcclient.InferenceServerClient]:
    """A gRPC client per worker, each on its own connection (which stays on that worker): of
    `tries` clients, those whose first request (to the model `mlp`, logged by
    `--log-requests`) the worker of each slot served first."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
    clients = [
        grpcclient.InferenceServerClient(server.grpc_url, channel_args=options)
        for _ in range(tries)
    ]
    request_ids = [f"probe-{uuid.uuid4().hex[:8]}-{i}" for i in range(tries)]
    for client, request_id in zip(clients, request_ids, strict=True):
        infer_input = grpcclient.InferInput("input", [1, 16], "FP32")
        infer_input.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        client.infer("mlp", [infer_input], request_id=request_id)
    lines = served_by(server, request_ids)
    chosen: dict[int, grpcclient.InferenceServerClient] = {}
    for client, request_id in zip(clients, request_ids, strict=True):
        slot = lines[request_id][0]
        if slot in chosen:
            client.close()
        else:
            chosen[slot] = client
    assert sorted(chosen) == list(range(workers)), f"{tries} connections reached {sorted(chosen)}"
    return chosen
