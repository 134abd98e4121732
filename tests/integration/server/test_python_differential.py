"""The same Python-backend repository served by ferry and by a real Triton (the nvidia-pytriton
wheel's tritonserver): every answer and every error status and message must match.

The repository: add_sub, a BLS model calling an ONNX model, a decoupled model streaming N
responses, an ensemble scale (Python) -> ONNX MLP -> label (Python), an ensemble of two add_sub
steps, models that fail in initialize/execute or answer the wrong count, and ensembles that must
not load (an unknown tensor, a cycle, a missing composing model, a map to a missing input). The
tests' Triton has only the python backend, so there the MLP is the same model.onnx run by
onnxruntime inside a Python model; everything else is the very same file in both repositories.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.python_models import (
    EXECUTE_RAISES_PY,
    INIT_RAISES_PY,
    NO_BATCH_CONFIG,
    WRONG_COUNT_PY,
    stream_repeat,
    write_add_sub,
    write_bls,
    write_bls_stream,
    write_classifier_step,
    write_classify_pipeline,
    write_ensemble,
    write_python_model,
    write_repeat,
    write_request_echo,
)
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import missing_reason, running_tritonserver

pytestmark = pytest.mark.slow

ENSEMBLE_HEAD = """max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [4] }]
"""


def add_sub_step(inputs: tuple[str, str], outputs: dict[str, str]) -> str:
    out = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return (
        f'{{ model_name: "add_sub" model_version: -1 input_map {{ key: "INPUT0" value: '
        f'"{inputs[0]}" }} input_map {{ key: "INPUT1" value: "{inputs[1]}" }} {out} }}'
    )


ENSEMBLES = {
    # (X + X) - X = X through two add_sub steps
    "add_twice": [
        add_sub_step(("X", "X"), {"OUTPUT0": "S"}),
        add_sub_step(("S", "X"), {"OUTPUT1": "Y"}),
    ],
    "bad_tensor": [add_sub_step(("X", "NOPE"), {"OUTPUT0": "Y"})],
    "cycle": [
        add_sub_step(("X", "T2"), {"OUTPUT0": "T1"}),
        add_sub_step(("T1", "X"), {"OUTPUT0": "T2", "OUTPUT1": "Y"}),
    ],
    "missing_model": [
        '{ model_name: "no_such_model" model_version: -1 input_map { key: "A" value: "X" } '
        'output_map { key: "B" value: "Y" } }'
    ],
    "bad_input": [
        '{ model_name: "add_sub" model_version: -1 input_map { key: "INPUT0" value: "X" } '
        'input_map { key: "NOT_AN_INPUT" value: "X" } output_map { key: "OUTPUT0" value: "Y" } }'
    ],
}
READY = (
    "add_sub",
    "mlp",
    "bls",
    "bls_missing",
    "repeat",
    "bls_stream",
    "request_echo",
    "classify",
    "add_twice",
    "execute_raises",
)
NOT_LOADING = ("init_raises", "bad_tensor", "cycle", "missing_model", "bad_input")


def build(repository: Path, python_onnx: bool) -> Path:
    repository.mkdir(parents=True)
    write_add_sub(repository)
    write_classifier_step(repository, "mlp", python=python_onnx)
    write_bls(repository, "bls", "mlp", "input", "output")
    write_bls(repository, "bls_missing", "no_such_model", "input", "output")
    write_repeat(repository)
    write_bls_stream(repository)
    write_request_echo(repository)
    write_classify_pipeline(repository, "classify")
    write_python_model(repository, "execute_raises", EXECUTE_RAISES_PY, NO_BATCH_CONFIG)
    write_python_model(repository, "wrong_count", WRONG_COUNT_PY, NO_BATCH_CONFIG)
    write_python_model(repository, "init_raises", INIT_RAISES_PY, NO_BATCH_CONFIG)
    for name, steps in ENSEMBLES.items():
        write_ensemble(
            repository, name, ENSEMBLE_HEAD + f"ensemble_scheduling {{ step [{', '.join(steps)}] }}"
        )
    return repository


@dataclass
class Pair:
    ferry: ServerProcess
    triton: ServerProcess
    ferry_root: Path
    triton_root: Path

    def both(self) -> list[tuple[ServerProcess, Path]]:
        return [(self.ferry, self.ferry_root), (self.triton, self.triton_root)]


def wait_for(server: ServerProcess, names: tuple[str, ...], timeout: float = 180.0) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if all(client.is_model_ready(name) for name in names):
                return
        except InferenceServerException:
            pass
        assert time.monotonic() < deadline, f"{names} not ready:\n{server.log()[-4000:]}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("differential")
    ferry_root = build(root / "ferry", python_onnx=False)
    triton_root = build(root / "triton", python_onnx=True)
    with (
        running_tritonserver(triton_root, "--exit-on-error=false", ready=False) as triton,
        running_server(ferry_root, ready=False) as ferry,
    ):
        wait_for(triton, READY)
        wait_for(ferry, READY)
        yield Pair(ferry, triton, ferry_root, triton_root)


def outcome(call: Callable[[], Any], root: Path) -> tuple[str, Any]:
    """('ok', value) or ('error', status, message with the repository path made neutral)."""
    try:
        return ("ok", call())
    except InferenceServerException as exc:
        return ("error", f"{exc.status()} {str(exc.message()).replace(str(root), 'REPO')}")


def same(pair: Pair, call: Callable[[ServerProcess], Any]) -> tuple[str, Any]:
    """Run `call` on both servers; the outcomes must be equal; returns ferry's."""
    ferry, triton = (outcome(lambda s=s: call(s), root) for s, root in pair.both())
    if ferry[0] == "ok" and triton[0] == "ok":
        assert_equal(ferry[1], triton[1])
    else:
        assert ferry == triton
    return ferry


def assert_equal(left: Any, right: Any) -> None:
    if isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_equal(left[key], right[key])
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            assert_equal(a, b)
    elif isinstance(left, np.ndarray):
        assert left.dtype == right.dtype and left.shape == right.shape
        if left.dtype.kind == "f":
            np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(left, right)
    else:
        assert left == right


def infer(
    protocol: str, model: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = ()
) -> Callable[[ServerProcess], dict[str, np.ndarray]]:
    module: Any = httpclient if protocol == "http" else grpcclient

    def call(server: ServerProcess) -> dict[str, np.ndarray]:
        url = server.http_url if protocol == "http" else server.grpc_url
        client = module.InferenceServerClient(url)
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else np_to_triton(array.dtype)
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [module.InferRequestedOutput(o) for o in outputs] or None
        result = client.infer(model, tensors, outputs=requested)
        response = result.get_response()
        names = (
            [o["name"] for o in response["outputs"]]
            if protocol == "http"
            else [o.name for o in response.outputs]
        )
        return {name: result.as_numpy(name) for name in names}

    return call


def np_to_triton(dtype: np.dtype[Any]) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(dtype))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_match(pair: Pair, protocol: str) -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    same(pair, infer(protocol, "add_sub", {"INPUT0": a, "INPUT1": b}))
    same(pair, infer(protocol, "add_sub", {"INPUT0": a, "INPUT1": b}, ("OUTPUT1",)))
    x = rng.standard_normal((2, 16)).astype(np.float32)
    same(pair, infer(protocol, "bls", {"INPUT": x}))
    raw = rng.integers(0, 256, (5, 16), dtype=np.uint8)
    answer = same(pair, infer(protocol, "classify", {"RAW": raw}))
    assert answer[1]["LABEL"].shape == (5, 1)
    same(pair, infer(protocol, "add_twice", {"X": a}))
    for count in (0, 3):  # BLS to a decoupled model: the responses it iterated
        same(pair, infer(protocol, "bls_stream", {"N": np.array([count], np.int32)}))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_error_inside_a_bls_stream_reaches_the_model_in_ferry_only(
    pair: Pair, protocol: str
) -> None:
    """A deliberate difference: Triton 2.51's BLS response iterator drops an error response of
    a decoupled model (the model never sees it); ferry yields it with has_error() true, as
    Triton's documentation describes."""
    five = {"N": np.array([5], np.int32)}
    ferry = infer(protocol, "bls_stream", five)(pair.ferry)
    triton = infer(protocol, "bls_stream", five)(pair.triton)
    assert ferry["VALUES"].tolist() == [0, 1, -1, 3, 4] and ferry["RESPONSES"].tolist() == [6]
    assert triton["VALUES"].tolist() == [0, 1, 3, 4] and triton["RESPONSES"].tolist() == [5]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_error_statuses_and_messages_match(pair: Pair, protocol: str) -> None:
    ones = np.ones((1, 4), np.float32)
    nan = np.full((1, 4), np.nan, np.float32)
    flat = np.ones(4, np.float32)
    cases = [
        infer(protocol, "add_sub", {"INPUT0": nan, "INPUT1": ones}),  # TritonError INVALID_ARG
        infer(protocol, "add_sub", {"INPUT0": ones * 2e6, "INPUT1": ones}),  # raises in execute
        infer(protocol, "execute_raises", {"INPUT0": flat, "INPUT1": flat}),
        infer(protocol, "wrong_count", {"INPUT0": flat, "INPUT1": flat}),
        infer(protocol, "repeat", {"N": np.array([2], np.int32)}),  # decoupled, unary call
        infer(protocol, "add_twice", {"X": nan}),  # a failing ensemble step
        infer(protocol, "bls_missing", {"INPUT": np.zeros((1, 16), np.float32)}),
    ]
    for case in cases:
        assert same(pair, case)[0] == "error"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_execute_sees_the_same_request(pair: Pair, protocol: str) -> None:
    """request_id, correlation_id (an int or a string sequence_id), flags (sequence start/end),
    the parameters and the requested outputs reach execute() as they do in Triton."""
    module: Any = httpclient if protocol == "http" else grpcclient
    x = np.ones(2, np.float32)
    cases: list[dict[str, Any]] = [
        {},
        {"request_id": "r-1", "parameters": {"tag": "a", "n": 3, "flag": True}},
        {"sequence_id": 42, "sequence_start": True},
        {"sequence_id": 7, "sequence_end": True, "outputs": ("SEEN",)},
    ]
    if protocol == "grpc":  # tritonclient's HTTP client sends integer sequence ids only
        cases.append({"sequence_id": "abc", "sequence_start": True, "sequence_end": True})
    for case in cases:
        kwargs = dict(case)
        outputs = kwargs.pop("outputs", ())

        def call(
            server: ServerProcess, kwargs: dict[str, Any] = kwargs, outputs: Any = outputs
        ) -> Any:
            url = server.http_url if protocol == "http" else server.grpc_url
            tensor = module.InferInput("X", [2], "FP32")
            tensor.set_data_from_numpy(x)
            requested = [module.InferRequestedOutput(o) for o in outputs] or None
            result = module.InferenceServerClient(url).infer(
                "request_echo", [tensor], outputs=requested, **kwargs
            )
            return json.loads(result.as_numpy("SEEN")[0])

        seen = same(pair, call)
        assert seen[0] == "ok", seen


@pytest.mark.parametrize("empty_final", [True, False])
@pytest.mark.parametrize("count", [0, 3, 5])
def test_decoupled_streams_match(pair: Pair, count: int, empty_final: bool) -> None:
    ferry = stream_repeat(pair.ferry.grpc_url, count, empty_final)
    triton = stream_repeat(pair.triton.grpc_url, count, empty_final)
    assert ferry == triton
    assert ferry or (count == 0 and not empty_final)  # nothing to send only then


def test_metadata_and_configs_match(pair: Pair) -> None:
    for model in ("add_sub", "repeat", "classify"):
        same(
            pair,
            lambda s, m=model: httpclient.InferenceServerClient(s.http_url).get_model_metadata(m),
        )
    ferry_config = httpclient.InferenceServerClient(pair.ferry.http_url).get_model_config("add_sub")
    triton_config = httpclient.InferenceServerClient(pair.triton.http_url).get_model_config(
        "add_sub"
    )
    for key in ("name", "backend", "max_batch_size"):
        assert ferry_config[key] == triton_config[key], key
    for key in ("input", "output"):  # Triton's newer proto has fields tritonclient's lacks
        assert [(t["name"], t["data_type"], t["dims"]) for t in ferry_config[key]] == [
            (t["name"], t["data_type"], t["dims"]) for t in triton_config[key]
        ]


def test_models_that_cannot_load_are_not_ready_for_the_same_reason(pair: Pair) -> None:
    ferry_index = {
        row["name"]: row
        for row in httpclient.InferenceServerClient(
            pair.ferry.http_url
        ).get_model_repository_index()
    }
    triton_log = pair.triton.log()
    for name in NOT_LOADING:
        for server in (pair.ferry, pair.triton):
            assert not httpclient.InferenceServerClient(server.http_url).is_model_ready(name)
        reason = ferry_index[name]["reason"]
        assert ferry_index[name]["state"] == "UNAVAILABLE"
        if name == "init_raises":
            triton_index = {
                row["name"]: row
                for row in httpclient.InferenceServerClient(
                    pair.triton.http_url
                ).get_model_repository_index()
            }
            assert reason.replace(str(pair.ferry_root), "REPO") == triton_index[name][
                "reason"
            ].replace(str(pair.triton_root), "REPO")
            continue
        # Triton logs why an ensemble folder did not load; ferry says it in the index
        logged = re.escape(reason).replace(re.escape(str(pair.ferry_root)), ".*")
        assert re.search(logged, triton_log), (name, reason)
