"""Hostile HTTP/1.1 clients against a real `ferry serve` on loopback (issue 11's attacks).

Each test sends one attack from raw sockets while a ServerWatch samples the server's RSS, probes
/v2/health/live on fresh connections and sends good requests with the real tritonclient, then
asserts the attacker got the documented answer and the server stayed healthy. The figures go to
stdout (`pytest -s`); the health bound asserted is CI-safe (seconds), the real latency is printed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.support.attack import ServerWatch, WatchReport, cpu_seconds
from tests.support.onnx_models import bytes_model, mlp_model, run_reference, write_model
from tests.support.server_process import ServerProcess, running_server

MiB = 1 << 20
MAX_REQUEST = 64 * MiB
BUDGET = 160 * MiB
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 8.0  # long enough for a 60 MB upload on a busy CI machine
KEEPALIVE_TIMEOUT_S = 3.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("attack-repo")
    write_model(repo, "mlp", mlp_model())
    write_model(repo, "strings", bytes_model())
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    with running_server(
        repository,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--http-max-request-bytes",
        str(MAX_REQUEST),
        "--http-max-buffered-bytes",
        str(BUDGET),
        "--http-header-timeout-secs",
        str(HEADER_TIMEOUT_S),
        "--http-body-timeout-secs",
        str(BODY_TIMEOUT_S),
        "--http-keepalive-timeout-secs",
        str(KEEPALIVE_TIMEOUT_S),
    ) as process:
        yield process


@pytest.fixture(scope="module")
def good_request(server: ServerProcess, repository: Path) -> Callable[[], None]:
    """One correct infer with the unmodified tritonclient, checked against ONNX Runtime."""
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    expected = run_reference(repository / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    local = threading.local()  # tritonclient.http runs on gevent: one client per thread

    def send() -> None:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        client = local.client
        infer_input = httpclient.InferInput("input", [2, 16], "FP32")
        infer_input.set_data_from_numpy(x)
        result = client.infer("mlp", [infer_input]).as_numpy("output")
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)

    return send


def watched(server: ServerProcess, good_request: Callable[[], None]) -> ServerWatch:
    return ServerWatch(server, good_request)


def report(name: str, watch: WatchReport, attacker: str) -> None:
    print(f"\n[attack] {name}: attacker got {attacker}; {watch.summary()}")


def connect(server: ServerProcess, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and bytes of the server's response (read to its Content-Length, or until the
    server closes or the socket times out); status 0 when none came."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator:
                length = _content_length(head)
                if length is not None and len(body) >= length:
                    break
    except (ConnectionResetError, TimeoutError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return 0, data
    return int(data[9:12]), data


def run_attackers(count: int, attack: Callable[[], None], timeout: float = 120) -> None:
    """Run `attack` in `count` threads at once and wait for them all."""
    threads = [threading.Thread(target=attack) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)


def exchange(server: ServerProcess, request: bytes) -> tuple[int, bytes]:
    """Send one raw request on a fresh connection; the response's status and bytes."""
    sock = connect(server)
    try:
        sock.sendall(request)
        return read_response(sock)
    finally:
        sock.close()


def read_in_background(sock: socket.socket) -> tuple[list[tuple[int, bytes]], threading.Thread]:
    """Read the response in a thread (while this one keeps sending): its list gets it."""
    received: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: received.append(read_response(sock)))
    reader.start()
    return received, reader


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (None: still open after `seconds`)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def infer_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: ferry", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- body size and the server-wide budget ----------------------------------------------------


def test_gzip_bomb_of_json_zeros_stops_at_the_input_size(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    """A ~500 KB gzip body inflating to 512 MiB of JSON zeros: inflation stops at
    --http-max-input-size (64 MiB), 400; nothing is parsed."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = b'{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":['
    parts = [compressor.compress(head)]
    block = b"0," * (MiB // 2)
    parts += [compressor.compress(block) for _ in range(512)]
    parts.append(compressor.compress(b"0]}]}") + compressor.flush())
    bomb = b"".join(parts)
    with watched(server, good_request) as watch:
        sock = connect(server)
        started = time.monotonic()
        sock.sendall(infer_request("/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"}))
        status, data = read_response(sock)
        elapsed = time.monotonic() - started
        sock.close()
        time.sleep(0.5)
    result = watch.report()
    report(
        f"gzip bomb ({len(bomb) / 1e3:.0f} KB -> 512 MiB of JSON zeros)",
        result,
        f"{status} in {elapsed:.2f}s",
    )
    assert status == 400, data[:300]
    assert b"Decompressed data size exceeds" in data
    result.assert_healthy(rss_growth_mb=400)


def test_unfinished_chunked_bodies_are_held_to_the_budget(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    """Twelve chunked bodies of 60 MB that never finish (each under the 64 MiB cap): at most
    --http-max-buffered-bytes is held; past it 503 at once; the rest time out (408)."""
    statuses: list[int] = []
    lock = threading.Lock()

    def attack() -> None:
        sock = connect(server, timeout=30)
        received, reader = read_in_background(sock)  # the answer may come while it still sends
        try:
            sock.sendall(
                b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n" % MiB + b" " * MiB + b"\r\n"
            for _ in range(60):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server: after its answer (503) or the body timeout (408)
        reader.join(timeout=60)  # never finished: the server answers or times out
        sock.close()
        with lock:
            statuses.append(received[0][0] if received else -1)

    with watched(server, good_request) as watch:
        run_attackers(12, attack, timeout=120)
    result = watch.report()
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    report("12 unfinished 60 MB chunked bodies", result, f"statuses {counts}")
    assert len(statuses) == 12
    assert counts.get(503, 0) >= 12 - BUDGET // (60 * MiB), counts
    assert set(counts) <= {503, 408}, counts
    result.assert_healthy(rss_growth_mb=BUDGET / MiB + 150)


def test_declared_body_over_the_cap_is_refused_before_it_is_read(server: ServerProcess) -> None:
    status, data = exchange(
        server,
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nContent-Length: %d\r\n\r\n"
        % (8 << 30),
    )
    assert status == 413, data
    assert b"--http-max-request-bytes" in data


def _holding_upload(server: ServerProcess, size: int) -> socket.socket:
    """A connection whose upload of `size` bytes the server has taken into its budget: its head
    and 1 KiB of body sent, and no answer 0.3 s later. The previous test's uploads may still
    hold the budget for a moment after their clients closed (the server reads the rest of
    what they sent first): a refused one is tried again."""
    deadline = time.monotonic() + 10
    while True:
        sock = connect(server)
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nContent-Length: %d\r\n\r\n"
            % size
            + b" " * 1024
        )
        time.sleep(0.3)
        sock.setblocking(False)
        try:
            answered = sock.recv(1)
        except BlockingIOError:
            sock.setblocking(True)
            return sock
        sock.close()
        assert time.monotonic() < deadline, f"the server never held the upload ({answered!r})"


def test_declared_bodies_past_the_budget_get_503_at_once(server: ServerProcess) -> None:
    """Content-Length is reserved up front: with the budget held by two slow uploads, a third
    that would not fit is refused before its body is sent."""
    size = 60 * MiB
    holders = [_holding_upload(server, size) for _ in range(2)]
    sock = connect(server)
    started = time.monotonic()
    sock.sendall(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nContent-Length: %d\r\n\r\n" % size
    )
    status, data = read_response(sock)
    elapsed = time.monotonic() - started
    for held in [*holders, sock]:
        held.close()
    assert status == 503, data
    assert b"--http-max-buffered-bytes" in data
    assert elapsed < 2.0


# --- headers --------------------------------------------------------------------------------


def test_a_100_mb_header_value_is_refused_after_the_header_limit(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    """Four clients, for three seconds, each sending a 100 MB header value over and over."""
    outcomes: list[tuple[int, int]] = []  # (status, bytes sent before the server closed)
    stop = time.monotonic() + 3

    def attack() -> None:
        while time.monotonic() < stop:
            sock = connect(server)
            received, reader = read_in_background(sock)
            sent = 0
            try:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: ferry\r\nX-Big: ")
                block = b"a" * MiB
                for _ in range(100):
                    sock.sendall(block)
                    sent += len(block)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reader.join(timeout=30)
            sock.close()
            outcomes.append((received[0][0] if received else 0, sent))

    with watched(server, good_request) as watch:
        cpu_before = cpu_seconds(server.process.pid)
        run_attackers(4, attack, timeout=60)
        server_cpu = cpu_seconds(server.process.pid) - cpu_before
    result = watch.report()
    statuses = {status for status, _ in outcomes}
    most_sent = max(sent for _, sent in outcomes)
    report(
        "100 MB header values (4 clients, 3 s)",
        result,
        f"{len(outcomes)} x {statuses}, at most {most_sent / MiB:.0f} MiB sent before the "
        f"close; server CPU {server_cpu:.2f}s",
    )
    assert statuses == {431}
    assert most_sent < 100 * MiB  # the server closed each connection instead of reading it all
    result.assert_healthy(rss_growth_mb=100)


def test_too_many_header_fields_get_431(server: ServerProcess) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(500))
    status, data = exchange(
        server, b"GET /v2/health/live HTTP/1.1\r\nHost: ferry\r\n" + fields + b"\r\n"
    )
    assert status == 431, data
    assert b"--http-max-header-count" in data


# --- slow and idle clients ------------------------------------------------------------------


def test_slowloris_headers_time_out(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    """50 connections sending their headers a byte at a time: 408 after the header timeout."""
    sockets = [connect(server) for _ in range(50)]
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: ferry\r\nX-Slow: " + b"a" * 100
    with watched(server, good_request) as watch:
        started = time.monotonic()
        for index in range(len(request)):
            if time.monotonic() - started > HEADER_TIMEOUT_S + 3:
                break
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(request[index : index + 1])
            time.sleep(0.2)
        results = [read_response(sock) for sock in sockets]
        elapsed = time.monotonic() - started
    for sock in sockets:
        sock.close()
    result = watch.report()
    statuses = {status for status, _ in results}
    report("50 slowloris connections (5 bytes/s)", result, f"{statuses} within {elapsed:.1f}s")
    assert statuses == {408}
    assert b"--http-header-timeout-secs" in results[0][1]
    result.assert_healthy(rss_growth_mb=100)


@pytest.mark.parametrize("kind", ["endless chunked", "short Content-Length"])
def test_slow_bodies_time_out(
    server: ServerProcess, good_request: Callable[[], None], kind: str
) -> None:
    sock = connect(server)
    if kind == "endless chunked":
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n"
        )
    else:
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nContent-Length: 100000\r\n\r\n{"
        )
    with watched(server, good_request) as watch:
        started = time.monotonic()
        received, reader = read_in_background(sock)
        while reader.is_alive() and time.monotonic() - started < BODY_TIMEOUT_S + 10:
            try:
                sock.send(b"1\r\n \r\n" if kind == "endless chunked" else b" ")
            except OSError:
                break
            time.sleep(0.1)
        reader.join(timeout=10)
        elapsed = time.monotonic() - started
    sock.close()
    result = watch.report()
    status, data = received[0]
    report(f"slow body ({kind})", result, f"{status} after {elapsed:.1f}s")
    assert status == 408, data
    assert b"--http-body-timeout-secs" in data
    assert elapsed < BODY_TIMEOUT_S + 5
    result.assert_healthy(rss_growth_mb=100)


def test_idle_connections_are_closed(server: ServerProcess) -> None:
    fresh = connect(server)
    kept = connect(server)
    kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: ferry\r\n\r\n")
    assert read_response(kept)[0] == 200
    for sock in (fresh, kept):
        closed_after = closed_within(sock, KEEPALIVE_TIMEOUT_S + 5)
        sock.close()
        assert closed_after is not None


# --- what a body decodes into ---------------------------------------------------------------


def test_bytes_tensor_of_10m_empty_elements_is_refused_before_decoding(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    count = 10_000_000
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [count // 2, 2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 * count},
                }
            ]
        }
    ).encode()
    request = infer_request(
        "/v2/models/strings/infer",
        header + bytes(4 * count),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    answers: list[tuple[int, bytes, float]] = []
    stop = time.monotonic() + 3

    def attack() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            status, data = exchange(server, request)
            answers.append((status, data, time.monotonic() - started))

    with watched(server, good_request) as watch:
        run_attackers(2, attack, timeout=60)
    result = watch.report()
    slowest = max(elapsed for _, _, elapsed in answers)
    report(
        "BYTES tensors of 10M empty elements (40 MB bodies, 2 clients, 3 s)",
        result,
        f"{len(answers)} x {sorted({a[0] for a in answers})}, slowest {slowest:.2f}s",
    )
    assert {status for status, _, _ in answers} == {400}, answers[0][1][:300]
    assert b"--http-max-bytes-elements" in answers[0][1]
    result.assert_healthy(rss_growth_mb=250)


def test_json_at_the_element_limit_keeps_the_server_responsive(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    """The costliest JSON the limits let through: empty arrays (the most expensive value to
    build) up to the element limit (each weighs 4: a comma and an opener), four clients in a
    loop."""
    data = b"[" + b"[]," * ((1 << 16) - 10) + b"[]]"
    body = b'{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":' + data + b"}]}"
    statuses: list[int] = []
    stop = time.monotonic() + 6

    def attack() -> None:
        while time.monotonic() < stop:
            statuses.append(exchange(server, infer_request("/v2/models/mlp/infer", body))[0])

    with watched(server, good_request) as watch:
        run_attackers(4, attack, timeout=60)
    result = watch.report()
    report(
        f"JSON at the element limit ({len(body) / 1e6:.1f} MB, 64K empty arrays) x4 clients",
        result,
        f"{len(statuses)} answers {sorted(set(statuses))}",
    )
    assert statuses and set(statuses) == {400}
    result.assert_healthy(rss_growth_mb=400)


def test_json_over_the_element_limit_is_refused_before_parsing(server: ServerProcess) -> None:
    data = b"[" + b"0," * (4 << 20) + b"0]"
    body = b'{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":' + data + b"}]}"
    status, data = exchange(server, infer_request("/v2/models/mlp/infer", body))
    assert status == 400, data
    assert b"--http-max-json-elements" in data


def test_bytes_data_nested_1000_deep_is_a_400(server: ServerProcess) -> None:
    nested = "[" * 1000 + '"a"' + "]" * 1000
    body = (
        '{"inputs":[{"name":"text","shape":[1,2],"datatype":"BYTES","data":' + nested + "}]}"
    ).encode()
    status, data = exchange(server, infer_request("/v2/models/strings/infer", body))
    assert status == 400, data
    assert b"nesting depth" in data or b"depth limit" in data


def test_names_over_the_filesystem_limit_are_a_400(server: ServerProcess) -> None:
    """A model name over 255 characters, and a load file path whose component is, are the
    client's error (400), not an OSError (ENAMETOOLONG, 500)."""
    status, data = exchange(server, infer_request(f"/v2/repository/models/{'m' * 300}/load", b""))
    assert status == 400, data
    assert b"255" in data
    load = json.dumps(
        {"parameters": {"config": "{}", f"file:1/{'f' * 300}/model.onnx": "AAAA"}}
    ).encode()
    status, data = exchange(server, infer_request("/v2/repository/models/fresh/load", load))
    assert status == 400, data
    assert b"File name too long" in data


# --- what the limits must not refuse --------------------------------------------------------


def test_large_chunked_keep_alive_and_compressed_requests_still_work(
    server: ServerProcess, good_request: Callable[[], None]
) -> None:
    """Bodies over 64 KiB in chunks that span reads, three in a row on one connection, and a
    gzip request from tritonclient: all answered 200 (no header, trailer or budget refusal)."""
    x = [float(i) for i in range(16)]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32"}]})
    padded = (body[:-3] + ', "data": ' + json.dumps(x) + " " * (300 * 1024) + "}]}").encode()
    sock = connect(server)
    for _ in range(3):
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n"
        )
        for start in range(0, len(padded), 100 * 1024):
            piece = padded[start : start + 100 * 1024]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\nX-Trailer: fine\r\n\r\n")
        status, data = read_response(sock)
        assert status == 200, data[:300]
    sock.close()
    client = httpclient.InferenceServerClient(server.http_url)
    infer_input = httpclient.InferInput("input", [1, 16], "FP32")
    infer_input.set_data_from_numpy(np.ones((1, 16), np.float32), binary_data=False)
    result = client.infer(
        "mlp",
        [infer_input],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    assert result.as_numpy("output").shape == (1, 4)
    good_request()


def test_endless_trailers_are_refused(server: ServerProcess) -> None:
    sock = connect(server)
    received, reader = read_in_background(sock)
    sock.sendall(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-Trailer: "
    )
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for _ in range(64):
            sock.sendall(b"a" * 65536)
    reader.join(timeout=30)
    sock.close()
    assert received and received[0][0] == 431, received
    assert b"trailers" in received[0][1]
