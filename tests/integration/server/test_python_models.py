"""Python-backend models (model.py, Triton's API) served by a real `ferry serve`, checked with the
unmodified tritonclient: answers, per-request errors, batching as one execute() list, one process
per instance, large tensors through shared memory, BLS (sync and async) and decoupled streams.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server.runtimes.python.ipc import SHM_DIR
from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.python_models import (
    AUTO_COMPLETE_PY,
    EXECUTE_RAISES_PY,
    INIT_RAISES_PY,
    NO_BATCH_CONFIG,
    WRONG_COUNT_PY,
    stream_repeat,
    write_add_sub,
    write_batch_probe,
    write_bls,
    write_bls_stream,
    write_python_model,
    write_repeat,
)
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import write_upper_model

pytestmark = pytest.mark.slow

READY_MODELS = (
    "add_sub",
    "batch_probe",
    "two_instances",
    "big",
    "upper",
    "execute_raises",
    "wrong_count",
    "auto_complete",
    "mlp",
    "bls",
    "bls_async",
    "bls_threads",
    "bls_missing",
    "repeat",
    "bls_stream",
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("python_models")
    write_add_sub(repo)
    write_batch_probe(repo, "batch_probe", delay_s=0.05)
    write_batch_probe(repo, "two_instances", delay_s=0.05, instances=2)
    write_batch_probe(repo, "big", max_batch_size=2, queue_delay_us=0, width=1 << 20)
    write_upper_model(repo, "upper")
    write_python_model(repo, "init_raises", INIT_RAISES_PY, NO_BATCH_CONFIG)
    write_python_model(repo, "execute_raises", EXECUTE_RAISES_PY, NO_BATCH_CONFIG)
    write_python_model(repo, "wrong_count", WRONG_COUNT_PY, NO_BATCH_CONFIG)
    write_python_model(repo, "auto_complete", AUTO_COMPLETE_PY, "")
    write_python_model(
        repo,
        "env_path",
        EXECUTE_RAISES_PY,
        NO_BATCH_CONFIG
        + 'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "/opt/env.tar.gz" } }\n',
    )
    write_model(repo, "mlp", mlp_model(), 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    write_bls(repo, "bls", "mlp", "input", "output")
    write_bls(repo, "bls_async", "mlp", "input", "output", mode="async")
    write_bls(repo, "bls_threads", "mlp", "input", "output", mode="threads")
    write_bls(repo, "bls_missing", "no_such_model", "input", "output")
    write_repeat(repo)
    write_bls_stream(repo)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerProcess]:
    with running_server(repository, ready=False) as process:
        client = httpclient.InferenceServerClient(process.http_url)
        deadline = time.monotonic() + 120
        while not all(client.is_model_ready(m) for m in READY_MODELS):
            assert time.monotonic() < deadline, client.get_model_repository_index()
            time.sleep(0.2)
        yield process


def http(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, concurrency=32)


def add_sub_inputs(module: object, a: np.ndarray, b: np.ndarray) -> list[object]:
    inputs = []
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        tensor = module.InferInput(name, list(array.shape), "FP32")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def probe_input(module: object, x: np.ndarray) -> list[object]:
    tensor = module.InferInput("X", list(x.shape), "FP32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(x)
    return [tensor]


def test_add_sub_answers_over_http_and_grpc(server: ServerProcess) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, np.float32)
    result = http(server).infer("add_sub", add_sub_inputs(httpclient, a, b), request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "r-7"
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    answer = grpc.infer(
        "add_sub",
        add_sub_inputs(grpcclient, a, b),
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
    )
    np.testing.assert_array_equal(answer.as_numpy("OUTPUT1"), a - b)
    assert answer.as_numpy("OUTPUT0") is None  # only what was asked for
    metadata = http(server).get_model_metadata("add_sub")
    assert metadata["platform"] == "python"


def test_an_error_response_fails_only_its_request(server: ServerProcess) -> None:
    client = http(server)
    bad = np.full((1, 4), np.nan, np.float32)
    good = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("add_sub", add_sub_inputs(httpclient, bad, good))
    assert caught.value.status() == "400"
    assert caught.value.message() == "INPUT0 must not contain NaN"
    result = client.infer("add_sub", add_sub_inputs(httpclient, good, good))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), good * 2)


def test_an_exception_in_execute_fails_that_call_with_its_message(server: ServerProcess) -> None:
    client = http(server)
    x = np.ones(4, np.float32)
    for _ in range(2):  # the instance survives and answers the next request the same way
        with pytest.raises(InferenceServerException) as caught:
            client.infer("execute_raises", add_sub_inputs(httpclient, x, x))
        assert caught.value.status() == "500"
        assert caught.value.message().startswith(
            "Failed to process the request(s) for model 'execute_raises_0', message: "
            "ValueError: execute failed on purpose\n\nAt:\n"
        )
        assert "model.py(3): execute" in caught.value.message()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer("execute_raises", add_sub_inputs(grpcclient, x, x))
    assert caught.value.status() == "StatusCode.INTERNAL"
    big = np.full((1, 4), 2e6, np.float32)
    with pytest.raises(InferenceServerException, match="ValueError: INPUT0 is too large"):
        client.infer("add_sub", add_sub_inputs(httpclient, big, big))
    assert client.is_model_ready("execute_raises") and client.is_model_ready("add_sub")


def test_a_wrong_number_of_responses_is_an_error(server: ServerProcess) -> None:
    x = np.ones(4, np.float32)
    with pytest.raises(InferenceServerException) as caught:
        http(server).infer("wrong_count", add_sub_inputs(httpclient, x, x))
    assert caught.value.status() == "500"
    assert "InferenceRequest(s) size is:1, and InferenceResponse(s) size is:0" in (
        caught.value.message()
    )


def test_initialize_failure_leaves_the_model_unavailable_with_the_reason(
    server: ServerProcess,
) -> None:
    rows = {row["name"]: row for row in http(server).get_model_repository_index()}
    assert rows["init_raises"]["state"] == "UNAVAILABLE"
    assert rows["init_raises"]["reason"].startswith(
        "Internal: RuntimeError: cannot load the weights\n\nAt:\n"
    )
    assert rows["env_path"]["state"] == "UNAVAILABLE"
    assert "EXECUTION_ENV_PATH" in rows["env_path"]["reason"]
    assert rows["add_sub"]["state"] == "READY"


def test_concurrent_requests_reach_execute_as_one_list_and_rows_never_mix(
    server: ServerProcess,
) -> None:
    client = http(server)
    xs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(24)]
    pending = [client.async_infer("batch_probe", probe_input(httpclient, x)) for x in xs]
    results = [p.get_result() for p in pending]
    answers = [(r.as_numpy("Y"), r.as_numpy("BATCH")) for r in results]
    for x, (y, _) in zip(xs, answers, strict=True):
        np.testing.assert_array_equal(y, x)  # each request gets exactly its own rows back
    sizes = [int(batch[0, 0]) for _, batch in answers]
    assert max(sizes) > 1, sizes  # several requests were handed to one execute() call
    stats = client.get_inference_statistics("batch_probe")["model_stats"][0]
    assert stats["execution_count"] < stats["inference_stats"]["success"]["count"]


def test_each_instance_is_its_own_process(server: ServerProcess) -> None:
    client = http(server)
    pending = [
        client.async_infer("two_instances", probe_input(httpclient, np.full((1, 4), i, np.float32)))
        for i in range(32)
    ]
    pids = {int(p.get_result().as_numpy("PID")[0, 0]) for p in pending}
    assert len(pids) == 2
    assert server.process.pid not in pids


def test_large_tensors_cross_by_shared_memory_and_leave_nothing_behind(
    server: ServerProcess,
) -> None:
    x = np.random.default_rng(0).standard_normal((2, 1 << 20)).astype(np.float32)  # 8 MiB
    result = http(server).infer("big", probe_input(httpclient, x))
    np.testing.assert_array_equal(result.as_numpy("Y"), x)
    assert not list(SHM_DIR.glob("ferry-py-*"))


def test_bytes_tensors_are_object_arrays(server: ServerProcess) -> None:
    text = np.array([[b"hello"], [b"ferry"]], dtype=np.object_)
    tensor = httpclient.InferInput("text", [2, 1], "BYTES")
    tensor.set_data_from_numpy(text)
    result = http(server).infer("upper", [tensor])
    assert result.as_numpy("upper").tolist() == [[b"HELLO"], [b"FERRY"]]
    assert result.as_numpy("length").tolist() == [[5], [5]]


def test_auto_complete_config_fills_the_config(server: ServerProcess) -> None:
    config = http(server).get_model_config("auto_complete")
    assert config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["X"]
    x = np.ones((2, 3), np.float32)
    tensor = httpclient.InferInput("X", [2, 3], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(
        http(server).infer("auto_complete", [tensor]).as_numpy("Y"), x * 3
    )


@pytest.mark.parametrize("model", ["bls", "bls_async", "bls_threads"])
def test_bls_calls_another_model_through_its_scheduler(
    server: ServerProcess, repository: Path, model: str
) -> None:
    client = http(server)
    before = client.get_inference_statistics("mlp")["model_stats"][0]["inference_count"]
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT", [3, 16], "FP32")
    tensor.set_data_from_numpy(x)
    y = client.infer(model, [tensor]).as_numpy("OUTPUT")
    expected = run_reference(repository / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    after = client.get_inference_statistics("mlp")["model_stats"][0]["inference_count"]
    assert after == before + 3  # the call went through mlp's own statistics


def test_bls_errors_reach_the_model_as_error_responses(server: ServerProcess) -> None:
    tensor = httpclient.InferInput("INPUT", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        http(server).infer("bls_missing", [tensor])
    assert caught.value.message() == (
        "BLS call failed: Model no_such_model - Error when running inference: Failed for "
        "execute the inference request. Model 'no_such_model' is not ready."
    )


def test_bls_to_a_decoupled_model_iterates_its_responses(server: ServerProcess) -> None:
    client = http(server)
    for count, values in ((3, [0, 1, 2]), (5, [0, 1, -1, 3, 4]), (0, [])):
        tensor = httpclient.InferInput("N", [1], "INT32")
        tensor.set_data_from_numpy(np.array([count], np.int32))
        result = client.infer("bls_stream", [tensor])
        assert result.as_numpy("VALUES").tolist() == values
        assert result.as_numpy("RESPONSES").tolist() == [count + 1]  # + the final flag alone


def test_a_decoupled_model_streams_its_responses(server: ServerProcess) -> None:
    assert stream_repeat(server.grpc_url, 3, empty_final=True) == [
        ("ok", 0, False),
        ("ok", 1, False),
        ("ok", 2, False),
        ("ok", None, True),
    ]
    assert stream_repeat(server.grpc_url, 5, empty_final=True) == [
        ("ok", 0, False),
        ("ok", 1, False),
        ("error", "response 2 of 5 fails"),
        ("ok", 3, False),
        ("ok", 4, False),
        ("ok", None, True),
    ]
    assert stream_repeat(server.grpc_url, 0, empty_final=True) == [("ok", None, True)]
    assert stream_repeat(server.grpc_url, 2, empty_final=False) == [
        ("ok", 0, False),
        ("ok", 1, False),
    ]


def test_a_decoupled_model_refuses_unary_calls(server: ServerProcess) -> None:
    tensor = httpclient.InferInput("N", [1], "INT32")
    tensor.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as caught:
        http(server).infer("repeat", [tensor])
    assert caught.value.status() == "501"
    assert caught.value.message() == (
        "HTTP end point doesn't support models with decoupled transaction policy"
    )
    grpc_tensor = grpcclient.InferInput("N", [1], "INT32")
    grpc_tensor.set_data_from_numpy(np.array([2], np.int32))
    with pytest.raises(InferenceServerException) as caught:
        grpcclient.InferenceServerClient(server.grpc_url).infer("repeat", [grpc_tensor])
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (its children, theirs, ...), from /proc."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        # each thread's children are listed under that thread (a worker starts its model
        # processes from a loading thread)
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError):  # a process or thread that just ended
                kids = [int(p) for p in children.read_text().split()]
                found.extend(kids)
                frontier.extend(kids)
    return found


def test_model_processes_are_children_of_the_server(server: ServerProcess) -> None:
    """In the server's process tree (with --workers N, below the worker that runs them)."""
    if not Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").exists():
        pytest.skip("no /proc children file here")
    pids = descendants(server.process.pid)
    commands = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    stubs = [c for c in commands if b"server.runtimes.python.stub" in c]
    assert len(stubs) >= len(READY_MODELS) - 1  # every Python instance (mlp is ONNX)
    assert os.getpid() not in pids
