"""The HTTP corpus (tests/integration/parity/http_cases.py) against tritonserver and ferry: the
same status on every row (the error body's form too), and the same body where both are meant to
say the same thing; the deliberate differences answer exactly as listed."""

from __future__ import annotations

import pytest

from tests.integration.parity import http_cases
from tests.integration.parity.conftest import Twins
from tests.integration.parity.differences import HTTP_DIFFERENCES
from tests.integration.parity.exchange import HttpAnswer, judge, mismatch, send
from tests.integration.parity.http_cases import HttpCase

pytestmark = pytest.mark.slow


def is_error_object(answer: HttpAnswer) -> bool:
    body = answer.json()
    return isinstance(body, dict) and isinstance(body.get("error"), str) and bool(body["error"])


@pytest.mark.parametrize("case", http_cases.CASES, ids=lambda case: case.id)
def test_same_answer_as_triton(twins: Twins, case: HttpCase) -> None:
    triton, ferry = send(twins.triton.http_url, case), send(twins.ferry.http_url, case)
    problem = mismatch(case, triton, ferry)
    bodies = f"\ntriton: {triton.body[:400]!r}\nferry: {ferry.body[:400]!r}"
    judge(case.id + bodies, (triton.status, ferry.status), problem, HTTP_DIFFERENCES.get(case.id))
    assert ferry.status < 400 or is_error_object(ferry)


@pytest.mark.parametrize(
    ("case", "status", "reason"), http_cases.FERRY_ONLY, ids=lambda v: getattr(v, "id", "")
)
def test_request_that_harms_triton(twins: Twins, case: HttpCase, status: int, reason: str) -> None:
    """Sent to ferry alone: ferry refuses it cleanly and keeps serving."""
    answer = send(twins.ferry.http_url, case)
    assert answer.status == status, answer.body
    assert is_error_object(answer)
    ready = send(twins.ferry.http_url, HttpCase("ready", "GET", "/v2/health/ready"))
    assert ready.status == 200


def test_differences_name_corpus_rows() -> None:
    """Every listed difference is a row of the corpus (no stale entries)."""
    ids = [case.id for case in http_cases.CASES]
    assert len(ids) == len(set(ids)), "corpus row ids must be unique"
    assert set(HTTP_DIFFERENCES) <= set(ids)
