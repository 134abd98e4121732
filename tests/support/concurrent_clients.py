"""Many concurrent tritonclient requests from a thread pool (one HTTP and one gRPC client per
thread: tritonclient clients are not thread-safe), and what the server counted for them."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.server_process import ServerProcess

Job = TypeVar("Job")


class Clients:
    """One thread's clients of one server."""

    def __init__(self, server: ServerProcess) -> None:
        self.http = httpclient.InferenceServerClient(server.http_url)
        self.grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def close(self) -> None:
        self.http.close()
        self.grpc.close()


def run_concurrently(
    server: ServerProcess,
    jobs: Sequence[Job],
    send: Callable[[Clients, int, Job], Any],
    workers: int = 64,
) -> list[Any]:
    """`send(clients, index, job)` for every job on `workers` threads; results in job order."""
    local = threading.local()
    opened: list[Clients] = []
    lock = threading.Lock()

    def run(item: tuple[int, Job]) -> Any:
        if not hasattr(local, "clients"):
            local.clients = Clients(server)
            with lock:
                opened.append(local.clients)
        return send(local.clients, item[0], item[1])

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, enumerate(jobs)))
    finally:
        for clients in opened:
            clients.close()


def model_statistics(server: ServerProcess, model: str) -> dict[str, Any]:
    """The model's Triton statistics (`GET /v2/models/NAME/stats`, first version listed)."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats") as response:
        stats: dict[str, Any] = json.loads(response.read())["model_stats"][0]
    return stats


def metric_total(server: ServerProcess, metric: str, model: str) -> float:
    """The sum of a Prometheus metric's samples for one model (every version and label)."""
    with urllib.request.urlopen(server.metrics_url) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{") and f'model="{model}"' in line
    )
