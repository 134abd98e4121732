"""The sequence batcher against a real Triton (the nvidia-pytriton wheel's tritonserver): the
same Python-backend accumulator (its sums kept per CORRID from the control inputs START, END,
READY, CORRID) in both repositories, the same request sequences, the same answers and errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.sequence_models import write_accumulator
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import missing_reason, running_tritonserver

pytestmark = pytest.mark.slow

MODELS = ("accumulator", "accumulator_oldest", "accumulator_idle")


def build(root: Path) -> Path:
    root.mkdir(parents=True)
    write_accumulator(root, "accumulator")
    write_accumulator(
        root,
        "accumulator_oldest",
        strategy="oldest { max_candidate_sequences: 8 max_queue_delay_microseconds: 1000 }",
    )
    write_accumulator(root, "accumulator_idle", idle_us=400_000)
    return root


@dataclass
class Pair:
    ferry: ServerProcess
    triton: ServerProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("sequence_differential")
    ferry_root, triton_root = build(root / "ferry"), build(root / "triton")
    with running_tritonserver(triton_root) as triton, running_server(ferry_root) as ferry:
        yield Pair(ferry, triton)


def client_for(server: ServerProcess, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def accumulate(
    client: Any, protocol: str, model: str, value: int, rows: int = 1, **sequence: Any
) -> tuple[str, Any]:
    """('ok', (OUTPUT, FLAGS)) or ('error', status, message)."""
    module: Any = httpclient if protocol == "http" else grpcclient
    tensor = module.InferInput("INPUT", [rows, 1], "INT32")
    tensor.set_data_from_numpy(np.full((rows, 1), value, np.int32))
    try:
        result = client.infer(model, [tensor], **sequence)
    except InferenceServerException as exc:
        return ("error", str(exc.status()), str(exc.message()))
    return ("ok", (result.as_numpy("OUTPUT").tolist(), result.as_numpy("FLAGS").tolist()))


# (sequence id, value, flags) in order; the answers (or errors) must match request by request
SCRIPT: list[tuple[Any, int, dict[str, bool]]] = [
    (10, 1, {"sequence_start": True}),
    (11, 100, {"sequence_start": True}),
    (10, 2, {}),
    (11, 200, {}),
    (12, 5, {}),  # unknown sequence without START
    (0, 5, {"sequence_start": True}),  # no correlation id
    (10, -1, {}),  # the model's own error for this request only
    (10, 3, {"sequence_end": True}),
    (10, 4, {}),  # after END the id is unknown again
    (11, 7, {"sequence_start": True}),  # a second START restarts the live sequence
    (11, 8, {"sequence_end": True}),
    (2**40 + 3, 9, {"sequence_start": True, "sequence_end": True}),
]


@pytest.mark.parametrize("model", ["accumulator", "accumulator_oldest"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scripted_sequences_answer_alike(pair: Pair, protocol: str, model: str) -> None:
    outcomes = {}
    for name, server in (("ferry", pair.ferry), ("triton", pair.triton)):
        client = client_for(server, protocol)
        outcomes[name] = [
            accumulate(client, protocol, model, value, sequence_id=sid, **flags)
            for sid, value, flags in SCRIPT
        ]
        client.close()
    assert outcomes["ferry"] == outcomes["triton"]
    assert outcomes["ferry"][3] == ("ok", ([[300]], [[0]]))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_batch_size_and_id_type_errors_alike(pair: Pair, protocol: str) -> None:
    outcomes = {}
    for name, server in (("ferry", pair.ferry), ("triton", pair.triton)):
        client = client_for(server, protocol)
        outcomes[name] = [
            accumulate(
                client, protocol, "accumulator", 1, rows=2, sequence_id=40, sequence_start=True
            ),
            accumulate(
                client, protocol, "accumulator", 1, sequence_id="forty", sequence_start=True
            ),
        ]
        client.close()
    assert outcomes["ferry"][0] == outcomes["triton"][0]
    assert outcomes["ferry"][0][0] == "error"
    # the string id on a UINT64 CORRID model: see README's differences (2.51 accepts it)
    assert outcomes["ferry"][1][0] == "error"


def test_idle_release_alike(pair: Pair) -> None:
    outcomes = {}
    for name, server in (("ferry", pair.ferry), ("triton", pair.triton)):
        client = client_for(server, "http")
        first = accumulate(
            client, "http", "accumulator_idle", 1, sequence_id=50, sequence_start=True
        )
        time.sleep(1.5)  # idle time 0.4 s
        later = accumulate(client, "http", "accumulator_idle", 1, sequence_id=50)
        outcomes[name] = [first, later]
        client.close()
    assert outcomes["ferry"] == outcomes["triton"]
    assert outcomes["ferry"][1][0] == "error"


def run_threads(server: ServerProcess, protocol: str, model: str) -> dict[int, list[Any]]:
    """16 sequences of 20 steps at once, one thread each: every running sum."""
    sums: dict[int, list[Any]] = {}

    def one(sid: int) -> None:
        client = client_for(server, protocol)
        sums[sid] = [
            accumulate(
                client,
                protocol,
                model,
                sid % 7 + step,
                sequence_id=sid,
                sequence_start=step == 0,
                sequence_end=step == 19,
            )
            for step in range(20)
        ]
        client.close()

    threads = [threading.Thread(target=one, args=(sid,)) for sid in range(300, 316)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return sums


@pytest.mark.parametrize("model", ["accumulator", "accumulator_oldest"])
def test_concurrent_sequences_answer_alike(pair: Pair, model: str) -> None:
    ferry = run_threads(pair.ferry, "grpc", model)
    triton = run_threads(pair.triton, "grpc", model)
    assert ferry == triton and len(ferry) == 16
    expected = list(np.cumsum([300 % 7 + step for step in range(20)]))
    assert [outcome[1][0][0][0] for outcome in ferry[300]] == expected


def stream_outcomes(server: ServerProcess, model: str) -> list[Any]:
    """Two sequences interleaved on one ModelStreamInfer stream, an error in between."""
    answers: list[Any] = []
    done = threading.Event()
    requests: list[tuple[int, int, dict[str, bool]]] = [
        (61, 1, {"sequence_start": True}),
        (62, 10, {"sequence_start": True}),
        (61, 2, {}),
        (63, 3, {}),  # unknown: an error in the stream, which goes on
        (62, 20, {"sequence_end": True}),
        (61, 3, {"sequence_end": True}),
    ]

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            answers.append(("error", str(error.message())))
        else:
            answers.append(("ok", result.get_response().id, result.as_numpy("OUTPUT").tolist()))
        if len(answers) == len(requests):
            done.set()

    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=callback)
    for index, (sid, value, flags) in enumerate(requests):
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.full((1, 1), value, np.int32))
        client.async_stream_infer(model, [tensor], request_id=str(index), sequence_id=sid, **flags)
        time.sleep(0.05)  # a fixed order of answers on both servers
    assert done.wait(60)
    client.stop_stream()
    client.close()
    return answers


def test_stream_answers_alike(pair: Pair) -> None:
    ferry = stream_outcomes(pair.ferry, "accumulator")
    triton = stream_outcomes(pair.triton, "accumulator")
    assert ferry == triton
    assert ("ok", "5", [[6]]) in ferry
