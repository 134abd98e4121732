"""The response cache of a real `ferry serve`: the same request sequence as a real tritonserver
(python-backend twins) gives the same hits, misses and statistics, and the same nv_cache_*
metrics; decoupled and sequence models that enable it are refused as Triton refuses them; the
same for Python models and an ensemble cached at its top level, with the same repository served
by both; the cache stays within its size; hits are answered while the model's queue is full;
models without `response_cache` never use it."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.concurrent_clients import metric_total, model_statistics
from tests.support.onnx_models import mlp_model, slow_model, write_model
from tests.support.python_models import write_ensemble, write_repeat
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import missing_reason, running_tritonserver, write_linear_model

CACHE = "response_cache { enable: true }\n"
DECOUPLED = "model_transaction_policy { decoupled: true }\n"
SEQUENCE = "sequence_batching { max_sequence_idle_microseconds: 5000000 }\n"
CACHE_FLAGS = ("--cache-config", "local,size=1048576")


def infer(
    server: ServerProcess, model: str, x: np.ndarray, name: str = "x", output: str = "y"
) -> np.ndarray:
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result: np.ndarray = client.infer(model, [tensor]).as_numpy(output)
    return result


def counts(server: ServerProcess, model: str) -> dict[str, int]:
    stats = model_statistics(server, model)
    found = {key: stats[key] for key in ("inference_count", "execution_count")}
    for key in ("success", "queue", "compute_infer", "cache_hit", "cache_miss"):
        found[key] = stats["inference_stats"][key]["count"]
    return found


def run_sequence(server: ServerProcess) -> dict[str, object]:
    """A, A, B (2 rows), A, B, C to the cached model; A, A to the other one."""
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    c = a + 1
    answers = [infer(server, "cached", x) for x in (a, a, b, a, b, c)]
    for x in (a, a):
        infer(server, "plain", x)
    assert np.array_equal(answers[0], answers[1]) and np.array_equal(answers[0], answers[3])
    assert np.array_equal(answers[2], answers[4])
    return {
        "cached": counts(server, "cached"),
        "plain": counts(server, "plain"),
        "metrics": {
            name: metric_total(server, name, "cached")
            for name in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model")
        },
        "plain metrics": metric_total(server, "nv_cache_num_hits_per_model", "plain"),
    }


def index(server: ServerProcess) -> dict[str, dict[str, str]]:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request) as response:
        return {row["name"]: row for row in json.loads(response.read())}


def write_twins(repo: Path, writer: Callable[[Path, str, str], None]) -> None:
    writer(repo, "cached", CACHE)
    writer(repo, "plain", "")
    writer(repo, "decoupled_cache", CACHE + DECOUPLED)
    writer(repo, "sequence_cache", CACHE + SEQUENCE)


def triton_model(repo: Path, name: str, extra: str) -> None:
    model_dir = write_linear_model(repo, name, max_batch_size=8)
    with (model_dir / "config.pbtxt").open("a") as config:
        config.write(extra)


def ferry_model(repo: Path, name: str, extra: str) -> None:
    model = mlp_model(4, 8, 3, input_name="x", output_name="y")
    write_model(repo, name, model, "max_batch_size: 8\n" + extra)


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_hits_misses_statistics_and_metrics_match_triton(tmp_path: Path) -> None:
    write_twins(tmp_path / "triton", triton_model)
    write_twins(tmp_path / "ferry", ferry_model)
    with running_tritonserver(
        tmp_path / "triton",
        *CACHE_FLAGS,
        "--exit-on-error=false",
        "--strict-readiness=false",
        ready=False,
    ) as triton:
        theirs = run_sequence(triton)
        their_index = index(triton)
        their_log = triton.log()
    with running_server(tmp_path / "ferry", *CACHE_FLAGS, "--no-strict-readiness") as ferry:
        ours = run_sequence(ferry)
        our_index = index(ferry)
    assert ours == theirs
    assert ours["cached"] == {
        "inference_count": 4,  # a, b (2 rows), c: hits are not inferences
        "execution_count": 3,
        "success": 6,  # hits are successes
        "queue": 6,
        "compute_infer": 3,
        "cache_hit": 3,
        "cache_miss": 3,
    }
    # decoupled and sequence models that enable the cache do not load: Triton lists them without
    # a state and logs why, ferry lists them UNAVAILABLE with the same words
    for name, refusal in (
        ("decoupled_cache", "with 'decoupled' transaction policy. Please disable"),
        ("sequence_cache", "with sequence batching scheduler. Please disable"),
    ):
        refusal = f"Response Cache does not currently support model {name} {refusal}"
        assert their_index[name].get("state") != "READY" and refusal in their_log
        assert our_index[name]["state"] == "UNAVAILABLE"
        assert refusal in our_index[name]["reason"]


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_without_cache_config_nothing_is_cached_like_triton(tmp_path: Path) -> None:
    write_twins(tmp_path / "triton", triton_model)
    write_twins(tmp_path / "ferry", ferry_model)
    flags = ("--exit-on-error=false", "--strict-readiness=false")
    with running_tritonserver(tmp_path / "triton", *flags, ready=False) as triton:
        theirs = run_sequence(triton)
    with running_server(tmp_path / "ferry", "--no-strict-readiness") as ferry:
        ours = run_sequence(ferry)
    assert ours == theirs
    assert ours["cached"]["cache_hit"] == 0 and ours["cached"]["execution_count"] == 6


ENSEMBLE_OVER_LINEAR = """max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
ensemble_scheduling { step [{ model_name: "linear" model_version: -1
  input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }] }
"""


def write_python_repository(repo: Path) -> None:
    """One repository both servers load: a cached Python model, an ensemble cached at its top
    level over an uncached Python model, and a decoupled Python model that enables the cache."""
    write_linear_model(repo, "linear", max_batch_size=8)
    triton_model(repo, "py_cached", CACHE)
    write_ensemble(repo, "ensemble_cached", ENSEMBLE_OVER_LINEAR + CACHE)
    with (write_repeat(repo, "stream_cached") / "config.pbtxt").open("a") as config:
        config.write(CACHE)


def run_python_sequence(server: ServerProcess) -> dict[str, object]:
    """A, A, B, A to the cached Python model and to the cached ensemble."""
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    b = a + 1
    answers = {}
    for model in ("py_cached", "ensemble_cached"):
        answers[model] = [infer(server, model, x) for x in (a, a, b, a)]
    assert all(
        np.array_equal(answers["py_cached"][i], answers["ensemble_cached"][i]) for i in (1, 3)
    )
    found: dict[str, object] = {
        name: counts(server, name) for name in ("py_cached", "ensemble_cached", "linear")
    }
    found["metrics"] = {
        (metric, model): metric_total(server, metric, model)
        for metric in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model")
        for model in ("py_cached", "ensemble_cached")
    }
    return found


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_python_models_and_ensembles_are_cached_like_triton(tmp_path: Path) -> None:
    write_python_repository(tmp_path)
    flags = (*CACHE_FLAGS, "--exit-on-error=false", "--strict-readiness=false")
    with running_tritonserver(tmp_path, *flags, ready=False) as triton:
        theirs = run_python_sequence(triton)
        their_index = index(triton)
        their_log = triton.log()
    with running_server(tmp_path, *CACHE_FLAGS, "--no-strict-readiness") as ferry:
        ours = run_python_sequence(ferry)
        our_index = index(ferry)
    assert ours == theirs
    counted = {name: ours[name] for name in ("py_cached", "ensemble_cached", "linear")}
    hits_and_misses = {name: (c["cache_hit"], c["cache_miss"]) for name, c in counted.items()}
    # the ensemble's hits never reach its step: `linear` ran only for A and B
    assert hits_and_misses == {"py_cached": (2, 2), "ensemble_cached": (2, 2), "linear": (0, 0)}
    assert counted["linear"]["inference_count"] == 2
    assert set(ours["metrics"].values()) == {2.0}  # nv_cache_num_{hits,misses}_per_model
    refusal = "Response Cache does not currently support model stream_cached with 'decoupled'"
    assert their_index["stream_cached"].get("state") != "READY" and refusal in their_log
    assert our_index["stream_cached"]["state"] == "UNAVAILABLE"
    assert refusal in our_index["stream_cached"]["reason"]


def test_the_cache_stays_within_its_size(tmp_path: Path) -> None:
    ferry_model(tmp_path, "cached", CACHE)
    # one response: 3 floats of output + bookkeeping; room for about three
    with running_server(tmp_path, "--cache-config", "local,size=300") as server:
        for value in range(10):
            infer(server, "cached", np.full((1, 4), value, np.float32))
        with urllib.request.urlopen(server.metrics_url) as response:
            gauges = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in response.read().decode().splitlines()
                if line.startswith("nv_cache_") and "{" not in line
            }
        infer(server, "cached", np.full((1, 4), 9, np.float32))  # the newest is still there
        assert counts(server, "cached")["cache_hit"] == 1
    assert 1 <= gauges["nv_cache_num_entries"] <= 3
    assert gauges["nv_cache_num_evictions"] == 10 - gauges["nv_cache_num_entries"]
    assert 0 < gauges["nv_cache_util"] <= 1
    assert gauges["nv_cache_num_lookups"] == 10 and gauges["nv_cache_num_misses"] == 10


def test_requested_outputs_and_classification_are_part_of_the_key(tmp_path: Path) -> None:
    write_model(tmp_path, "two", mlp_model(4, 8, 3, input_name="x", output_name="y"), CACHE)
    with running_server(tmp_path, *CACHE_FLAGS) as server:
        with httpclient.InferenceServerClient(server.http_url) as client:
            tensor = httpclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            plain = client.infer("two", [tensor]).as_numpy("y")
            top = [httpclient.InferRequestedOutput("y", class_count=2)]
            for _ in range(2):
                classes = client.infer("two", [tensor], outputs=top).as_numpy("y")
            again = client.infer("two", [tensor]).as_numpy("y")
        found = counts(server, "two")
    assert classes.shape == (1, 2) and np.array_equal(plain, again)
    assert (found["cache_miss"], found["cache_hit"]) == (2, 2)


SLOW_CACHED = """max_batch_size: 64
response_cache { enable: true }
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""


def test_a_hit_is_answered_while_the_queue_is_full(tmp_path: Path) -> None:
    # a batch computes for seconds, so the queue is still full when the probe request comes
    write_model(tmp_path, "slow", slow_model(width=512, layers=3000), SLOW_CACHED)
    with running_server(tmp_path, *CACHE_FLAGS) as server:
        cached = np.ones((1, 512), np.float32)
        expected = infer(server, "slow", cached, "input", "output")
        busy = [
            threading.Thread(
                target=infer,
                args=(server, "slow", np.full((64, 512), value, np.float32), "input", "output"),
            )
            for value in (2.0, 3.0)
        ]
        for thread in busy:  # one executes (seconds), one waits: the queue (of one) is full
            thread.start()
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while metric_total(server, "nv_inference_pending_request_count", "slow") < 1:
            assert time.monotonic() < deadline
        with pytest.raises(InferenceServerException, match="Exceeds maximum queue size"):
            infer(server, "slow", np.full((1, 512), 5.0, np.float32), "input", "output")
        assert np.array_equal(infer(server, "slow", cached, "input", "output"), expected)
        for thread in busy:
            thread.join()
        assert counts(server, "slow")["cache_hit"] == 1
