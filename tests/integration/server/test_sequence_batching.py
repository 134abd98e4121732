"""Stateful models over the wire: `ferry serve` with the sequence batcher, tritonclient's
sequence parameters over HTTP, gRPC and ModelStreamInfer, state kept by the server."""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.sequence_models import (
    INPUT_SIZE,
    run_alone_in_onnxruntime,
    write_rnn_cell,
    write_state_sum,
)
from tests.support.server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

SEQUENCES = 32
STEPS = 50
MODELS = {
    # 2 instances x 16 slots
    "rnn_direct": {"strategy": "direct { }", "max_batch_size": 16, "instances": 2},
    # one instance, 32 candidate sequences, batches of up to 16
    "rnn_oldest": {
        "strategy": "oldest { max_candidate_sequences: 32 max_queue_delay_microseconds: 2000 }",
        "max_batch_size": 16,
    },
    "rnn_idle": {"idle_us": 300_000, "max_batch_size": 2},
    "rnn_string": {"corrid_type": "TYPE_STRING", "max_batch_size": 4},
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sequences")
    for name, options in MODELS.items():
        write_rnn_cell(root, name, **options)
    write_state_sum(root)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    with running_server(repository) as process:
        yield process


def inputs_for(module: Any, x: np.ndarray) -> list[Any]:
    tensor = module.InferInput("INPUT", [1, INPUT_SIZE], "FP32")
    tensor.set_data_from_numpy(x.reshape(1, INPUT_SIZE).astype(np.float32))
    return [tensor]


def run_unary(module: Any, url: str, model: str, sid: int, steps: np.ndarray) -> np.ndarray:
    client = module.InferenceServerClient(url)
    outputs = []
    for t, x in enumerate(steps):
        time.sleep(random.random() * 0.003)  # random interleaving with the other threads
        result = client.infer(
            model,
            inputs_for(module, x),
            sequence_id=sid,
            sequence_start=t == 0,
            sequence_end=t == len(steps) - 1,
        )
        outputs.append(result.as_numpy("OUTPUT")[0])
    client.close()
    return np.stack(outputs)


def run_stream(url: str, model: str, sequences: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Several sequences on one ModelStreamInfer stream, their steps interleaved at random and
    sent without waiting for answers (the stream keeps each sequence's order)."""
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    cursor = dict.fromkeys(sequences, 0)
    order = [sid for sid, steps in sequences.items() for _ in steps]
    random.shuffle(order)
    for sid in order:
        t = cursor[sid]
        cursor[sid] += 1
        client.async_stream_infer(
            model,
            inputs_for(grpcclient, sequences[sid][t]),
            request_id=f"{sid}:{t}",
            sequence_id=sid,
            sequence_start=t == 0,
            sequence_end=t == len(sequences[sid]) - 1,
        )
    got: dict[int, dict[int, np.ndarray]] = {sid: {} for sid in sequences}
    for _ in order:
        result, error = answers.get(timeout=60)
        assert error is None, error
        sid, t = map(int, result.get_response().id.split(":"))
        got[sid][t] = result.as_numpy("OUTPUT")[0]
    client.stop_stream()
    client.close()
    return {sid: np.stack([steps[t] for t in range(len(steps))]) for sid, steps in got.items()}


def parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors[0]
    return results


@pytest.mark.parametrize("model", ["rnn_direct", "rnn_oldest"])
def test_interleaved_sequences_over_every_protocol_each_equal_their_run_alone(
    server: ServerProcess, repository: Path, model: str
) -> None:
    rng = np.random.default_rng(7)
    base = 1000 if model == "rnn_direct" else 2000
    sequences = {
        base + i: rng.standard_normal((STEPS, INPUT_SIZE)).astype(np.float32)
        for i in range(SEQUENCES)
    }
    ids = list(sequences)
    http_ids, grpc_ids, stream_ids = ids[:12], ids[12:24], ids[24:]
    calls: list[Callable[[], Any]] = [
        partial(run_unary, httpclient, server.http_url, model, sid, sequences[sid])
        for sid in http_ids
    ]
    calls += [
        partial(run_unary, grpcclient, server.grpc_url, model, sid, sequences[sid])
        for sid in grpc_ids
    ]
    calls += [
        partial(run_stream, server.grpc_url, model, {s: sequences[s] for s in stream_ids[i::2]})
        for i in range(2)
    ]
    results = parallel(calls)
    got: dict[int, np.ndarray] = dict(zip(http_ids + grpc_ids, results[:24], strict=True))
    for streamed in results[24:]:
        got.update(streamed)
    model_path = repository / model / "1" / "model.onnx"
    for sid, steps in sequences.items():
        alone = run_alone_in_onnxruntime(model_path, steps, sid)
        np.testing.assert_allclose(got[sid], alone, rtol=1e-5, atol=1e-6, err_msg=str(sid))
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics(model)
    entry = stats["model_stats"][0]
    assert entry["inference_count"] >= SEQUENCES * STEPS
    # batches really formed: fewer executions than requests, and some of more than one row
    assert entry["execution_count"] < entry["inference_count"]
    assert max(b["batch_size"] for b in entry["batch_stats"]) > 1


def status_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), str(caught.value.message())


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_error_cases_get_tritons_status_and_message(server: ServerProcess, module: Any) -> None:
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url)
    bad = "400" if module is httpclient else "StatusCode.INVALID_ARGUMENT"

    def infer(model: str = "rnn_direct", rows: int = 1, **sequence: Any) -> Any:
        tensor = module.InferInput("INPUT", [rows, INPUT_SIZE], "FP32")
        tensor.set_data_from_numpy(np.ones((rows, INPUT_SIZE), np.float32))
        return client.infer(model, [tensor], **sequence)

    assert status_of(lambda: infer(sequence_id=555)) == (
        bad,
        "inference request for sequence 555 to model 'rnn_direct' must specify the START flag "
        "on the first request of the sequence",
    )
    assert status_of(lambda: infer(sequence_start=True)) == (
        bad,
        "inference request to model 'rnn_direct' must specify a non-zero or non-empty "
        "correlation ID",
    )
    assert status_of(lambda: infer(rows=2, sequence_id=556, sequence_start=True)) == (
        bad,
        "inference request to model 'rnn_direct' must specify batch-size 1 due to requirements "
        "of sequence batcher",
    )
    assert status_of(lambda: infer(sequence_id="text", sequence_start=True)) == (
        bad,
        "sequence batching control 'CORRID' data-type is 'BYTES', but model 'rnn_direct' "
        "expects 'UINT64'",
    )
    assert status_of(lambda: infer("rnn_string", sequence_id=5, sequence_start=True)) == (
        bad,
        "sequence batching control 'CORRID' data-type is 'UINT64', but model 'rnn_string' "
        "expects 'BYTES'",
    )
    # a string id on a TYPE_STRING CORRID model; after END the id is unknown again
    result = infer("rnn_string", sequence_id="user-7", sequence_start=True, sequence_end=True)
    assert result.as_numpy("CORRID_OUT").reshape(-1)[0] == b"user-7"
    assert status_of(lambda: infer("rnn_string", sequence_id="user-7"))[0] == bad
    # a second START on a live id restarts the sequence (Triton logs the conflict)
    infer(sequence_id=557, sequence_start=True)
    again = infer(sequence_id=557, sequence_start=True, sequence_end=True)
    assert int(again.as_numpy("FLAGS")[0, 0]) == 7
    client.close()


def test_idle_sequence_is_released(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones(INPUT_SIZE, np.float32)
    client.infer("rnn_idle", inputs_for(httpclient, x), sequence_id=31, sequence_start=True)
    time.sleep(1.0)  # idle time 0.3 s
    status, message = status_of(
        lambda: client.infer("rnn_idle", inputs_for(httpclient, x), sequence_id=31)
    )
    assert status == "400" and "must specify the START flag" in message
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'ferry_sequence_idle_releases_total{model="rnn_idle",version="1"} 1' in metrics
    assert 'ferry_sequence_active{model="rnn_idle",version="1"} 0' in metrics


def test_sequence_metrics(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones(INPUT_SIZE, np.float32)

    def sample(name: str) -> float:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        line = next(
            line
            for line in text.splitlines()
            if line.startswith(f'{name}{{model="rnn_oldest",version="1"}}')
        )
        return float(line.split()[-1])

    before = {n: sample(n) for n in ("ferry_sequence_starts_total", "ferry_sequence_ends_total")}
    client.infer("rnn_oldest", inputs_for(httpclient, x), sequence_id=77, sequence_start=True)
    assert sample("ferry_sequence_active") == 1
    client.infer("rnn_oldest", inputs_for(httpclient, x), sequence_id=77, sequence_end=True)
    assert sample("ferry_sequence_active") == 0
    assert sample("ferry_sequence_starts_total") == before["ferry_sequence_starts_total"] + 1
    assert sample("ferry_sequence_ends_total") == before["ferry_sequence_ends_total"] + 1


def test_sigterm_serves_live_sequences_and_refuses_new_ones(tmp_path: Path) -> None:
    write_rnn_cell(tmp_path, "rnn", idle_us=30_000_000)
    x = np.ones(INPUT_SIZE, np.float32)
    with running_server(tmp_path, "--exit-timeout-secs", "30") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        client.infer("rnn", inputs_for(httpclient, x), sequence_id=1, sequence_start=True)
        server.process.send_signal(15)
        time.sleep(0.5)
        assert status_of(
            lambda: client.infer(
                "rnn", inputs_for(httpclient, x), sequence_id=2, sequence_start=True
            )
        ) == (
            "503",
            "Server is stopping, scheduler for model has stopped accepting new inference requests",
        )
        # the live sequence goes on until its END; then the server exits
        client.infer("rnn", inputs_for(httpclient, x), sequence_id=1)
        assert server.process.poll() is None
        client.infer("rnn", inputs_for(httpclient, x), sequence_id=1, sequence_end=True)
        assert server.process.wait(30) == 0


def test_reload_and_unload_drop_live_sequences(tmp_path: Path) -> None:
    write_rnn_cell(tmp_path, "rnn")
    x = np.ones(INPUT_SIZE, np.float32)
    args = ("--model-control-mode", "explicit", "--load-model", "rnn")
    with running_server(tmp_path, *args) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        client.infer("rnn", inputs_for(httpclient, x), sequence_id=1, sequence_start=True)
        config = client.get_model_config("rnn")
        config["sequence_batching"]["max_sequence_idle_microseconds"] = 5_000_000
        client.load_model("rnn", config=json.dumps(config))  # a new scheduler
        status, message = status_of(
            lambda: client.infer("rnn", inputs_for(httpclient, x), sequence_id=1)
        )
        assert status == "400" and "must specify the START flag" in message
        client.infer("rnn", inputs_for(httpclient, x), sequence_id=2, sequence_start=True)
        client.unload_model("rnn")
        status, _ = status_of(lambda: client.infer("rnn", inputs_for(httpclient, x), sequence_id=2))
        assert status in ("400", "404", "503")


def test_python_model_with_implicit_state_from_a_data_file(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def add(sid: int, value: int, **flags: bool) -> int:
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[value]], np.int32))
        result = client.infer("state_sum", [tensor], sequence_id=sid, **flags)
        return int(result.as_numpy("OUTPUT")[0, 0])

    # two interleaved sequences, each from the initial state 10 read from initial_state/ten
    assert add(1, 1, sequence_start=True) == 11
    assert add(2, 5, sequence_start=True) == 15
    assert add(1, 2) == 13
    assert add(2, 5, sequence_end=True) == 20
    assert add(1, 3, sequence_end=True) == 16
    client.close()
