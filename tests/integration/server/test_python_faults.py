"""Python model instances fail alone: a process killed under load fails only its in-flight
requests (clearly) and is restarted while the server stays ready; a changed model.py is reloaded
in poll mode; SIGTERM drains Python models in flight, runs `finalize`, and loses nothing.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.python_models import killed_under_load, write_batch_probe, write_python_model
from tests.support.server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

SCALE_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils

FACTOR = {factor}


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * FACTOR)])
            for r in requests]
"""
SCALE_CONFIG = """max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [2] }]
"""


def probe(client: httpclient.InferenceServerClient, model: str, value: float) -> dict[str, object]:
    x = np.full((1, 4), value, np.float32)
    tensor = httpclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor])
    return {"Y": result.as_numpy("Y"), "PID": int(result.as_numpy("PID")[0, 0])}


def wait_model_ready(server: ServerProcess, name: str, timeout: float = 60.0) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    deadline = time.monotonic() + timeout
    while not client.is_model_ready(name):
        assert time.monotonic() < deadline, client.get_model_repository_index()
        time.sleep(0.1)


def test_a_killed_instance_fails_its_requests_clearly_and_is_restarted(tmp_path: Path) -> None:
    write_batch_probe(tmp_path, "slow", delay_s=0.3, queue_delay_us=0, max_batch_size=8)
    with running_server(tmp_path) as server:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=16)
        first_pid = probe(client, "slow", 1.0)["PID"]
        assert isinstance(first_pid, int)
        errors: list[str] = []
        successes: list[int] = []

        def load(stop: threading.Event) -> None:
            own = httpclient.InferenceServerClient(server.http_url)
            value = 0.0
            while not stop.is_set():
                value += 1
                try:
                    answer = probe(own, "slow", value)
                except InferenceServerException as exc:
                    errors.append(f"{exc.status()} {exc.message()}")
                else:
                    np.testing.assert_array_equal(answer["Y"], np.full((1, 4), value))
                    successes.append(int(answer["PID"]))  # type: ignore[call-overload]

        with killed_under_load(first_pid, load, threads=4, after_s=0.5):
            deadline = time.monotonic() + 60
            while not any(pid != first_pid for pid in successes):
                assert time.monotonic() < deadline, (errors, server.log()[-3000:])
                assert client.is_server_ready()  # the server never stops being ready
                time.sleep(0.05)
        assert errors, "the requests in flight at the kill must fail"
        for error in errors:
            assert error.startswith(f"500 Python model instance 'slow_0' (pid {first_pid}) ")
            # (under --workers N, the worker that is not the model's owner only sees it go)
            assert error.endswith(
                (
                    "was killed by SIGKILL; its in-flight requests failed and it is being "
                    "restarted",
                    "went away in the model's owner worker; its in-flight requests failed "
                    "and it is being restarted",
                )
            )
        new_pid = probe(client, "slow", 2.0)["PID"]
        assert new_pid != first_pid
        assert client.is_server_ready()


def test_a_changed_model_py_is_reloaded_in_poll_mode(tmp_path: Path) -> None:
    model_dir = write_python_model(tmp_path, "scale", SCALE_PY.format(factor=2), SCALE_CONFIG)
    with running_server(
        tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", "0.5"
    ) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("X", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
        assert client.infer("scale", [tensor]).as_numpy("Y").tolist() == [[2.0, 2.0]]
        (model_dir / "1" / "model.py").write_text(SCALE_PY.format(factor=5))
        deadline = time.monotonic() + 60
        while client.infer("scale", [tensor]).as_numpy("Y").tolist() != [[5.0, 5.0]]:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        assert client.is_server_ready()


def test_an_unchanged_model_py_is_not_reloaded_in_poll_mode(tmp_path: Path) -> None:
    """Importing model.py writes its bytecode cache into the version folder; that is no change
    of the model: polls after the load keep the same instance."""
    model_dir = write_batch_probe(tmp_path, "probe", queue_delay_us=0)
    writes_bytecode = {"PYTHONDONTWRITEBYTECODE": ""}  # as Python does unless told otherwise
    with running_server(
        tmp_path,
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.2",
        env=writes_bytecode,
    ) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        first_pid = int(client.infer("probe", [tensor]).as_numpy("PID")[0, 0])
        assert list((model_dir / "1").glob("__pycache__/*.pyc"))  # the cache is there
        time.sleep(1.5)  # several polls
        assert int(client.infer("probe", [tensor]).as_numpy("PID")[0, 0]) == first_pid
        assert "reload" not in server.log().lower()


def test_sigterm_drains_python_models_in_flight_and_runs_finalize(tmp_path: Path) -> None:
    repository, markers = tmp_path / "repo", tmp_path / "finalized"
    markers.mkdir()
    write_batch_probe(repository, "slow", delay_s=1.0, queue_delay_us=0, max_batch_size=2)
    with running_server(repository, env={"FERRY_TEST_FINALIZE_DIR": str(markers)}) as server:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
        pending = []
        for i in range(6):
            tensor = httpclient.InferInput("X", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), i, np.float32))
            pending.append(client.async_infer("slow", [tensor]))
        time.sleep(0.3)  # accepted and queued or executing
        server.process.send_signal(signal.SIGTERM)
        results = [p.get_result() for p in pending]  # every accepted request completes
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result.as_numpy("Y"), np.full((1, 4), i))
        assert server.process.wait(timeout=60) == 0
    finalized = list(markers.iterdir())
    assert len(finalized) == 1 and finalized[0].name.startswith("slow_0.")
    assert finalized[0].read_text() == "finalized"
