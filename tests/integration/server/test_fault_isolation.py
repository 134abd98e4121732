"""A bad request cannot fail its batch-mates: 1,800 good and 100 bad concurrent requests (token ids
beyond the vocabulary of an embedding model) through the real tritonclient, over HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.concurrent_clients import (
    Clients,
    metric_total,
    model_statistics,
    run_concurrently,
)
from tests.support.onnx_models import embedding_model, embedding_reference, write_model
from tests.support.server_process import running_server

VOCAB, SEQ_LEN, GOOD, BAD = 100, 8, 1800, 100
CONFIG = """
max_batch_size: 32
input [{ name: "tokens" data_type: TYPE_INT64 dims: [-1] }]
output [{ name: "pooled" data_type: TYPE_FP32 dims: [8] }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [{ kind: KIND_CPU count: 1 }]
"""


def _requests() -> list[tuple[np.ndarray, bool]]:
    """GOOD requests of in-vocabulary ids and BAD ones with one id past it, shuffled together."""
    rng = np.random.default_rng(7)
    requests = [(rng.integers(0, VOCAB, (1, SEQ_LEN)), False) for _ in range(GOOD)]
    for _ in range(BAD):
        tokens = rng.integers(0, VOCAB, (1, SEQ_LEN))
        tokens[0, rng.integers(SEQ_LEN)] = VOCAB + int(rng.integers(1, 1000))
        requests.append((tokens, True))
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


def _send(clients: Clients, index: int, tokens: np.ndarray) -> object:
    """Even requests over HTTP, odd over gRPC; the pooled output or the client's exception."""
    module, client = (httpclient, clients.http) if index % 2 == 0 else (grpcclient, clients.grpc)
    infer_input = module.InferInput("tokens", list(tokens.shape), "INT64")
    infer_input.set_data_from_numpy(tokens.astype(np.int64))
    try:
        return client.infer("embeddings", [infer_input]).as_numpy("pooled")
    except InferenceServerException as exc:
        return exc


def test_only_the_bad_requests_fail(tmp_path: Path) -> None:
    write_model(tmp_path, "embeddings", embedding_model(VOCAB), CONFIG)
    requests = _requests()
    with running_server(tmp_path) as server:
        results = run_concurrently(server, [tokens for tokens, _ in requests], _send)
        stats = model_statistics(server, "embeddings")
        success, failure, executions = (
            metric_total(server, metric, "embeddings")
            for metric in (
                "nv_inference_request_success",
                "nv_inference_request_failure",
                "nv_inference_exec_count",
            )
        )

    for index, ((tokens, bad), result) in enumerate(zip(requests, results, strict=True)):
        if bad:
            assert isinstance(result, InferenceServerException), index
            assert result.status() in ("400", "StatusCode.INVALID_ARGUMENT"), result
            assert "out of data bounds" in str(result)
            assert f"idx={int(tokens.max())}" in str(result)  # its own id, not a batch-mate's
        else:
            assert not isinstance(result, InferenceServerException), (index, result)
            np.testing.assert_allclose(
                result, embedding_reference(tokens, VOCAB), rtol=1e-5, atol=1e-6
            )

    inference = stats["inference_stats"]
    assert inference["success"]["count"] == GOOD  # each good request counted once
    assert inference["fail"]["count"] == BAD  # each bad one failed once
    assert stats["inference_count"] == GOOD
    assert success == GOOD and failure == BAD
    # batches formed (executions well below one per request), and bad requests were searched
    # out of failed batches: more failed executions than the bad requests' own lone runs
    assert stats["execution_count"] < GOOD
    assert executions - stats["execution_count"] > BAD
