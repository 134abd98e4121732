"""Helpers for tests of `ferry serve --workers N`: the worker processes, and requests that each
open a fresh connection (SO_REUSEPORT hands each new connection to one worker, so many fresh
connections reach every worker)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


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
