"""The gRPC corpus (tests/integration/parity/grpc_cases.py) against tritonserver and ferry: the
same status code on every call, and the same response where both are meant to say the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.parity import grpc_cases, http_cases
from tests.integration.parity.conftest import Twins
from tests.integration.parity.differences import GRPC_DIFFERENCES
from tests.integration.parity.exchange import call, grpc_mismatch, judge, tally
from tests.integration.parity.grpc_cases import GrpcCase
from tests.support.server_process import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def ferry_grpc_url(request: pytest.FixtureRequest, twins: Twins) -> Iterator[str]:
    """The corpus runs on both gRPC transports (`--grpc-transport`): the twins' server (ferry's
    own HTTP/2 layer), then one on grpc.aio serving the same repository."""
    if request.param == "ferry":
        yield twins.ferry.grpc_url
        return
    explicit = ("--model-control-mode", "explicit", "--load-model", "*", "--allow-client-shm")
    with running_server(twins.ferry_repository, *explicit, "--grpc-transport", "grpcio") as server:
        yield server.grpc_url


@pytest.fixture(scope="module")
def channels(twins: Twins, ferry_grpc_url: str) -> Iterator[tuple[Any, Any]]:
    with (
        grpc.insecure_channel(twins.triton.grpc_url) as triton,
        grpc.insecure_channel(ferry_grpc_url) as ferry,
    ):
        yield triton, ferry


@pytest.mark.parametrize("case", grpc_cases.CASES, ids=lambda case: case.id)
def test_same_answer_as_triton(channels: tuple[Any, Any], case: GrpcCase) -> None:
    triton, ferry = call(channels[0], case), call(channels[1], case)
    problem = grpc_mismatch(case, triton, ferry)
    codes = f" (triton: {triton.details!r}, ferry: {ferry.details!r})"
    judge(case.id + codes, (triton.code, ferry.code), problem, GRPC_DIFFERENCES.get(case.id))


@pytest.mark.parametrize(
    ("case", "code", "reason"), grpc_cases.FERRY_ONLY, ids=lambda v: getattr(v, "id", "")
)
def test_call_that_harms_triton(
    channels: tuple[Any, Any], ferry_grpc_url: str, case: GrpcCase, code: str, reason: str
) -> None:
    answer = call(channels[1], case)
    assert answer.code == code, answer.details
    assert grpcclient.InferenceServerClient(ferry_grpc_url).is_server_ready()


@pytest.mark.parametrize("name", ["nope", "", "../identity", "identity/../identity"])
def test_is_model_ready_is_false_for_any_model_that_is_not_loaded(
    twins: Twins, ferry_grpc_url: str, name: str
) -> None:
    """tritonclient.grpc's is_model_ready() returns False (it raised against ferry before)."""
    for url in (twins.triton.grpc_url, ferry_grpc_url):
        client = grpcclient.InferenceServerClient(url)
        assert client.is_model_ready(name) is False
        assert client.is_model_ready("identity", "7") is False
    tally("equal")


def test_differences_name_corpus_rows() -> None:
    ids = [case.id for case in grpc_cases.CASES]
    assert len(ids) == len(set(ids)), "corpus row ids must be unique"
    assert set(GRPC_DIFFERENCES) <= set(ids)


def test_corpus_has_at_least_150_bad_requests() -> None:
    """The issue's floor: at least 150 bad requests over HTTP and gRPC together."""
    bad = len(http_cases.BAD) + len(http_cases.FERRY_ONLY) + len(grpc_cases.BAD)
    bad += len(grpc_cases.FERRY_ONLY)
    assert bad >= 150, bad
