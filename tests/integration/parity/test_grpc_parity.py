"""The gRPC corpus (tests/integration/parity/grpc_cases.py) against tritonserver and ferry: the
same status code on every call, and the same response where both are meant to say the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.parity import grpc_cases, http_cases
from tests.integration.parity.conftest import Twins, tally
from tests.integration.parity.differences import GRPC_DIFFERENCES
from tests.integration.parity.exchange import call, grpc_mismatch
from tests.integration.parity.grpc_cases import GrpcCase

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def channels(twins: Twins) -> Iterator[tuple[Any, Any]]:
    with (
        grpc.insecure_channel(twins.triton.grpc_url) as triton,
        grpc.insecure_channel(twins.ferry.grpc_url) as ferry,
    ):
        yield triton, ferry


@pytest.mark.parametrize("case", grpc_cases.CASES, ids=lambda case: case.id)
def test_same_answer_as_triton(channels: tuple[Any, Any], case: GrpcCase) -> None:
    triton, ferry = call(channels[0], case), call(channels[1], case)
    difference = GRPC_DIFFERENCES.get(case.id)
    if difference is None:
        problem = grpc_mismatch(case, triton, ferry)
        assert problem is None, problem
        tally("equal")
        return
    assert (triton.code, ferry.code) == (difference.triton, difference.ferry), (
        f"listed as a deliberate difference ({difference.reason}), but triton {triton.code} "
        f"({triton.details}), ferry {ferry.code} ({ferry.details})"
    )
    tally("deliberate")


@pytest.mark.parametrize(
    ("case", "code", "reason"), grpc_cases.FERRY_ONLY, ids=lambda v: getattr(v, "id", "")
)
def test_call_that_harms_triton(
    channels: tuple[Any, Any], twins: Twins, case: GrpcCase, code: str, reason: str
) -> None:
    answer = call(channels[1], case)
    assert answer.code == code, answer.details
    assert grpcclient.InferenceServerClient(twins.ferry.grpc_url).is_server_ready()


@pytest.mark.parametrize("name", ["nope", "", "../identity", "identity/../identity"])
def test_is_model_ready_is_false_for_any_model_that_is_not_loaded(twins: Twins, name: str) -> None:
    """tritonclient.grpc's is_model_ready() returns False (it raised against ferry before)."""
    for server in (twins.triton, twins.ferry):
        client = grpcclient.InferenceServerClient(server.grpc_url)
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
