"""HTTP/1.1 connection behaviour of the infer endpoint against the real tritonserver: the same
raw bytes to both servers, serving the same Python-backend repository, get the same statuses,
the same JSON answers in the same order, and the same decision to keep or close the connection.

These are the cases where ferry writes the infer answer on uvicorn's request cycle itself
(server/protocol/http_direct.py): pipelined requests (infer only, and mixed with other routes),
`Expect: 100-continue`, HTTP/1.0, `Connection: close`, bodies in pieces, and a client that
leaves mid-body.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import (
    linear_parameters,
    missing_reason,
    running_tritonserver,
    write_linear_model,
)

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

ROWS = np.arange(8, dtype=np.float32).reshape(2, 4) / 4


@dataclass
class Answer:
    status: int
    body: object  # the JSON answer, or the binary output's values
    interim: list[int]  # statuses of 1xx responses before it


@dataclass
class Outcome:
    answers: list[Answer]
    closed: bool  # the server closed the connection after its answers


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    repository: Path = tmp_path_factory.mktemp("wire-repo")
    write_linear_model(repository, "linear", max_batch_size=8)
    with running_tritonserver(repository) as triton, running_server(repository) as ferry:
        yield {"triton": triton, "ferry": ferry}


def json_body(rows: np.ndarray, **parameters: object) -> bytes:
    request: dict[str, object] = {
        "inputs": [
            {
                "name": "x",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    if parameters:
        request["parameters"] = parameters
    return json.dumps(request).encode()


def binary_body(rows: np.ndarray) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + rows.tobytes(), len(header)


def post(
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    version: str = "1.1",
) -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: wire", f"Content-Length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


INFER = "/v2/models/linear/infer"
HEALTH = b"GET /v2/health/ready HTTP/1.1\r\nHost: wire\r\n\r\n"


class Reader:
    """Reads HTTP/1.x responses from a socket: interim 1xx ones are kept with the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
        self.buffer += chunk

    def answer(self) -> Answer:
        interim: list[int] = []
        while True:
            while b"\r\n\r\n" not in self.buffer:
                self._fill()
                if self.eof:
                    raise AssertionError(f"connection closed mid-response: {self.buffer!r}")
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            if 100 <= status < 200:
                interim.append(status)
                continue
            fields = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            length = int(fields["content-length"])
            while len(self.buffer) < length:
                self._fill()
                if self.eof:
                    raise AssertionError("connection closed mid-body")
            payload, self.buffer = self.buffer[:length], self.buffer[length:]
            return Answer(status, _decoded(payload, fields), interim)

    def closed_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self._fill()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return self.eof


def _decoded(payload: bytes, fields: dict[str, str]) -> object:
    split = fields.get("inference-header-content-length")
    if split is None:
        return json.loads(payload) if payload else None
    header = json.loads(payload[: int(split)])
    values = np.frombuffer(payload[int(split) :], dtype=np.float32)
    for output in header["outputs"]:
        output["parameters"].pop("binary_data_size", None)
    return {"header": header, "values": values.tolist()}


def exchange(
    server: ServerProcess, pieces: list[bytes], answers: int, pause_s: float = 0.0
) -> Outcome:
    """Send `pieces` on one connection (`pause_s` between them), read `answers` responses, and
    whether the server then closes the connection (within a second)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(pause_s)
            sock.sendall(piece)
        received = [reader.answer() for _ in range(answers)]
        return Outcome(received, reader.closed_within(1.0))


def same_on_both(
    servers: dict[str, ServerProcess], pieces: list[bytes], answers: int, pause_s: float = 0.0
) -> Outcome:
    theirs = exchange(servers["triton"], pieces, answers, pause_s)
    ours = exchange(servers["ferry"], pieces, answers, pause_s)
    assert ours == theirs
    return ours


def expected_rows(rows: np.ndarray) -> list[float]:
    weights, bias = linear_parameters()
    values: list[float] = (rows @ weights + bias).astype(np.float32).ravel().tolist()
    return values


def test_pipelined_infer_requests_are_answered_in_order(
    servers: dict[str, ServerProcess],
) -> None:
    bodies = [json_body(ROWS * (index + 1)) for index in range(4)]
    outcome = same_on_both(servers, [b"".join(post(INFER, body) for body in bodies)], 4)
    assert [answer.status for answer in outcome.answers] == [200] * 4
    for index, answer in enumerate(outcome.answers):
        assert isinstance(answer.body, dict)
        np.testing.assert_allclose(
            answer.body["outputs"][0]["data"], expected_rows(ROWS * (index + 1)), rtol=1e-6
        )
    assert not outcome.closed


def test_pipelined_infer_mixed_with_other_routes_and_errors(
    servers: dict[str, ServerProcess],
) -> None:
    """Each request of the pipeline is answered as Triton answers it alone. (Triton itself
    answers only the first two of such a pipeline: README, differences.)"""
    binary, header_length = binary_body(ROWS)
    pipeline = [
        post(INFER, json_body(ROWS)),
        HEALTH,
        post(INFER, binary, {"Inference-Header-Content-Length": str(header_length)}),
        post("/v2/models/nosuch/infer", json_body(ROWS)),
        post(INFER, json_body(ROWS * 2)),
    ]
    alone = [exchange(servers["triton"], [request], 1).answers[0] for request in pipeline]
    outcome = exchange(servers["ferry"], [b"".join(pipeline)], len(pipeline))
    assert outcome.answers == alone
    assert [answer.status for answer in outcome.answers] == [200, 200, 200, 404, 200]
    assert not outcome.closed


def test_expect_100_continue_gets_an_interim_response_then_the_answer(
    servers: dict[str, ServerProcess],
) -> None:
    body = json_body(ROWS)
    request = post(INFER, body, {"Expect": "100-continue"})
    head_length = len(request) - len(body)
    outcome = same_on_both(servers, [request[:head_length], body], 1, pause_s=0.2)
    assert outcome.answers[0].status == 200 and outcome.answers[0].interim == [100]


def test_a_body_in_pieces_is_answered_once_whole(servers: dict[str, ServerProcess]) -> None:
    request = post(INFER, json_body(ROWS))
    pieces = [request[:40], request[40:90], request[90:-10], request[-10:]]
    outcome = same_on_both(servers, pieces, 1, pause_s=0.05)
    assert outcome.answers[0].status == 200 and not outcome.closed


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(
    servers: dict[str, ServerProcess],
) -> None:
    closing = same_on_both(servers, [post(INFER, json_body(ROWS), {"Connection": "close"})], 1)
    assert closing.answers[0].status == 200 and closing.closed
    old = same_on_both(servers, [post(INFER, json_body(ROWS), version="1.0")], 1)
    assert old.answers[0].status == 200 and old.closed
    # RFC 9112 9.6: a request pipelined behind Connection: close is not processed. (Triton
    # answers it and keeps the connection: README, differences.)
    pipeline = post(INFER, json_body(ROWS), {"Connection": "close"}) + post(INFER, json_body(ROWS))
    outcome = exchange(servers["ferry"], [pipeline], 1)
    assert outcome.answers[0].status == 200 and outcome.closed


def test_a_client_leaving_mid_body_does_not_disturb_the_next_one(
    servers: dict[str, ServerProcess],
) -> None:
    for server in servers.values():
        request = post(INFER, json_body(ROWS))
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
                sock.sendall(request[: len(request) // 2])
                # RST instead of FIN: the server sees the peer gone at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    same_on_both(servers, [post(INFER, json_body(ROWS))], 1)
