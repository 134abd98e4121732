"""`ferry bench` (the real CLI) against a real `ferry serve` and a real NVIDIA `tritonserver`.

Proof that its counts are right: after a run, the server's own statistics (read with the official
tritonclient) hold exactly the requests ferry bench says it completed, level by level.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import (
    TritonServer,
    missing_reason,
    running_tritonserver,
    write_linear_model,
)

pytestmark = pytest.mark.slow

MLP_CONFIG = """max_batch_size: 8
input [{ name: "input" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { }
"""
DYNAMIC_CONFIG = """max_batch_size: 4
input [{ name: "input" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [-1] }]
"""
QUICK = ("--duration", "0.9", "--warmup", "0.3", "--max-trials", "3")


def relu_model() -> onnx.ModelProto:
    """relu(x) with x [batch, n]: every dim but none fixed (needs --shape)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ferry_bench(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def served_requests(http_url: str, model: str) -> tuple[int, int, int]:
    """(successes, failures, inferences) in the server's statistics, all versions."""
    client = httpclient.InferenceServerClient(http_url)
    stats = client.get_inference_statistics(model)["model_stats"]
    return (
        sum(int(s["inference_stats"]["success"]["count"]) for s in stats),
        sum(int(s["inference_stats"]["fail"]["count"]) for s in stats),
        sum(int(s["inference_count"]) for s in stats),
    )


def run_and_compare(
    server_http_url: str, model: str, url: str, tmp_path: Path, *args: str, succeed: bool = True
) -> dict[str, Any]:
    """Run ferry bench; its completed requests must equal the growth of the server's counts."""
    before = served_requests(server_http_url, model)
    report = tmp_path / "report.json"
    ferry_bench(model, "--url", url, *QUICK, "--report", str(report), *args)
    after = served_requests(server_http_url, model)
    result: dict[str, Any] = json.loads(report.read_text())
    succeeded = sum(level["totals"]["succeeded"] for level in result["levels"])
    failed = sum(
        level["totals"]["completed"] - level["totals"]["succeeded"] for level in result["levels"]
    )
    assert (succeeded > 0) == succeed
    assert (after[0] - before[0]) + (after[1] - before[1]) == succeeded + failed
    if succeed:
        assert after[0] - before[0] == succeeded
        assert after[1] - before[1] == failed
        assert after[2] - before[2] == succeeded * result["batch_size"]
    for level in result["levels"]:
        totals = level["totals"]
        assert totals["sent"] == totals["completed"]
        if not succeed:
            continue
        # the per-level server delta (statistics read before and after the level) agrees too
        assert totals["server_success_count"] == totals["succeeded"]
        latency = level["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
        assert level["requests"] > 0 and level["throughput_infer_s"] > 0
    return result


@pytest.fixture(scope="module")
def ferry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("bench-repo")
    write_model(repo, "mlp", mlp_model(), MLP_CONFIG)
    write_model(repo, "dynamic", relu_model(), DYNAMIC_CONFIG)
    with running_server(repo, "--allow-client-shm", "--no-drift") as server:
        yield server


@pytest.mark.parametrize(
    "protocol,extra",
    [
        ("http", ()),
        ("http", ("--json",)),
        ("grpc", ()),
        ("http", ("--shared-memory", "system")),
        ("grpc", ("--shared-memory", "system")),
    ],
)
def test_counts_match_ferry_statistics(
    ferry_server: ServerProcess, tmp_path: Path, protocol: str, extra: tuple[str, ...]
) -> None:
    url = ferry_server.grpc_url if protocol == "grpc" else ferry_server.http_url
    result = run_and_compare(
        ferry_server.http_url,
        "mlp",
        url,
        tmp_path,
        "--protocol",
        protocol,
        "--concurrency",
        "1,4",
        *extra,
    )
    assert [level["concurrency"] for level in result["levels"]] == [1, 4]
    server = result["levels"][1]["server"]
    assert server is not None and server["success_count"] > 0
    for key in ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us"):
        assert server[key] >= 0
    assert server["compute_infer_us"] > 0


def test_request_rate_batch_size_and_data_file(ferry_server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, input=np.random.default_rng(1).random((10, 16)).astype(np.float32))
    result = run_and_compare(
        ferry_server.http_url,
        "mlp",
        ferry_server.http_url,
        tmp_path,
        "--request-rate",
        "150",
        "--batch-size",
        "3",
        "--input-data",
        str(data),
    )
    level = result["levels"][0]
    assert level["request_rate"] == 150
    assert result["inputs"]["input"]["shape"] == [3, 16]
    # a constant 150/s for about a second: the count is near 150/s x the measured time
    assert 0.5 * 150 * level["measured_s"] <= level["requests"] <= 1.5 * 150 * level["measured_s"]


def test_dynamic_dims_need_shape(ferry_server: ServerProcess, tmp_path: Path) -> None:
    refused = ferry_bench("dynamic", "--url", ferry_server.http_url, *QUICK, check=False)
    assert refused.returncode == 2
    assert "--shape input:DIMS" in refused.stderr
    run_and_compare(
        ferry_server.http_url,
        "dynamic",
        ferry_server.http_url,
        tmp_path,
        "--shape",
        "input:16",
        "--concurrency",
        "2",
    )


def test_outputs_csv_and_plots(ferry_server: ServerProcess, tmp_path: Path) -> None:
    csv_path, png_path, svg_path = tmp_path / "r.csv", tmp_path / "r.png", tmp_path / "r.svg"
    result = ferry_bench(
        "mlp",
        "--url",
        ferry_server.http_url,
        *QUICK,
        "--concurrency",
        "1,2",
        "--csv",
        str(csv_path),
        "--plot",
        str(png_path),
    )
    assert "ferry bench mlp" in result.stdout and "concurrency 2" in result.stdout
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("Concurrency,Inferences/Second,")
    assert len(lines) == 3
    assert png_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    ferry_bench("mlp", "--url", ferry_server.http_url, *QUICK, "--plot", str(svg_path))
    assert svg_path.read_text().startswith("<svg")


def test_clear_errors(ferry_server: ServerProcess) -> None:
    unknown = ferry_bench("nope", "--url", ferry_server.http_url, *QUICK, check=False)
    assert unknown.returncode == 2 and "model metadata for 'nope'" in unknown.stderr
    both = ferry_bench(
        "mlp",
        "--url",
        ferry_server.http_url,
        "--concurrency",
        "1",
        "--request-rate",
        "5",
        check=False,
    )
    assert both.returncode == 2 and "not both" in both.stderr
    too_big = ferry_bench(
        "mlp", "--url", ferry_server.http_url, "--batch-size", "9", *QUICK, check=False
    )
    assert too_big.returncode == 2 and "max_batch_size 8" in too_big.stderr


# --- against a real NVIDIA Triton -------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    repo = tmp_path_factory.mktemp("triton-bench")
    write_linear_model(repo, "linear", max_batch_size=16)
    with running_tritonserver(repo) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_counts_match_triton_statistics(
    triton: TritonServer, tmp_path: Path, protocol: str
) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    result = run_and_compare(
        triton.http_url, "linear", url, tmp_path, "--protocol", protocol, "--concurrency", "1,3"
    )
    server = result["levels"][-1]["server"]
    assert server is not None and server["compute_infer_us"] > 0


def test_errors_by_status_against_triton(triton: TritonServer, tmp_path: Path) -> None:
    """The linear model refuses NaN with INVALID_ARG: every request is a counted 400. (Triton
    counts a python-backend error response as a success in its statistics, so only the total
    is compared.)"""
    data = tmp_path / "nan.npz"
    np.savez(data, x=np.full((4, 4), np.nan, dtype=np.float32))
    result = run_and_compare(
        triton.http_url,
        "linear",
        triton.http_url,
        tmp_path,
        "--input-data",
        str(data),
        succeed=False,
    )
    level = result["levels"][0]
    assert set(level["totals"]["by_status"]) == {"HTTP 400"}
    assert level["errors"]["HTTP 400"] > 0
    assert "NaN" in level["error_messages"]["HTTP 400"]


ECHO_MODEL_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]
            )
            for r in requests
        ]
"""


def test_sequence_model_against_triton(tmp_path: Path) -> None:
    """Triton refuses a sequence model's requests without a sequence id: every request
    succeeding shows ferry bench sends sequence_id/start/end as Triton expects."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    repo = tmp_path / "sequence-repo"
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text(ECHO_MODEL_PY)
    (repo / "echo" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 4\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]\n'
        "sequence_batching { max_sequence_idle_microseconds: 5000000 }\n"
        "instance_group [{ kind: KIND_CPU count: 1 }]\n"
    )
    with running_tritonserver(repo) as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            result = run_and_compare(
                server.http_url, "echo", url, tmp_path, "--protocol", protocol,
                "--concurrency", "2", "--sequence-length", "3",
            )  # fmt: skip
            assert result["levels"][0]["errors"] == {}
