"""A Python model's process shared across workers (`--listen`, server/runtimes/python/stub.py),
driven over its real sockets: the batches that wait when the model is free run in one `execute`
while their rows fit max_batch_size, each sender gets its own requests' answers, and exactly one
of them reports the execution (its size and request count)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.runtimes.python import ipc
from server.runtimes.python.config import stub_command, stub_environment

MAX_BATCH_SIZE = 8
BLOCKER = -1.0  # a request whose X starts with this keeps `execute` busy for BLOCK_S
BLOCK_S = 0.6

MODEL_PY = f"""\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        if any(x[0, 0] == {BLOCKER} for x in arrays):
            time.sleep({BLOCK_S})
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("Y", x.copy()),
            pb_utils.Tensor("BATCH", np.full((x.shape[0], 1), len(requests), np.int32))])
            for x in arrays]
"""


class Endpoint:
    """One side's socket to the model process: send batches, read what comes back."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(20)
        self.sock = sock
        self.messages = ipc.read_messages(sock.recv_into)

    def send(self, message: Any) -> None:
        ipc.send_frame(self.sock, ipc.encode(message, "ferry-test"))

    def execute(self, batch_id: int, first_values: list[float], rows: int = 1) -> None:
        payloads = [
            (
                f"r{batch_id}-{i}",
                0,
                [("X", np.full((rows, 2), v, np.float32))],
                ["Y", "BATCH"],
                "{}",
                0,
            )
            for i, v in enumerate(first_values)
        ]
        self.send((ipc.EXECUTE, batch_id, payloads))

    def receive(self) -> Any:
        return next(self.messages)


@contextlib.contextmanager
def started(tmp_path: Path, dynamic_batching: bool) -> Iterator[tuple[Endpoint, Endpoint]]:
    """The model's process with its primary channel (the owner's) and one peer (a worker)."""
    version = tmp_path / "shared" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(MODEL_PY)
    listen = tmp_path / "py.sock"
    parent, child = socket.socketpair()
    process = subprocess.Popen(
        stub_command("--fd", str(child.fileno()), "--listen", str(listen)),
        pass_fds=[child.fileno()],
        env=stub_environment(),
        stdin=subprocess.DEVNULL,
    )
    child.close()
    try:
        primary = Endpoint(parent)
        config: dict[str, Any] = {"name": "shared", "max_batch_size": MAX_BATCH_SIZE}
        if dynamic_batching:
            config["dynamic_batching"] = {}
        settings = {
            "model_file": str(version / "model.py"),
            "version": "1",
            "instance_name": "shared_0",
            "decoupled": False,
            "shm_prefix": "ferry-test-stub",
            "args": {"model_config": json.dumps(config)},
        }
        primary.send((ipc.INIT, settings))
        assert primary.receive() == (ipc.READY,)
        assert listen.exists()  # listening before READY: a worker told READY can attach
        peer_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer_sock.connect(str(listen))
        yield primary, Endpoint(peer_sock)
    finally:
        parent.close()
        process.wait(timeout=20)


@pytest.fixture
def shared_process(tmp_path: Path) -> Iterator[tuple[Endpoint, Endpoint]]:
    with started(tmp_path, dynamic_batching=True) as endpoints:
        yield endpoints


def answer_rows(executed: Any) -> list[tuple[float, int]]:
    """(first value of Y, BATCH) of each response of an EXECUTED message."""
    found = []
    for outputs, error, _ in executed[2]:
        assert error is None
        tensors = dict(outputs)
        found.append((float(tensors["Y"][0, 0]), int(tensors["BATCH"][0, 0])))
    return found


def test_batches_waiting_together_run_in_one_execute_reported_once(
    shared_process: tuple[Endpoint, Endpoint],
) -> None:
    primary, peer = shared_process
    primary.execute(1, [BLOCKER])  # keeps the model busy while the next batches arrive
    time.sleep(0.15)
    peer.execute(7, [7.0, 7.5, 7.25])
    time.sleep(0.05)
    primary.execute(2, [2.0, 2.5])
    assert primary.receive()[:2] == (ipc.EXECUTED, 1)
    from_peer, from_primary = peer.receive(), primary.receive()
    assert from_peer[1] == 7 and from_primary[1] == 2
    # each sender gets its own requests' answers, in order, from one execute of 5 requests
    assert answer_rows(from_peer) == [(7.0, 5), (7.5, 5), (7.25, 5)]
    assert answer_rows(from_primary) == [(2.0, 5), (2.5, 5)]
    shares = [from_peer[3], from_primary[3]]
    assert {share[:2] for share in shares} == {(5, 5)}  # the execution: 5 rows, 5 requests
    assert sorted(share[2] for share in shares) == [False, True]  # one of them reports it


def test_batches_run_apart_when_their_rows_would_pass_max_batch_size(
    shared_process: tuple[Endpoint, Endpoint],
) -> None:
    primary, peer = shared_process
    primary.execute(3, [BLOCKER])
    time.sleep(0.15)
    peer.execute(9, [9.0, 9.5, 9.25], rows=2)  # 6 rows
    time.sleep(0.05)
    primary.execute(4, [4.0], rows=3)  # 3 more: 9 > MAX_BATCH_SIZE
    assert primary.receive()[:2] == (ipc.EXECUTED, 3)
    from_peer = peer.receive()
    assert answer_rows(from_peer) == [(9.0, 3), (9.5, 3), (9.25, 3)]
    assert from_peer[3] == (6, 3, True)
    from_primary = primary.receive()
    assert answer_rows(from_primary) == [(4.0, 1)]
    assert len(from_primary) == 3  # run alone, from the primary channel: its own execution


def test_without_dynamic_batching_each_batch_runs_alone(tmp_path: Path) -> None:
    with started(tmp_path, dynamic_batching=False) as (primary, peer):
        primary.execute(5, [BLOCKER])
        time.sleep(0.15)
        peer.execute(11, [11.0], rows=2)
        peer.execute(12, [12.0], rows=3)
        assert primary.receive()[:2] == (ipc.EXECUTED, 5)
        first, second = peer.receive(), peer.receive()
    # each its own execution, of its own rows
    assert (first[1], answer_rows(first), first[3]) == (11, [(11.0, 1)], (2, 1, True))
    assert (second[1], answer_rows(second), second[3]) == (12, [(12.0, 1)], (3, 1, True))
