"""`ferry serve --workers 2`: the buffered-bytes budgets and the response cache's size bound the
server, not each worker. Whichever worker the kernel gives each connection, uploads are refused
only past the server's `--http-max-buffered-bytes`, one gRPC message may use the whole
`--grpc-max-buffered-request-bytes`, and one worker may fill the whole cache (split budgets
refused or evicted: half the budget per worker)."""

from __future__ import annotations

import socket
import time
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server.protocol.grpc_wire import frames
from server.response_cache import response_bytes
from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.workers import restart_a_worker

MiB = 1 << 20
UNBATCHED_MLP = """name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [{ name: "input" data_type: TYPE_FP32 dims: [-1, 16] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [-1, 4] }]
"""


def _declare(server: ServerProcess, size: int) -> socket.socket:
    """A connection that sends the head of an upload of `size` bytes and none of its body."""
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    sock.sendall(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: ferry\r\nContent-Length: %d\r\n\r\n" % size
    )
    return sock


def _answered(sock: socket.socket) -> bytes:
    """What the server has sent on `sock` so far (b"" when nothing)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def _two_workers_with_100_mib_for_uploads(tmp_path: Path) -> AbstractContextManager[ServerProcess]:
    write_model(tmp_path, "mlp", mlp_model())
    return running_server(
        tmp_path,
        "--workers",
        "2",
        "--http-max-buffered-bytes",
        str(100 * MiB),
        "--http-max-request-bytes",
        str(40 * MiB),
    )


def test_http_uploads_are_refused_only_past_the_servers_budget(tmp_path: Path) -> None:
    with _two_workers_with_100_mib_for_uploads(tmp_path) as server:
        # three 30 MiB uploads: two of them share a worker, over half the budget (a split
        # budget refused that one); the server holds 90 of its 100 MiB
        holders = [_declare(server, 30 * MiB) for _ in range(3)]
        time.sleep(0.5)
        assert [_answered(holder) for holder in holders] == [b"", b"", b""]
        started = time.monotonic()
        fourth = _declare(server, 30 * MiB)
        fourth.settimeout(5)
        answer = fourth.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"--http-max-buffered-bytes" in answer
        assert time.monotonic() - started < 2.0
        fourth.close()
        for holder in holders:
            holder.close()
        # the closed uploads gave their bytes back, on whichever worker held them
        deadline = time.monotonic() + 10
        while True:
            sock = _declare(server, 30 * MiB)
            time.sleep(0.2)
            answer = _answered(sock)
            sock.close()
            if answer == b"" or time.monotonic() > deadline:
                break
        assert answer == b"", answer


def test_the_bytes_a_killed_worker_held_go_back_to_the_server(tmp_path: Path) -> None:
    with _two_workers_with_100_mib_for_uploads(tmp_path) as server:
        holders = [_declare(server, 15 * MiB) for _ in range(6)]  # 90 of the 100 MiB
        time.sleep(0.5)
        assert [_answered(holder) for holder in holders] == [b""] * 6
        # both workers die holding their uploads' bytes, whichever held which; their
        # replacements must not inherit them
        restart_a_worker(server)
        restart_a_worker(server)
        for holder in holders:
            holder.close()
        holders = [_declare(server, 15 * MiB) for _ in range(6)]
        time.sleep(0.5)
        assert [_answered(holder) for holder in holders] == [b""] * 6
        seventh = _declare(server, 15 * MiB)
        seventh.settimeout(5)
        assert seventh.recv(65536).startswith(b"HTTP/1.1 503 ")
        for sock in [*holders, seventh]:
            sock.close()


@pytest.mark.parametrize("transport", ["ferry", "grpcio"])
def test_one_grpc_message_may_use_the_servers_whole_budget(tmp_path: Path, transport: str) -> None:
    model_dir = write_model(tmp_path, "mlp", mlp_model(), UNBATCHED_MLP)
    rows = 40 * MiB // (16 * 4)  # a 40 MiB input: more than half the 64 MiB budget
    x = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    budget = ["--grpc-max-buffered-request-bytes", str(64 * MiB), "--grpc-transport", transport]
    with running_server(tmp_path, "--workers", "2", *budget) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            infer_input = grpcclient.InferInput("input", list(x.shape), "FP32")
            infer_input.set_data_from_numpy(x)
            result = client.infer("mlp", [infer_input])
            expected = run_reference(model_dir / "1" / "model.onnx", {"input": x})["output"]
            np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-5)
            # past the server's budget it is still refused, at once
            too_big = np.zeros((65 * MiB // 64, 16), np.float32)
            big_input = grpcclient.InferInput("input", list(too_big.shape), "FP32")
            big_input.set_data_from_numpy(too_big)
            with pytest.raises(InferenceServerException) as refused:
                client.infer("mlp", [big_input])
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        finally:
            client.close()


def test_the_cached_models_owner_holds_the_servers_whole_cache(tmp_path: Path) -> None:
    """`--cache-config local,size=` bounds the server, not each worker: the owner of the one
    cached model keeps as many answers as a single server (a size split in two kept half of
    them: the repeats missed), and the merged gauges count each entry once."""
    write_model(
        tmp_path,
        "cached",
        mlp_model(4, 8, 3, input_name="x", output_name="y"),
        "max_batch_size: 8\nresponse_cache { enable: true }\n",
    )
    answers = 6
    size = answers * response_bytes({"y": np.zeros((1, 3), np.float32)})
    flags = ("--workers", "2", "--cache-config", f"local,size={size}")
    with (
        running_server(tmp_path, *flags) as server,
        httpclient.InferenceServerClient(server.http_url) as client,
    ):
        for _ in range(2):  # misses, then hits
            for value in range(answers):
                tensor = httpclient.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
                client.infer("cached", [tensor])
        stats = client.get_inference_statistics("cached")["model_stats"][0]["inference_stats"]
        with urllib.request.urlopen(server.metrics_url) as response:
            gauges = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in response.read().decode().splitlines()
                if line.startswith("nv_cache_") and "{" not in line
            }
    assert (stats["cache_miss"]["count"], stats["cache_hit"]["count"]) == (answers, answers)
    assert gauges["nv_cache_num_entries"] == answers
    assert gauges["nv_cache_num_evictions"] == 0
    assert gauges["nv_cache_util"] == pytest.approx(1.0)


def _grpc_connection(server: ServerProcess) -> socket.socket:
    """An HTTP/2 connection to the gRPC port that has sent its preface and SETTINGS."""
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frames.settings_frame({}))
    return sock


def _first_frame_type(sock: socket.socket) -> int:
    """The type of the first frame the server sent (SETTINGS: taken; GOAWAY: refused)."""
    header = b""
    while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        assert chunk, "closed before a frame"
        header += chunk
    return header[3]


def test_grpc_connections_are_counted_for_the_server(tmp_path: Path) -> None:
    """On ferry's transport `--grpc-max-connections` bounds the server: 6 connections fit a limit
    of 6 however the kernel spreads them over two workers (a split limit, 3 each, refused one
    whenever they spread 4-2 or worse), the 7th is refused, and a closed one frees its place."""
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, "--workers", "2", "--grpc-max-connections", "6") as server:
        taken = [_grpc_connection(server) for _ in range(6)]
        assert [_first_frame_type(sock) for sock in taken] == [frames.SETTINGS] * 6
        refused = _grpc_connection(server)
        assert _first_frame_type(refused) == frames.GOAWAY
        refused.close()
        taken.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the worker that held it hears of the close at its next loop turn
            again = _grpc_connection(server)
            kind = _first_frame_type(again)
            if kind == frames.SETTINGS or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.1)
        assert kind == frames.SETTINGS, "no place came free"
        for sock in [*taken, again]:
            sock.close()
