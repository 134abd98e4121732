"""`ferry serve --workers 2` keeps one server's client shared memory regions and run-time log and
trace settings: a change made over one connection is in force on every worker before it is
answered, reads answer the same on any worker, and a worker killed and restarted has them too.

Which worker served a request is read from its `--log-requests` line; fresh connections spread
over both workers, and a gRPC client held on each worker's connection asks each one in turn."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.otlp_collector import running_collector
from tests.support.server_process import ServerProcess, running_server
from tests.support.shared_memory import client_region, shm
from tests.support.workers import (
    client_on_each_worker,
    fresh,
    metric_value,
    mlp_request,
    restart_a_worker,
    served_by,
)

ATTEMPTS = 30  # fresh connections per "every worker" check: all on one worker has p = 2**-29
WORKERS = ("--workers", "2", "--no-shared-batching", "--log-requests")
# one 1-row request waits here until 7 more rows arrive (or 60 s pass): "in flight" on demand
HELD_CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 60000000 }
"""


def same_everywhere(server: ServerProcess, path: str) -> Any:
    """The one answer ATTEMPTS fresh-connection GETs of `path` all give (decoded)."""
    answers = {fresh(f"http://{server.http_url}{path}") for _ in range(ATTEMPTS)}
    assert len(answers) == 1, answers
    ((status, body),) = answers
    assert status == 200, body
    return json.loads(body)


def infer_fresh(
    server: ServerProcess, prefix: str, body: dict[str, Any], count: int = ATTEMPTS
) -> list[str]:
    """`count` requests, each on a fresh connection and all answered 200; their ids."""
    request_ids = [f"{prefix}-{i}" for i in range(count)]
    for request_id in request_ids:
        status, answer = fresh(
            f"http://{server.http_url}/v2/models/mlp/infer", body | {"id": request_id}
        )
        assert status == 200, answer
    return request_ids


def workers_of(server: ServerProcess, request_ids: list[str], log_format: str = "text") -> set[int]:
    lines = served_by(server, request_ids)
    assert {fmt for _, fmt in lines.values()} == {log_format}
    return {slot for slot, _ in lines.values()}


# --- client shared memory --------------------------------------------------------------------

SHM_BODY = {
    "inputs": [
        {
            "name": "input",
            "shape": [1, 16],
            "datatype": "FP32",
            "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 64},
        }
    ],
    "outputs": [
        {
            "name": "output",
            "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 16},
        }
    ],
}


def grpc_shm_infer(client: grpcclient.InferenceServerClient, output_region: str = "") -> None:
    infer_input = grpcclient.InferInput("input", [1, 16], "FP32")
    infer_input.set_shared_memory("in", 64)
    output = grpcclient.InferRequestedOutput("output")
    if output_region:
        output.set_shared_memory(output_region, 16)
    client.infer("mlp", [infer_input], outputs=[output])


def test_a_region_registered_on_one_connection_serves_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    expected = run_reference(tmp_path / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    with (
        running_server(tmp_path, *WORKERS, "--allow-client-shm") as server,
        client_region(64) as inputs,
        client_region(16) as outputs,
    ):
        shm.set_shared_memory_region(inputs.handle, [x])
        http = httpclient.InferenceServerClient(server.http_url)  # one connection
        http.register_system_shared_memory("in", inputs.key, 64)
        http.register_system_shared_memory("out", outputs.key, 16)
        assert same_everywhere(server, "/v2/systemsharedmemory/status") == [
            {"name": "in", "key": inputs.key, "offset": 0, "byte_size": 64},
            {"name": "out", "key": outputs.key, "offset": 0, "byte_size": 16},
        ]
        request_ids = []
        for i in range(ATTEMPTS):  # each on a fresh connection, its output in the region
            shm.set_shared_memory_region(outputs.handle, [np.full((1, 4), np.nan, np.float32)])
            request_ids += infer_fresh(server, f"shm-{i}", SHM_BODY, count=1)
            written = shm.get_contents_as_numpy(outputs.handle, np.float32, [1, 4])
            np.testing.assert_allclose(written, expected, rtol=1e-5)
        assert workers_of(server, request_ids) == {0, 1}

        # unregistered over one connection: every worker refuses it at once
        workers = client_on_each_worker(server)
        http.unregister_system_shared_memory("in")
        for client in workers.values():
            with pytest.raises(InferenceServerException) as refused:
                grpc_shm_infer(client)
            assert refused.value.message() == "Unable to find shared memory region: 'in'"
            assert len(client.get_system_shared_memory_status().regions) == 1  # "out"
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        assert {fresh(url, SHM_BODY) for _ in range(ATTEMPTS)} == {
            (404, b'{"error":"Unable to find shared memory region: \'in\'"}')
        }

        # a restarted worker replays what is live: "in" again, not the unregistered "out"
        http.register_system_shared_memory("in", inputs.key, 64)
        http.unregister_system_shared_memory("out")
        restart_a_worker(server)
        assert same_everywhere(server, "/v2/systemsharedmemory/region/in/status") == [
            {"name": "in", "key": inputs.key, "offset": 0, "byte_size": 64}
        ]
        workers = client_on_each_worker(server)
        for client in workers.values():
            assert list(client.get_system_shared_memory_status().regions) == ["in"]
            grpc_shm_infer(client)
            with pytest.raises(InferenceServerException, match="region: 'out'"):
                grpc_shm_infer(client, "out")
        http.unregister_system_shared_memory()
        assert same_everywhere(server, "/v2/systemsharedmemory/status") == []


def test_a_registration_one_worker_refuses_is_undone_on_the_other(tmp_path: Path) -> None:
    """Worker 0 still holds a region unregistered mid-request (as a single server does), so it
    refuses registering the name again: worker 1, which took it, drops it again, and the client
    gets the single server's answer."""
    write_model(tmp_path, "mlp", mlp_model())
    write_model(tmp_path, "held", mlp_model(seed=7), HELD_CONFIG)
    x = np.random.default_rng(4).standard_normal((8, 16)).astype(np.float32)
    expected = run_reference(tmp_path / "held" / "1" / "model.onnx", {"input": x})["output"]
    with (
        running_server(tmp_path, *WORKERS, "--allow-client-shm") as server,
        client_region(64) as inputs,
    ):
        shm.set_shared_memory_region(inputs.handle, [x[:1]])
        http = httpclient.InferenceServerClient(server.http_url)
        http.register_system_shared_memory("in", inputs.key, 64)
        workers = client_on_each_worker(server)
        first = grpcclient.InferInput("input", [1, 16], "FP32")
        first.set_shared_memory("in", 64)
        results: list[tuple[Any, Any]] = []
        workers[0].async_infer(
            "held", [first], lambda result, error: results.append((result, error))
        )
        deadline = time.monotonic() + 30
        while not metric_value(
            server.metrics_url, 'nv_inference_pending_request_count{model="held",version="1"}'
        ):
            assert time.monotonic() < deadline, "the held request never queued"
            time.sleep(0.01)
        http.unregister_system_shared_memory("in")
        # as a single server: status lists it while its request runs, and it cannot be taken
        assert [r["name"] for r in same_everywhere(server, "/v2/systemsharedmemory/status")] == [
            "in"
        ]
        with pytest.raises(InferenceServerException) as refused:
            http.register_system_shared_memory("in", inputs.key, 64)
        assert refused.value.message() == "shared memory region 'in' already in manager"
        with pytest.raises(InferenceServerException, match="Unable to find shared memory"):
            grpc_shm_infer(workers[1])  # undone on worker 1

        rest = grpcclient.InferInput("input", [7, 16], "FP32")  # completes worker 0's batch
        rest.set_data_from_numpy(x[1:])
        np.testing.assert_allclose(
            workers[0].infer("held", [rest]).as_numpy("output"), expected[1:], rtol=1e-5
        )
        while not results:
            assert time.monotonic() < deadline + 30, "the held request never finished"
            time.sleep(0.01)
        ((result, error),) = results
        assert error is None
        np.testing.assert_allclose(result.as_numpy("output"), expected[:1], rtol=1e-5)
        assert same_everywhere(server, "/v2/systemsharedmemory/status") == []
        http.register_system_shared_memory("in", inputs.key, 64)  # now on both
        for client in workers.values():
            grpc_shm_infer(client)
        http.unregister_system_shared_memory()


# --- log settings ----------------------------------------------------------------------------


def test_log_settings_changed_on_one_connection_apply_on_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, *WORKERS) as server:
        status, body = fresh(f"http://{server.http_url}/v2/logging", {"log_format": "json"})
        assert status == 200, body
        assert same_everywhere(server, "/v2/logging") == json.loads(body)
        for client in client_on_each_worker(server).values():
            settings = client.get_log_settings(as_json=True)["settings"]
            assert settings["log_format"]["string_param"] == "json"
        ids = infer_fresh(server, "json", mlp_request(1))
        assert workers_of(server, ids, "json") == {0, 1}  # both write JSON lines

        restart_a_worker(server)
        ready = [line for line in server.log().splitlines() if "models ready" in line]
        assert "worker" in json.loads(ready[-1])  # the new worker logged JSON from the start
        ids = infer_fresh(server, "json-after", mlp_request(1))
        assert workers_of(server, ids, "json") == {0, 1}

        workers = client_on_each_worker(server)  # a gRPC change, on one worker's connection
        workers[0].update_log_settings({"log_format": "text"})
        settings = workers[1].get_log_settings(as_json=True)["settings"]
        assert settings["log_format"]["string_param"] == "text"
        ids = infer_fresh(server, "text", mlp_request(1))
        assert workers_of(server, ids, "text") == {0, 1}
        assert same_everywhere(server, "/v2/logging")["log_format"] == "text"


# --- trace settings --------------------------------------------------------------------------


def test_trace_settings_changed_on_one_connection_apply_on_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    with running_collector() as collector:
        flags = ["mode=opentelemetry", f"opentelemetry,url={collector.url}"]
        flags.append("opentelemetry,bsp_schedule_delay=50")  # level OFF: nothing traced
        trace_config = [arg for flag in flags for arg in ("--trace-config", flag)]
        with running_server(tmp_path, *WORKERS, *trace_config) as server:

            def traced(request_ids: list[str]) -> None:
                collector.wait_for(
                    lambda spans: (
                        set(request_ids) <= {s.attributes.get("triton.request_id") for s in spans}
                    )
                )

            path = "/v2/models/mlp/trace/setting"
            change = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
            status, body = fresh(f"http://{server.http_url}{path}", change)
            assert status == 200, body
            setting = json.loads(body)
            assert setting["trace_level"] == ["TIMESTAMPS"]
            assert same_everywhere(server, path) == setting
            assert same_everywhere(server, "/v2/trace/setting")["trace_level"] == ["OFF"]
            for client in client_on_each_worker(server).values():
                answer = client.get_trace_settings("mlp", as_json=True)["settings"]
                assert answer["trace_level"]["value"] == ["TIMESTAMPS"]
            ids = infer_fresh(server, "traced", mlp_request(1))
            assert workers_of(server, ids) == {0, 1}
            traced(ids)  # every request traced, whichever worker served it

            restart_a_worker(server)
            assert same_everywhere(server, path) == setting
            ids = infer_fresh(server, "traced-after", mlp_request(1))
            assert workers_of(server, ids) == {0, 1}
            traced(ids)

            workers = client_on_each_worker(server)  # a gRPC change on one worker
            workers[0].update_trace_settings(settings={"trace_rate": "5"})
            assert workers[1].get_trace_settings(as_json=True)["settings"]["trace_rate"] == {
                "value": ["5"]
            }
            assert same_everywhere(server, "/v2/trace/setting")["trace_rate"] == "5"
            assert same_everywhere(server, path)["trace_rate"] == "1"  # mlp set its own
