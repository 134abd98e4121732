"""Ensembles in ferry: each composing model keeps its own scheduler, statistics and metrics; the
ensemble has its own statistics; a step model with dynamic batching batches the concurrent
ensemble requests that reach it, as Triton's does; an ensemble is ready only while all its
composing models are (unloading one makes it not ready with the reason, loading it back makes it
ready again).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.python_models import (
    write_batch_probe,
    write_classifier_step,
    write_classify_pipeline,
    write_ensemble,
    write_repeat,
)
from tests.support.server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow
PIPELINE = ("scale", "mlp", "label")
PROBE_ROWS = 4  # the probe step's max_batch_size: its batcher runs a batch once it holds 4 rows


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("ensembles")
    write_classifier_step(repo, "mlp")
    write_classify_pipeline(repo, "classify")
    write_repeat(repo)
    # a minute's queue delay: the probe step runs when PROBE_ROWS requests are queued, so the
    # concurrent ensemble requests can only be answered together or, unbatched, one at a time
    write_batch_probe(repo, "probe", max_batch_size=PROBE_ROWS, queue_delay_us=60_000_000)
    write_ensemble(
        repo,
        "probed",
        f"""max_batch_size: {PROBE_ROWS}
input [{{ name: "X" data_type: TYPE_FP32 dims: [4] }}]
output [{{ name: "BATCH" data_type: TYPE_INT32 dims: [1] }}]
ensemble_scheduling {{ step [{{ model_name: "probe" model_version: -1
  input_map {{ key: "X" value: "X" }} output_map {{ key: "BATCH" value: "BATCH" }} }}] }}
""",
    )
    write_ensemble(
        repo,
        "streaming_step",
        """max_batch_size: 0
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]
ensemble_scheduling { step [{ model_name: "repeat" model_version: -1
  input_map { key: "N" value: "N" } output_map { key: "OUT" value: "OUT" } }] }
""",
    )
    with running_server(
        repo, "--model-control-mode", "explicit", "--load-model", "*", ready=False
    ) as process:
        wait_ready(process, "classify")
        yield process


def wait_ready(server: ServerProcess, name: str, ready: bool = True) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    deadline = time.monotonic() + 60
    while client.is_model_ready(name) != ready:
        assert time.monotonic() < deadline, client.get_model_repository_index()
        time.sleep(0.1)


def classify(client: httpclient.InferenceServerClient, rows: int) -> httpclient.InferResult:
    raw = np.random.default_rng(rows).integers(0, 256, (rows, 16), dtype=np.uint8)
    tensor = httpclient.InferInput("RAW", [rows, 16], "UINT8")
    tensor.set_data_from_numpy(raw)
    return client.infer("classify", [tensor])


def inference_count(client: httpclient.InferenceServerClient, name: str) -> int:
    return int(client.get_inference_statistics(name)["model_stats"][0]["inference_count"])


def test_each_composing_model_keeps_its_own_statistics_and_metrics(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    before = {name: inference_count(client, name) for name in (*PIPELINE, "classify")}
    result = classify(client, 3)
    labels = result.as_numpy("LABEL")
    assert labels.shape == (3, 1) and set(labels.reshape(-1)) <= {b"cat", b"dog", b"bird", b"fish"}
    probability = result.as_numpy("PROBABILITY")
    assert ((probability > 0.25) & (probability <= 1.0)).all()
    for name in (*PIPELINE, "classify"):
        assert inference_count(client, name) == before[name] + 3, name
    with urllib.request.urlopen(server.metrics_url) as response:
        metrics = response.read().decode()
    for name in (*PIPELINE, "classify"):
        assert f'nv_inference_request_success{{model="{name}",version="1"}}' in metrics


def model_stats(client: httpclient.InferenceServerClient, name: str) -> dict[str, Any]:
    stats: dict[str, Any] = client.get_inference_statistics(name)["model_stats"][0]
    return stats


def test_a_batching_step_batches_concurrent_ensemble_requests(server: ServerProcess) -> None:
    def probed(row: int) -> np.ndarray:
        tensor = httpclient.InferInput("X", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), row, np.float32))
        client = httpclient.InferenceServerClient(server.http_url)
        batch: np.ndarray = client.infer("probed", [tensor]).as_numpy("BATCH")
        return batch

    client = httpclient.InferenceServerClient(server.http_url)
    before = {name: model_stats(client, name) for name in ("probe", "probed")}
    with ThreadPoolExecutor(PROBE_ROWS) as pool:
        batches = list(pool.map(probed, range(PROBE_ROWS)))
    # every request's step ran in one execute() call holding all of them
    assert [batch.tolist() for batch in batches] == [[[PROBE_ROWS]]] * PROBE_ROWS
    after = {name: model_stats(client, name) for name in ("probe", "probed")}
    counts = {
        name: (
            int(after[name]["inference_count"]) - int(before[name]["inference_count"]),
            int(after[name]["execution_count"]) - int(before[name]["execution_count"]),
        )
        for name in after
    }
    # the step: PROBE_ROWS rows in one execution; the ensemble: one execution per request
    assert counts == {"probe": (PROBE_ROWS, 1), "probed": (PROBE_ROWS, PROBE_ROWS)}
    sizes = {
        int(row["batch_size"]): int(row["compute_infer"]["count"])
        for row in after["probe"]["batch_stats"]
    }
    assert sizes.get(PROBE_ROWS, 0) >= 1


def test_an_ensemble_is_ready_only_while_its_composing_models_are(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    client.unload_model("label")
    wait_ready(server, "classify", ready=False)
    rows = {row["name"]: row for row in client.get_model_repository_index()}
    assert rows["classify"]["state"] == "UNAVAILABLE"
    assert rows["classify"]["reason"] == (
        "ensemble classify contains models that are not available or ambiguous: label"
    )
    with pytest.raises(InferenceServerException):
        classify(client, 1)
    client.load_model("label")
    wait_ready(server, "classify")
    assert classify(client, 2).as_numpy("LABEL").shape == (2, 1)


def test_an_ensemble_with_a_decoupled_step_is_unavailable_with_the_reason(
    server: ServerProcess,
) -> None:
    rows = {
        row["name"]: row
        for row in httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    assert rows["streaming_step"]["state"] == "UNAVAILABLE"
    assert rows["streaming_step"]["reason"] == (
        "in ensemble streaming_step, model repeat is decoupled: ferry's ensemble steps take one "
        "response per request"
    )
