"""Model control modes, hot reload under load, failed models, and the SIGTERM drain."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import (
    mlp_model,
    run_reference,
    slow_model,
    two_io_model,
    write_model,
)
from tests.support.server_process import running_server


def infer_mlp(
    client: httpclient.InferenceServerClient, x: np.ndarray, model: str = "mlp"
) -> np.ndarray:
    infer_input = httpclient.InferInput("input", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    return client.infer(model, [infer_input]).as_numpy("output")


def test_poll_mode_hot_reload_under_load(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model(seed=1))
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    expected_v1 = run_reference(tmp_path / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    with running_server(
        tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", "0.3"
    ) as server:
        stop = threading.Event()
        outcomes: list[str] = []
        versions_seen: set[str] = set()

        def load() -> None:
            client = httpclient.InferenceServerClient(server.http_url)
            while not stop.is_set():
                infer_input = httpclient.InferInput("input", [1, 16], "FP32")
                infer_input.set_data_from_numpy(x)
                try:
                    result = client.infer("mlp", [infer_input])
                    versions_seen.add(result.get_response()["model_version"])
                    outcomes.append("ok")
                except InferenceServerException as exc:
                    outcomes.append(exc.message())

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            write_model(tmp_path, "mlp", mlp_model(seed=2), version=2)  # a new version
            client = httpclient.InferenceServerClient(server.http_url)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and "2" not in versions_seen:
                time.sleep(0.1)
            assert "2" in versions_seen
            expected_v2 = run_reference(tmp_path / "mlp" / "2" / "model.onnx", {"input": x})[
                "output"
            ]
            np.testing.assert_allclose(infer_mlp(client, x), expected_v2, rtol=1e-5)
            assert not client.is_model_ready("mlp", "1")  # latest-1 policy retired v1
            # a changed file in the served version is reloaded too
            write_model(tmp_path, "mlp", mlp_model(seed=3), version=2)
            expected_v2b = run_reference(tmp_path / "mlp" / "2" / "model.onnx", {"input": x})[
                "output"
            ]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not np.allclose(
                infer_mlp(client, x), expected_v2b, rtol=1e-5
            ):
                time.sleep(0.1)
            np.testing.assert_allclose(infer_mlp(client, x), expected_v2b, rtol=1e-5)
            # a new model appears, a removed one disappears
            write_model(tmp_path, "two_io", two_io_model())
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not client.is_model_ready("two_io"):
                time.sleep(0.1)
            assert client.is_model_ready("two_io")
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        failures = [o for o in outcomes if o != "ok"]
        assert not failures, failures[:3]
        assert len(outcomes) > 50
        assert not np.allclose(expected_v1, expected_v2)
        shutil.rmtree(tmp_path / "two_io")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.is_model_ready("two_io"):
            time.sleep(0.1)
        assert not client.is_model_ready("two_io")


def test_failed_model_is_unavailable_and_others_serve(tmp_path: Path) -> None:
    write_model(tmp_path, "good", mlp_model())
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    write_model(tmp_path, "badconfig", mlp_model(), "max_batch_size: 4\nthis is not pbtxt\n")
    with running_server(tmp_path, ready=False) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not client.is_model_ready("good"):
            time.sleep(0.1)
        assert infer_mlp(client, np.zeros((2, 16), dtype=np.float32), "good").shape == (2, 4)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["good"]["state"] == "READY"
        for name in ("corrupt", "badconfig"):
            assert index[name]["state"] == "UNAVAILABLE"
            assert index[name]["reason"]
        assert "does not parse" in index["badconfig"]["reason"]
        with pytest.raises(InferenceServerException) as error:
            infer_mlp(client, np.zeros((1, 16), dtype=np.float32), "corrupt")
        assert error.value.status() == "503"
        assert not client.is_server_ready()  # strict readiness, as Triton's default


def test_explicit_mode_load_and_unload(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    write_model(tmp_path, "two_io", two_io_model())
    with running_server(
        tmp_path, "--model-control-mode", "explicit", "--load-model", "mlp"
    ) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert http.is_model_ready("mlp") and not http.is_model_ready("two_io")
        assert {"name": "two_io"} in http.get_model_repository_index()
        http.load_model("two_io")
        assert http.is_model_ready("two_io")
        grpc.unload_model("two_io")
        assert not http.is_model_ready("two_io")
        # load with a config override (JSON), as Model Analyzer does
        config = json.dumps(
            {"max_batch_size": 2, "dynamic_batching": {}, "platform": "onnxruntime_onnx"}
        )
        grpc.load_model("two_io", config=config)
        assert http.get_model_config("two_io")["max_batch_size"] == 2
        # load from files sent with the request
        model_bytes = (tmp_path / "mlp" / "1" / "model.onnx").read_bytes()
        http.load_model(
            "uploaded",
            config=json.dumps({"platform": "onnxruntime_onnx"}),
            files={"file:1/model.onnx": model_bytes},
        )
        x = np.ones((1, 16), dtype=np.float32)
        np.testing.assert_allclose(
            infer_mlp(http, x, "uploaded"), infer_mlp(http, x, "mlp"), rtol=1e-6
        )
        for bad_name in ("../mlp", "a/b", ".."):
            request = urllib.request.Request(
                f"http://{server.http_url}/v2/repository/models/{bad_name}/load",
                data=b"",
                method="POST",
            )
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(request)
            assert error.value.code in (400, 404)
            assert "error" in json.loads(error.value.read())
        with pytest.raises(InferenceServerException, match="invalid model name"):
            grpc.load_model("../../etc")
        with pytest.raises(InferenceServerException, match="no such model folder"):
            http.load_model("missing")


def pending_requests(metrics_url: str, model: str) -> int:
    with urllib.request.urlopen(metrics_url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'nv_inference_pending_request_count{{model="{model}"'):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_sigterm_drains_accepted_requests(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "slow",
        slow_model(layers=400),
        "max_batch_size: 1\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        "dynamic_batching {}\n",
    )
    x = np.ones((1, 256), dtype=np.float32)
    expected = run_reference(tmp_path / "slow" / "1" / "model.onnx", {"input": x})["output"]
    with running_server(tmp_path) as server:

        def one(_: int) -> np.ndarray:
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
            infer_input = httpclient.InferInput("input", [1, 256], "FP32")
            infer_input.set_data_from_numpy(x)
            return client.infer("slow", [infer_input]).as_numpy("output")

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(8)]
            stats_client = httpclient.InferenceServerClient(server.http_url)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until all 8 are accepted: queued or executed
                stats = stats_client.get_inference_statistics("slow")["model_stats"][0]
                if pending_requests(server.metrics_url, "slow") + stats["execution_count"] + 1 >= 8:
                    break
                time.sleep(0.005)
            server.process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        for result in results:
            np.testing.assert_allclose(result, expected, rtol=1e-5)
        assert server.process.wait(timeout=60) == 0
        assert "shutting down" in server.log()
