"""System shared memory with the unmodified tritonclient, as Triton's simple_http_shm_client.py and
simple_grpc_shm_client.py do it: regions created with tritonclient.utils.shared_memory,
registered, named by inputs and outputs; outputs read back from the region and compared with
in-process ONNX Runtime. Off by default (`--allow-client-shm`)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests.support.onnx_models import (
    bytes_model,
    mlp_model,
    run_reference,
    two_io_model,
    write_classifier,
    write_model,
)
from tests.support.server_process import ServerProcess, running_server
from tests.support.shared_memory import client_region, shm

# One 1-row request waits here until 7 more rows arrive (or 60 s pass): "in flight" on demand.
HELD_CONFIG = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 60000000 }
"""


@pytest.fixture(scope="module")
def shm_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("shm_repo")
    write_model(repo, "mlp", mlp_model())
    write_model(repo, "two_io", two_io_model(), "max_batch_size: 8\n")
    write_model(repo, "strings", bytes_model())
    write_model(repo, "held", mlp_model(seed=7), HELD_CONFIG)
    write_classifier(repo)
    return repo


@pytest.fixture(scope="module")
def shm_server(shm_repository: Path) -> Iterator[ServerProcess]:
    with running_server(shm_repository, "--allow-client-shm") as process:
        yield process


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def grpc_shm_server(
    request: pytest.FixtureRequest, shm_server: ServerProcess, shm_repository: Path
) -> Iterator[ServerProcess]:
    """The gRPC tests run on both gRPC transports (`--grpc-transport`)."""
    if request.param == "ferry":
        yield shm_server
        return
    with running_server(
        shm_repository, "--allow-client-shm", "--grpc-transport", request.param
    ) as process:
        yield process


def model_path(repo: Path, name: str) -> Path:
    return repo / name / "1" / "model.onnx"


def two_io_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((2, 3)).astype(np.float32),
        rng.integers(-5, 5, (2, 3)).astype(np.int64),
    )


def post(server: ServerProcess, path: str, body: Any) -> tuple[int, Any]:
    """A raw HTTP POST (for what tritonclient refuses to send); status and decoded JSON body."""
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body).encode())
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def pending_requests(server: ServerProcess, model: str) -> int:
    with urllib.request.urlopen(server.metrics_url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'nv_inference_pending_request_count{{model="{model}"'):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def wait_until_queued(server: ServerProcess, model: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while pending_requests(server, model) < count:
        assert time.monotonic() < deadline, f"{count} request(s) never queued for '{model}'"
        time.sleep(0.01)


# --- HTTP ------------------------------------------------------------------------------------


def test_http_inputs_and_outputs_in_shared_memory(
    shm_server: ServerProcess, shm_repository: Path
) -> None:
    client = httpclient.InferenceServerClient(shm_server.http_url)
    client.unregister_system_shared_memory()
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    a, b = two_io_inputs(seed=1)
    with client_region(a.nbytes + b.nbytes) as inputs, client_region(2 * a.nbytes) as outputs:
        try:
            shm.set_shared_memory_region(inputs.handle, [a])
            shm.set_shared_memory_region(inputs.handle, [b], offset=a.nbytes)
            client.register_system_shared_memory("input_data", inputs.key, inputs.byte_size)
            client.register_system_shared_memory("output_data", outputs.key, outputs.byte_size)
            assert sorted(client.get_system_shared_memory_status(), key=lambda r: r["name"]) == [
                {"name": "input_data", "key": inputs.key, "offset": 0, "byte_size": 72},
                {"name": "output_data", "key": outputs.key, "offset": 0, "byte_size": 48},
            ]

            infer_inputs = [
                httpclient.InferInput("a", [2, 3], "FP32"),
                httpclient.InferInput("b", [2, 3], "INT64"),
            ]
            infer_inputs[0].set_shared_memory("input_data", a.nbytes)
            infer_inputs[1].set_shared_memory("input_data", b.nbytes, offset=a.nbytes)
            requested = [
                httpclient.InferRequestedOutput("sum", binary_data=True),
                httpclient.InferRequestedOutput("prod", binary_data=True),
            ]
            requested[0].set_shared_memory("output_data", a.nbytes)
            requested[1].set_shared_memory("output_data", a.nbytes, offset=a.nbytes)
            result = client.infer("two_io", infer_inputs, outputs=requested)

            expected = run_reference(model_path(shm_repository, "two_io"), {"a": a, "b": b})
            for index, name in enumerate(("sum", "prod")):
                output = result.get_output(name)
                assert "data" not in output and output["shape"] == [2, 3]
                assert output["parameters"]["shared_memory_region"] == "output_data"
                got = shm.get_contents_as_numpy(
                    outputs.handle, np.float32, [2, 3], offset=index * a.nbytes
                )
                np.testing.assert_allclose(got, expected[name], rtol=1e-6)

            client.unregister_system_shared_memory("input_data")
            assert [r["name"] for r in client.get_system_shared_memory_status()] == ["output_data"]
            with pytest.raises(InferenceServerException) as unknown:
                client.get_system_shared_memory_status("input_data")
            assert unknown.value.status() == "404"
        finally:
            client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def test_http_mixed_and_bytes(shm_server: ServerProcess, shm_repository: Path) -> None:
    """Shared memory for some tensors only (the others in the body), and BYTES tensors."""
    client = httpclient.InferenceServerClient(shm_server.http_url)
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    expected = run_reference(model_path(shm_repository, "mlp"), {"input": x})["output"]
    text = np.array([[b"shared", b""], [b"memory \xe2\x9c\x93", b"x"]], dtype=np.object_)
    serialized = serialize_byte_tensor(text)
    text_size = len(serialized.item())
    with client_region(x.nbytes + text_size) as inputs, client_region(256) as outputs:
        try:
            shm.set_shared_memory_region(inputs.handle, [x])
            shm.set_shared_memory_region(inputs.handle, [serialized], offset=x.nbytes)
            client.register_system_shared_memory("in", inputs.key, inputs.byte_size)
            client.register_system_shared_memory("out", outputs.key, outputs.byte_size)

            in_shm = httpclient.InferInput("input", [3, 16], "FP32")
            in_shm.set_shared_memory("in", x.nbytes)
            result = client.infer("mlp", [in_shm])  # output in the body
            np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5)

            in_body = httpclient.InferInput("input", [3, 16], "FP32")
            in_body.set_data_from_numpy(x)
            out_shm = httpclient.InferRequestedOutput("output")
            out_shm.set_shared_memory("out", 48, offset=16)
            result = client.infer("mlp", [in_body], outputs=[out_shm])
            assert result.get_output("output")["parameters"] == {
                "shared_memory_region": "out",
                "shared_memory_byte_size": 48,
                "shared_memory_offset": 16,
            }
            np.testing.assert_allclose(
                shm.get_contents_as_numpy(outputs.handle, np.float32, [3, 4], offset=16),
                expected,
                rtol=1e-5,
            )

            text_input = httpclient.InferInput("text", [2, 2], "BYTES")
            text_input.set_shared_memory("in", text_size, offset=x.nbytes)
            echo = httpclient.InferRequestedOutput("echo")
            echo.set_shared_memory("out", 256)
            client.infer("strings", [text_input], outputs=[echo])
            assert (
                shm.get_contents_as_numpy(outputs.handle, np.object_, [2, 2]).tolist()
                == text.tolist()
            )
        finally:
            client.unregister_system_shared_memory()


def test_http_bad_requests_are_clear_errors(shm_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(shm_server.http_url)
    x = np.ones((1, 16), dtype=np.float32)
    with client_region(64) as region:
        try:
            shm.set_shared_memory_region(region.handle, [x])
            client.register_system_shared_memory("r", region.key, 64)
            with pytest.raises(InferenceServerException, match="already in manager") as twice:
                client.register_system_shared_memory("r", region.key, 64)
            assert twice.value.status() == "400"
            for key, size, fragment in (
                (region.key, 65, "exceeds the 64 bytes"),
                ("/ferry_test_no_such_object", 8, "Unable to open"),
                ("/../../etc/passwd", 8, "invalid shared memory key"),
            ):
                with pytest.raises(InferenceServerException, match=fragment) as bad:
                    client.register_system_shared_memory("bad", key, size)
                assert bad.value.status() == "400"

            def infer(region_name: str, output_size: int | None = None) -> None:
                infer_input = httpclient.InferInput("input", [1, 16], "FP32")
                infer_input.set_shared_memory(region_name, 64)
                requested = httpclient.InferRequestedOutput("output")
                if output_size is not None:
                    requested.set_shared_memory("r", output_size)
                client.infer("mlp", [infer_input], outputs=[requested])

            for args, fragment, status in (
                (("nope",), "Unable to find shared memory region: 'nope'", "404"),  # as Triton
                (("r", 8), r"output 'output' \(8 bytes\) should be at least 16", "400"),
                (("r", 128), "Invalid offset \\+ byte size", "400"),
            ):
                with pytest.raises(InferenceServerException, match=fragment) as error:
                    infer(*args)
                assert error.value.status() == status
            with pytest.raises(InferenceServerException, match="can't set both"):
                requested = httpclient.InferRequestedOutput("output", class_count=2)
                requested._parameters["shared_memory_region"] = "r"  # the client refuses it
                requested._parameters["shared_memory_byte_size"] = 64
                in_body = httpclient.InferInput("input", [1, 16], "FP32")
                in_body.set_data_from_numpy(x)
                client.infer("classifier", [in_body], outputs=[requested])

            binary_and_shm = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 16],
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ],
                "outputs": [
                    {
                        "name": "output",
                        "parameters": {
                            "binary_data": True,
                            "shared_memory_region": "r",
                            "shared_memory_byte_size": 64,
                        },
                    }
                ],
            }
            status, error = post(shm_server, "/v2/models/mlp/infer", binary_and_shm)
            assert status == 400
            assert "can't set both 'shared_memory_region' and 'binary_data'" in error["error"]
            for body, fragment in (
                ({"key": region.key}, "no 'byte_size' field"),
                ({"byte_size": 8}, "no 'key' field"),
                ({"key": region.key, "byte_size": -1}, "non-negative"),
            ):
                status, error = post(shm_server, "/v2/systemsharedmemory/region/b/register", body)
                assert status == 400 and fragment in error["error"]
            status, error = post(
                shm_server, "/v2/systemsharedmemory/register", {"key": region.key, "byte_size": 8}
            )
            assert status == 400 and "'region name' is necessary" in error["error"]
            assert [r["name"] for r in client.get_system_shared_memory_status()] == ["r"]
        finally:
            client.unregister_system_shared_memory()
    assert client.is_server_ready()
    healthy = httpclient.InferInput("input", [1, 16], "FP32")
    healthy.set_data_from_numpy(x)
    assert client.infer("mlp", [healthy]).as_numpy("output").shape == (1, 4)


def test_http_unregister_while_in_flight(shm_server: ServerProcess, shm_repository: Path) -> None:
    """As in Triton: unregistering regions a queued request uses keeps them (status lists them)
    until that request is done; it succeeds, and then they are gone."""
    client = httpclient.InferenceServerClient(shm_server.http_url, concurrency=2)
    x = np.random.default_rng(4).standard_normal((8, 16)).astype(np.float32)
    expected = run_reference(model_path(shm_repository, "held"), {"input": x})["output"]
    with client_region(64) as inputs, client_region(16) as outputs:
        try:
            shm.set_shared_memory_region(inputs.handle, [x[:1]])
            client.register_system_shared_memory("held_in", inputs.key, 64)
            client.register_system_shared_memory("held_out", outputs.key, 16)
            first_input = httpclient.InferInput("input", [1, 16], "FP32")
            first_input.set_shared_memory("held_in", 64)
            first_output = httpclient.InferRequestedOutput("output")
            first_output.set_shared_memory("held_out", 16)
            first = client.async_infer("held", [first_input], outputs=[first_output])
            wait_until_queued(shm_server, "held", 1)
            client.unregister_system_shared_memory()  # both regions, mid-request
            held = {r["name"] for r in client.get_system_shared_memory_status()}
            assert held == {"held_in", "held_out"}  # still there while the request runs
            with pytest.raises(InferenceServerException, match="already in manager"):
                client.register_system_shared_memory("held_out", outputs.key, 16)

            rest = httpclient.InferInput("input", [7, 16], "FP32")  # completes the batch of 8
            rest.set_data_from_numpy(x[1:])
            second = client.async_infer("held", [rest])
            np.testing.assert_allclose(
                second.get_result().as_numpy("output"), expected[1:], rtol=1e-5
            )
            first.get_result()
            written = shm.get_contents_as_numpy(outputs.handle, np.float32, [1, 4])
            np.testing.assert_allclose(written, expected[:1], rtol=1e-5)
            assert client.get_system_shared_memory_status() == []
            with pytest.raises(InferenceServerException, match="Unable to find") as gone:
                client.get_system_shared_memory_status("held_out")
            assert gone.value.status() == "404"
        finally:
            client.unregister_system_shared_memory()
    assert client.is_server_ready() and shm_server.process.poll() is None


# --- gRPC ------------------------------------------------------------------------------------


def grpc_regions(client: grpcclient.InferenceServerClient, name: str = "") -> dict[str, Any]:
    status = client.get_system_shared_memory_status(name)
    return {
        key: (value.key, value.offset, value.byte_size) for key, value in status.regions.items()
    }


def test_grpc_inputs_and_outputs_in_shared_memory(
    grpc_shm_server: ServerProcess, shm_repository: Path
) -> None:
    client = grpcclient.InferenceServerClient(grpc_shm_server.grpc_url)
    client.unregister_system_shared_memory()
    assert "system_shared_memory" in client.get_server_metadata().extensions
    a, b = two_io_inputs(seed=5)
    expected = run_reference(model_path(shm_repository, "two_io"), {"a": a, "b": b})
    with client_region(a.nbytes + b.nbytes) as inputs, client_region(2 * a.nbytes) as outputs:
        try:
            shm.set_shared_memory_region(inputs.handle, [a])
            shm.set_shared_memory_region(inputs.handle, [b], offset=a.nbytes)
            client.register_system_shared_memory("input_data", inputs.key, inputs.byte_size)
            client.register_system_shared_memory("output_data", outputs.key, outputs.byte_size)
            assert grpc_regions(client) == {
                "input_data": (inputs.key, 0, 72),
                "output_data": (outputs.key, 0, 48),
            }
            assert grpc_regions(client, "output_data") == {"output_data": (outputs.key, 0, 48)}

            infer_inputs = [
                grpcclient.InferInput("a", [2, 3], "FP32"),
                grpcclient.InferInput("b", [2, 3], "INT64"),
            ]
            infer_inputs[0].set_shared_memory("input_data", a.nbytes)
            infer_inputs[1].set_shared_memory("input_data", b.nbytes, offset=a.nbytes)
            requested = [
                grpcclient.InferRequestedOutput("sum"),
                grpcclient.InferRequestedOutput("prod"),
            ]
            requested[0].set_shared_memory("output_data", a.nbytes)
            requested[1].set_shared_memory("output_data", a.nbytes, offset=a.nbytes)
            response = client.infer("two_io", infer_inputs, outputs=requested).get_response()
            assert list(response.raw_output_contents) == [b"", b""]  # one empty entry each
            for index, name in enumerate(("sum", "prod")):
                assert (
                    response.outputs[index].parameters["shared_memory_region"].string_param
                    == "output_data"
                )
                got = shm.get_contents_as_numpy(
                    outputs.handle, np.float32, [2, 3], offset=index * a.nbytes
                )
                np.testing.assert_allclose(got, expected[name], rtol=1e-6)

            # mixed: 'a' from shared memory, 'b' in raw_input_contents (the only entry);
            # 'sum' into shared memory, 'prod' in raw_output_contents (still at index 1)
            a2, b2 = two_io_inputs(seed=6)
            shm.set_shared_memory_region(inputs.handle, [a2])
            b_raw = grpcclient.InferInput("b", [2, 3], "INT64")
            b_raw.set_data_from_numpy(b2)
            prod_inline = grpcclient.InferRequestedOutput("prod")
            result = client.infer(
                "two_io", [infer_inputs[0], b_raw], outputs=[requested[0], prod_inline]
            )
            expected2 = run_reference(model_path(shm_repository, "two_io"), {"a": a2, "b": b2})
            np.testing.assert_allclose(result.as_numpy("prod"), expected2["prod"], rtol=1e-6)
            np.testing.assert_allclose(
                shm.get_contents_as_numpy(outputs.handle, np.float32, [2, 3]),
                expected2["sum"],
                rtol=1e-6,
            )

            client.unregister_system_shared_memory("input_data")
            assert list(grpc_regions(client)) == ["output_data"]
            with pytest.raises(InferenceServerException) as unknown:
                client.get_system_shared_memory_status("input_data")
            assert unknown.value.status() == "StatusCode.NOT_FOUND"
        finally:
            client.unregister_system_shared_memory()
    assert grpc_regions(client) == {}


def test_grpc_bad_requests_are_clear_errors(grpc_shm_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(grpc_shm_server.grpc_url)
    x = np.ones((1, 16), dtype=np.float32)
    with client_region(64) as region:
        try:
            client.register_system_shared_memory("r", region.key, 64)
            with pytest.raises(InferenceServerException, match="already in manager") as twice:
                client.register_system_shared_memory("r", region.key, 64)
            assert twice.value.status() == "StatusCode.ALREADY_EXISTS"
            with pytest.raises(InferenceServerException, match="exceeds the 64 bytes") as big:
                client.register_system_shared_memory("big", region.key, 128)
            assert big.value.status() == "StatusCode.INVALID_ARGUMENT"

            for region_name, output_size, fragment, code in (
                ("nope", None, "Unable to find shared memory region: 'nope'", "NOT_FOUND"),
                ("r", 8, r"output 'output' \(8 bytes\) should be at least 16", "INVALID_ARGUMENT"),
            ):
                infer_input = grpcclient.InferInput("input", [1, 16], "FP32")
                infer_input.set_shared_memory(region_name, 64)
                requested = grpcclient.InferRequestedOutput("output")
                if output_size is not None:
                    requested.set_shared_memory("r", output_size)
                with pytest.raises(InferenceServerException, match=fragment) as error:
                    client.infer("mlp", [infer_input], outputs=[requested])
                assert error.value.status() == f"StatusCode.{code}"
            classified = grpcclient.InferRequestedOutput("output", class_count=2)
            classified._output.parameters["shared_memory_region"].string_param = "r"
            classified._output.parameters["shared_memory_byte_size"].int64_param = 64
            in_body = grpcclient.InferInput("input", [1, 16], "FP32")
            in_body.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException, match="can't set both"):
                client.infer("classifier", [in_body], outputs=[classified])
        finally:
            client.unregister_system_shared_memory()
    assert client.is_server_ready()
    healthy = grpcclient.InferInput("input", [1, 16], "FP32")
    healthy.set_data_from_numpy(x)
    assert client.infer("mlp", [healthy]).as_numpy("output").shape == (1, 4)


def test_grpc_unregister_while_in_flight(shm_server: ServerProcess, shm_repository: Path) -> None:
    client = grpcclient.InferenceServerClient(shm_server.grpc_url)
    x = np.random.default_rng(8).standard_normal((8, 16)).astype(np.float32)
    expected = run_reference(model_path(shm_repository, "held"), {"input": x})["output"]
    with client_region(16) as outputs:
        try:
            client.register_system_shared_memory("held_out", outputs.key, 16)
            first_input = grpcclient.InferInput("input", [1, 16], "FP32")
            first_input.set_data_from_numpy(x[:1])
            first_output = grpcclient.InferRequestedOutput("output")
            first_output.set_shared_memory("held_out", 16)
            results: list[tuple[Any, Any]] = []
            client.async_infer(
                "held",
                [first_input],
                lambda result, error: results.append((result, error)),
                outputs=[first_output],
            )
            wait_until_queued(shm_server, "held", 1)
            client.unregister_system_shared_memory("held_out")
            assert list(client.get_system_shared_memory_status().regions) == ["held_out"]
            rest = grpcclient.InferInput("input", [7, 16], "FP32")
            rest.set_data_from_numpy(x[1:])
            np.testing.assert_allclose(
                client.infer("held", [rest]).as_numpy("output"), expected[1:], rtol=1e-5
            )
            deadline = time.monotonic() + 30
            while not results and time.monotonic() < deadline:
                time.sleep(0.01)
            ((result, error),) = results
            assert error is None  # as in Triton: the region stayed until the request was done
            assert result.get_output("output").parameters["shared_memory_byte_size"]
            written = shm.get_contents_as_numpy(outputs.handle, np.float32, [1, 4])
            np.testing.assert_allclose(written, expected[:1], rtol=1e-5)
            assert len(client.get_system_shared_memory_status().regions) == 0
        finally:
            client.unregister_system_shared_memory()
    assert client.is_server_ready() and shm_server.process.poll() is None


# --- off by default --------------------------------------------------------------------------


def test_off_by_default_as_in_triton(server: ServerProcess) -> None:
    """The session's server runs without --allow-client-shm."""
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert "system_shared_memory" not in http.get_server_metadata()["extensions"]
    assert "system_shared_memory" not in grpc.get_server_metadata().extensions
    x = np.ones((1, 16), dtype=np.float32)
    with client_region(64) as region:
        shm.set_shared_memory_region(region.handle, [x])
        with pytest.raises(InferenceServerException, match="not enabled") as http_register:
            http.register_system_shared_memory("r", region.key, 64)
        assert http_register.value.status() == "501"
        with pytest.raises(InferenceServerException, match="not enabled") as grpc_register:
            grpc.register_system_shared_memory("r", region.key, 64)
        assert grpc_register.value.status() == "StatusCode.UNIMPLEMENTED"
        assert http.get_system_shared_memory_status() == []
        assert len(grpc.get_system_shared_memory_status().regions) == 0
        http.unregister_system_shared_memory()
        http.unregister_system_shared_memory("r")
        grpc.unregister_system_shared_memory()
        http.unregister_cuda_shared_memory()  # what perf_analyzer sends first

        http_input = httpclient.InferInput("input", [1, 16], "FP32")
        http_input.set_shared_memory("r", 64)
        with pytest.raises(InferenceServerException, match="not enabled") as http_infer:
            http.infer("mlp", [http_input])
        assert http_infer.value.status() == "501"
        grpc_input = grpcclient.InferInput("input", [1, 16], "FP32")
        grpc_input.set_shared_memory("r", 64)
        with pytest.raises(InferenceServerException, match="not enabled") as grpc_infer:
            grpc.infer("mlp", [grpc_input])
        assert grpc_infer.value.status() == "StatusCode.UNIMPLEMENTED"
