"""`ferry serve --workers 2 --shared-batching`: an idle keep-alive HTTP connection moves to the
worker that owns its model (server/workers/handoff.py) and is served there from its next
request on, with no request lost or answered out of order; a gRPC connection to a one-model
repository moves there when accepted; many connections stay spread over both workers.

Which worker served a request is read from its `--log-requests` line."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from server.workers.sequences import model_owner_of
from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.workers import metric_value, mlp_request, served_by

FLAGS = ("--workers", "2", "--shared-batching", "--log-requests")
OWNER = model_owner_of("mlp", 2)
MOVED = 'ferry_connections_moved_total{{protocol="{}"}}'
CONNECTIONS = 16  # each lands on the owner with p = 1/2: none moves with p = 2**-16


def _body(request_id: str) -> bytes:
    return json.dumps(mlp_request(1) | {"id": request_id}).encode()


def _expected(repo: Path) -> np.ndarray:
    x = np.asarray(mlp_request(1)["inputs"][0]["data"], np.float32).reshape(1, 16)
    return run_reference(repo / "mlp" / "1" / "model.onnx", {"input": x})["output"]


def _infer_on(connection: http.client.HTTPConnection, request_id: str) -> dict[str, Any]:
    connection.request(
        "POST",
        "/v2/models/mlp/infer",
        _body(request_id),
        {"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    answer: dict[str, Any] = json.loads(response.read())
    assert response.status == 200, answer
    assert answer["id"] == request_id
    return answer


def _connection(server: ServerProcess) -> http.client.HTTPConnection:
    host, port = server.http_url.split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def test_a_keep_alive_connection_moves_to_its_models_owner(tmp_path: Path) -> None:
    """One connection at a time, six requests each: wherever the first lands, the last three
    are served by the model's owner, and connections that began on the other worker moved."""
    write_model(tmp_path, "mlp", mlp_model())
    expected = _expected(tmp_path)
    with running_server(tmp_path, *FLAGS) as server:
        ids = [[f"c{c}-r{r}-{uuid.uuid4().hex[:6]}" for r in range(6)] for c in range(CONNECTIONS)]
        for request_ids in ids:
            connection = _connection(server)
            for request_id in request_ids:
                answer = _infer_on(connection, request_id)
                np.testing.assert_allclose(
                    answer["outputs"][0]["data"], expected.reshape(-1), rtol=1e-5
                )
            connection.close()
        lines = served_by(server, [rid for request_ids in ids for rid in request_ids])
        slots = [[lines[rid][0] for rid in request_ids] for request_ids in ids]
        assert all(served[3:] == [OWNER] * 3 for served in slots), slots
        began_elsewhere = sum(served[0] != OWNER for served in slots)
        assert began_elsewhere > 0, slots
        # each of those moved once, and the server counts it once
        assert metric_value(server.metrics_url, MOVED.format("http")) == began_elsewhere


def test_a_grpc_connection_to_a_one_model_repository_is_served_by_the_owner(
    tmp_path: Path,
) -> None:
    """Each gRPC client on a connection of its own, one after the other: every request is
    served by the model's owner, the first included (the connection moved when accepted)."""
    write_model(tmp_path, "mlp", mlp_model())
    expected = _expected(tmp_path)
    x = np.asarray(mlp_request(1)["inputs"][0]["data"], np.float32).reshape(1, 16)
    with running_server(tmp_path, *FLAGS) as server:
        request_ids = []
        for c in range(CONNECTIONS):
            client = grpcclient.InferenceServerClient(
                server.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
            )
            for r in range(3):
                infer_input = grpcclient.InferInput("input", [1, 16], "FP32")
                infer_input.set_data_from_numpy(x)
                request_id = f"grpc-{c}-{r}-{uuid.uuid4().hex[:6]}"
                result = client.infer("mlp", [infer_input], request_id=request_id)
                np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5)
                request_ids.append(request_id)
            client.close()
            time.sleep(0.3)  # its connection closed in the owner too: the owner holds none
        lines = served_by(server, request_ids)
        assert {slot for slot, _ in lines.values()} == {OWNER}, lines
        assert metric_value(server.metrics_url, MOVED.format("grpc")) > 0


def test_requests_sent_while_the_connection_moves_are_all_answered_in_order(
    tmp_path: Path,
) -> None:
    """Raw sockets: each next request leaves the moment the previous answer arrives (the move
    races with it), a pipelined pair arrives in one write, and a request arrives with the start
    of the next; every answer comes, in order."""
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, *FLAGS) as server:
        host, port = server.http_url.split(":")
        for c in range(CONNECTIONS):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                reader = sock.makefile("rb")
                # first, a request and the first bytes of the next in one write, its rest later:
                # the parser holds those bytes, so the connection must not move meanwhile
                first, second = (_raw_request(host, f"split-{c}-{i}") for i in range(2))
                sock.sendall(first + second[:20])
                status, answer = _read_response(reader)
                assert status == 200 and json.loads(answer)["id"] == f"split-{c}-0", answer
                time.sleep(0.05)
                sock.sendall(second[20:])
                status, answer = _read_response(reader)
                assert status == 200 and json.loads(answer)["id"] == f"split-{c}-1", answer
                for r in range(8):
                    ids = [f"race-{c}-{r}"] if r != 4 else [f"race-{c}-{r}a", f"race-{c}-{r}b"]
                    sock.sendall(b"".join(_raw_request(host, rid) for rid in ids))
                    for request_id in ids:
                        status, answer = _read_response(reader)
                        assert status == 200, answer
                        assert json.loads(answer)["id"] == request_id


def test_many_connections_stay_spread_over_both_workers(tmp_path: Path) -> None:
    """Sixteen busy connections at once: a connection moves only to an owner holding none, so
    while they are all open the other worker keeps most of those the kernel gave it and serves
    their last requests (unless the kernel gave it none: p = 2**-16)."""
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, *FLAGS) as server:
        failures: list[BaseException] = []
        start, end = threading.Barrier(CONNECTIONS), threading.Barrier(CONNECTIONS)

        def client(index: int) -> None:
            try:
                connection = _connection(server)
                _infer_on(connection, f"spread-{index}-first")
                start.wait(30)  # all open together
                for r in range(30):
                    _infer_on(connection, f"spread-{index}-{r}")
                # none closes before all are done: once the owner's own connections close, the
                # other worker's would rightly move to it (it holds none)
                end.wait(60)
                connection.close()
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures
        last_ids = [f"spread-{i}-29" for i in range(CONNECTIONS)]
        workers = [slot for slot, _ in served_by(server, last_ids).values()]
        assert set(workers) == {0, 1}, workers


def _raw_request(host: str, request_id: str) -> bytes:
    body = _body(request_id)
    return (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
    )


def _read_response(reader: Any) -> tuple[int, bytes]:
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)
