"""Dynamic batching seen from outside: many concurrent clients never get each other's rows,
batches really form, and the queue policy rejects and times out like Triton."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, run_reference, slow_model, write_model
from tests.support.server_process import ServerProcess, running_server

SINGLE_THREAD = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'


@pytest.fixture(scope="module")
def batching_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("batching")
    write_model(
        repo,
        "batched",
        mlp_model(seed=9),
        "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 3000 }\n",
    )
    write_model(
        repo,
        "bounded",
        slow_model(),
        "max_batch_size: 4\n"
        + SINGLE_THREAD
        + "dynamic_batching { default_queue_policy { max_queue_size: 2 } }\n",
    )
    write_model(
        repo,
        "timeouts",
        # ~10x the compute of the others: queued requests must outlive the 5 ms timeout even
        # when a loaded machine lets the burst's client threads start one by one
        slow_model(layers=1500),
        "max_batch_size: 1\n"
        + SINGLE_THREAD
        + "dynamic_batching { default_queue_policy { default_timeout_microseconds: 5000 "
        "allow_timeout_override: true } }\n",
    )
    write_model(
        repo,
        "delayed",
        slow_model(),
        "max_batch_size: 1\n"
        + SINGLE_THREAD
        + "dynamic_batching { default_queue_policy { default_timeout_microseconds: 1000 "
        "timeout_action: DELAY } }\n",
    )
    return repo


@pytest.fixture(scope="module")
def server(batching_repo: Path) -> Iterator[ServerProcess]:
    with running_server(batching_repo) as process:
        yield process


def test_concurrent_requests_get_their_own_rows(server: ServerProcess, batching_repo: Path) -> None:
    model_path = batching_repo / "batched" / "1" / "model.onnx"
    failures: list[str] = []
    lock = threading.Lock()

    def worker(worker_id: int) -> int:
        rng = np.random.default_rng(worker_id)
        use_grpc = worker_id % 2 == 0
        client = (
            grpcclient.InferenceServerClient(server.grpc_url)
            if use_grpc
            else httpclient.InferenceServerClient(server.http_url)
        )
        module = grpcclient if use_grpc else httpclient
        checked = 0
        for _ in range(15):
            rows = int(rng.integers(1, 4))
            x = rng.standard_normal((rows, 16)).astype(np.float32)
            infer_input = module.InferInput("input", [rows, 16], "FP32")
            infer_input.set_data_from_numpy(x)
            got = client.infer("batched", [infer_input]).as_numpy("output")
            expected = run_reference(model_path, {"input": x})["output"]
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                with lock:
                    failures.append(f"worker {worker_id} got rows that are not its own")
            checked += 1
        return checked

    with ThreadPoolExecutor(24) as pool:
        total = sum(pool.map(worker, range(24)))
    assert not failures, failures[:3]
    assert total == 24 * 15
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("batched")[
        "model_stats"
    ][0]
    assert stats["inference_stats"]["success"]["count"] == total
    assert stats["execution_count"] < total  # requests were merged into batches
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 3


def _burst(
    server: ServerProcess, model: str, count: int, timeout_us: int | None = None
) -> list[str]:
    """`count` concurrent single-row requests; returns 'ok' or the error message for each."""
    x = np.ones((1, 256), dtype=np.float32)

    def one(_: int) -> str:
        client = httpclient.InferenceServerClient(server.http_url)
        infer_input = httpclient.InferInput("input", [1, 256], "FP32")
        infer_input.set_data_from_numpy(x)
        try:
            client.infer(model, [infer_input], timeout=timeout_us)
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        return "ok"

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_full_queue_rejects_with_503(server: ServerProcess) -> None:
    outcomes = _burst(server, "bounded", 24)
    rejected = [o for o in outcomes if o != "ok"]
    assert rejected, "a 2-deep queue must reject part of a 24-request burst"
    assert all(o == "503 Exceeds maximum queue size" for o in rejected), rejected[:3]
    assert "ok" in outcomes


def test_queue_timeout_rejects_and_override_shortens(server: ServerProcess) -> None:
    outcomes = _burst(server, "timeouts", 12)
    timed_out = [o for o in outcomes if o != "ok"]
    assert timed_out and all(o == "503 Request timeout expired" for o in timed_out), outcomes
    assert "ok" in outcomes


def test_delay_action_serves_everything(server: ServerProcess) -> None:
    assert _burst(server, "delayed", 10) == ["ok"] * 10


def test_failures_are_counted_in_statistics(server: ServerProcess) -> None:
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("bounded")[
        "model_stats"
    ][0]
    assert stats["inference_stats"]["fail"]["count"] > 0
