"""Stateful sequences sent to tritonserver and ferry step by step: the repository API in explicit
mode (unload, load, failed reloads, config overrides), statistics after a known mix of requests,
system shared memory (register, status, infer through regions, unregister) and the ModelStreamInfer
stream. Each step must answer the same on both (or as listed in differences.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.integration.parity.conftest import Twins
from tests.integration.parity.differences import CLIENT_ERROR, SHM_CLIENT_ERROR, Difference
from tests.integration.parity.exchange import (
    HttpAnswer,
    call,
    grpc_infer_result,
    grpc_mismatch,
    infer_result,
    judge,
    mismatch,
    send,
    tally,
)
from tests.integration.parity.grpc_cases import GrpcCase, infer_request, tensor
from tests.integration.parity.http_cases import GOOD, HttpCase, dumps, fp32, inputs

pytestmark = pytest.mark.slow

Step = HttpCase | tuple[HttpCase, HttpCase]  # one request, or one per server (triton, ferry)


def http_step(twins: Twins, step: Step, difference: Difference | None = None) -> HttpAnswer:
    """Send one step to both; assert they agree (or differ exactly as listed); ferry's answer."""
    triton_case, ferry_case = step if isinstance(step, tuple) else (step, step)
    triton = send(twins.triton.http_url, triton_case)
    ferry = send(twins.ferry.http_url, ferry_case)
    label = f"{ferry_case.id}\ntriton {triton.body[:300]!r}\nferry {ferry.body[:300]!r}"
    judge(label, (triton.status, ferry.status), mismatch(ferry_case, triton, ferry), difference)
    return ferry


def grpc_step(channels: tuple[Any, Any], case: GrpcCase) -> None:
    triton, ferry = call(channels[0], case), call(channels[1], case)
    label = f"{case.id} (triton: {triton.details!r}, ferry: {ferry.details!r})"
    judge(label, (triton.code, ferry.code), grpc_mismatch(case, triton, ferry), None)


@pytest.fixture(scope="module")
def channels(twins: Twins) -> Iterator[tuple[Any, Any]]:
    with (
        grpc.insecure_channel(twins.triton.grpc_url) as triton,
        grpc.insecure_channel(twins.ferry.grpc_url) as ferry,
    ):
        yield triton, ferry


def get(path: str, compare: str = "status") -> HttpCase:
    return HttpCase(f"GET {path}", "GET", path, compare=compare)


def post(path: str, body: Any = b"", compare: str = "status", label: str = "") -> HttpCase:
    raw = body if isinstance(body, bytes) else dumps(body)
    return HttpCase(label or f"POST {path} {raw[:40]!r}", "POST", path, raw, compare=compare)


def load_with_config(model: str, config: dict[str, Any], label: str) -> tuple[HttpCase, HttpCase]:
    """The same config override for both, each naming its own runtime (python / ONNX)."""
    path = f"/v2/repository/models/{model}/load"
    return (
        post(
            path,
            {"parameters": {"config": json.dumps({"backend": "python", **config})}},
            label=label,
        ),
        post(
            path,
            {"parameters": {"config": json.dumps({"platform": "onnxruntime_onnx", **config})}},
            label=label,
        ),
    )


SPARE_CONFIG = {
    "max_batch_size": 2,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
}


def wait_for_triton_unload(twins: Twins, model: str) -> None:
    """Triton unloads in the background (its index says UNLOADING a while); ferry unloads
    before answering. Compare once Triton is done."""
    index = post("/v2/repository/index")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = send(twins.triton.http_url, index).json()
        if all(row.get("state") != "UNLOADING" for row in rows if row["name"] == model):
            return
        time.sleep(0.1)
    raise TimeoutError(f"tritonserver did not finish unloading '{model}'")


def test_repository_http(twins: Twins) -> None:
    spare = "/v2/models/spare"
    load, unload = "/v2/repository/models/spare/load", "/v2/repository/models/spare/unload"
    try:
        http_step(twins, post(unload))
        wait_for_triton_unload(twins, "spare")
        for step in (
            get(f"{spare}/ready"),
            get(spare),
            get(f"{spare}/config"),
            get(f"{spare}/stats"),
            post(f"{spare}/infer", inputs(GOOD)),
            post("/v2/repository/index", compare="json"),
            post("/v2/repository/index", {"ready": True}, compare="json"),
            post(unload),  # unloading twice is fine
            post(load),
            get(f"{spare}/ready", "json"),
            post(f"{spare}/infer", inputs(GOOD), "outputs"),
        ):
            http_step(twins, step)
        # a failed reload keeps the loaded version serving
        http_step(
            twins,
            post(load, {"parameters": {"config": "{not json"}}),
            Difference(500, 400, CLIENT_ERROR),
        )
        http_step(
            twins, post(load, {"parameters": {"config": "[]"}}), Difference(500, 400, CLIENT_ERROR)
        )
        http_step(twins, get(f"{spare}/ready", "json"))
        http_step(twins, post(f"{spare}/infer", inputs(GOOD), "outputs"))
        # a config override replaces config.pbtxt until the next plain load
        http_step(
            twins, load_with_config("spare", SPARE_CONFIG, "load spare with a config override")
        )
        http_step(twins, get(f"{spare}/config", "json"))
        http_step(twins, post(f"{spare}/infer", inputs(fp32([2, 4])), "outputs"))
        http_step(twins, post(f"{spare}/infer", inputs(fp32([3, 4]))))  # over the new max batch
        # deliberate (PLAIN_LOAD_READS_CONFIG): a plain load goes back to config.pbtxt
        http_step(twins, post(load))
        triton, ferry = (
            send(server.http_url, get(f"{spare}/config")).json()["max_batch_size"]
            for server in (twins.triton, twins.ferry)
        )
        assert (triton, ferry) == (2, 8)
        tally("deliberate")
    finally:
        send(twins.triton.http_url, post(load))
        send(twins.ferry.http_url, post(load))


def test_repository_grpc(twins: Twins, channels: tuple[Any, Any]) -> None:
    def case(case_id: str, rpc: str, request: Any, compare: str = "status") -> GrpcCase:
        return GrpcCase(case_id, rpc, request, compare)

    unload = case(
        "unload", "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="spare")
    )
    load = case("load", "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="spare"))
    ready = case("ready", "ModelReady", pb.ModelReadyRequest(name="spare"), "message")
    try:
        grpc_step(channels, unload)
        wait_for_triton_unload(twins, "spare")
        for step in (
            ready,
            case("metadata", "ModelMetadata", pb.ModelMetadataRequest(name="spare")),
            case("config", "ModelConfig", pb.ModelConfigRequest(name="spare")),
            case("statistics", "ModelStatistics", pb.ModelStatisticsRequest(name="spare")),
            case("infer", "ModelInfer", infer_request("spare")),
            case("index", "RepositoryIndex", pb.RepositoryIndexRequest(), "message"),
            case(
                "ready index", "RepositoryIndex", pb.RepositoryIndexRequest(ready=True), "message"
            ),
            unload,
            load,
            ready,
            case("infer after load", "ModelInfer", infer_request("spare"), "outputs"),
        ):
            grpc_step(channels, step)
    finally:
        call(channels[0], load)
        call(channels[1], load)


STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def statistics_counts(answer: HttpAnswer) -> dict[str, Any]:
    """The counts of a model's statistics (the durations differ between any two servers)."""
    (stats,) = answer.json()["model_stats"]
    return {
        "inference_count": stats["inference_count"],
        "execution_count": stats["execution_count"],
        **{field: stats["inference_stats"][field]["count"] for field in STAT_FIELDS},
        "batch_stats": sorted(
            (batch["batch_size"], batch["compute_infer"]["count"]) for batch in stats["batch_stats"]
        ),
    }


def test_statistics_count_the_same_requests(twins: Twins) -> None:
    """Successes, failures and batches of a known mix of requests on the `counted` model."""
    model = "/v2/models/counted"
    for rows in (1, 2, 3):
        http_step(twins, post(f"{model}/infer", inputs(fp32([rows, 4])), "outputs"))
    for bad in (
        inputs(fp32([1, 5])),  # wrong shape
        inputs({**GOOD, "datatype": "INT32"}),  # wrong datatype
        inputs(GOOD, outputs=[{"name": "NOPE"}]),  # unknown output
        inputs(fp32([9, 4])),  # batch over max_batch_size
    ):
        http_step(twins, post(f"{model}/infer", bad))
    triton = statistics_counts(send(twins.triton.http_url, get(f"{model}/stats")))
    ferry = statistics_counts(send(twins.ferry.http_url, get(f"{model}/stats")))
    # deliberate (FAILED_VALIDATION): ferry counts the 4 refused requests as failures
    assert (triton.pop("fail"), ferry.pop("fail")) == (0, 4)
    assert triton == ferry
    assert ferry["success"] == 3 and ferry["inference_count"] == 6
    tally("deliberate")


@pytest.fixture
def regions() -> Iterator[dict[str, Any]]:
    """Two POSIX shared memory objects: 'in' holds [[0, 1, 2, 3]] as FP32, 'out' is 32 bytes."""
    suffix = uuid.uuid4().hex[:8]
    handles = {
        "in": shm.create_shared_memory_region("in", f"/parity_in_{suffix}", 16),
        "out": shm.create_shared_memory_region("out", f"/parity_out_{suffix}", 32),
    }
    shm.set_shared_memory_region(handles["in"], [np.arange(4, dtype=np.float32).reshape(1, 4)])
    try:
        yield {"suffix": suffix, **handles}
    finally:
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)


def shm_input(region: str, size: int = 16, offset: int = 0) -> dict[str, Any]:
    parameters = {"shared_memory_region": region, "shared_memory_byte_size": size}
    if offset:
        parameters["shared_memory_offset"] = offset
    return {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "parameters": parameters}


def shm_output(region: str, size: int = 32) -> dict[str, Any]:
    return {
        "name": "OUTPUT0",
        "parameters": {"shared_memory_region": region, "shared_memory_byte_size": size},
    }


def test_system_shared_memory_http(twins: Twins, regions: dict[str, Any]) -> None:
    suffix = regions["suffix"]
    root = "/v2/systemsharedmemory"

    def register(region: str, key: str, size: int, offset: int = 0) -> HttpCase:
        body = {"key": key, "offset": offset, "byte_size": size}
        return post(f"{root}/region/{region}/register", body, label=f"register {region} {body}")

    infer = "/v2/models/identity/infer"
    try:
        for step in (
            # before any region maps the object (tritonserver 2.51 answers a later one 500)
            register("big", f"/parity_out_{suffix}", 64),  # larger than the object
            register("past", f"/parity_out_{suffix}", 8, offset=28),  # past its end
            register("in", f"/parity_in_{suffix}", 16),
            register("out", f"/parity_out_{suffix}", 32),
            register("in", f"/parity_in_{suffix}", 16),  # already registered
            get(f"{root}/status", "json"),
            get(f"{root}/region/in/status", "json"),
            post(infer, inputs(shm_input("in")), "outputs"),
            post(infer, inputs(shm_input("in"), outputs=[shm_output("out")])),
            post(infer, inputs(shm_input("in", 8))),  # too small for the shape
            post(infer, inputs(shm_input("in", 16, offset=8))),  # past the region
            post(infer, inputs(GOOD, outputs=[shm_output("in", 32)])),  # over the region
            post(infer, inputs(shm_input("in") | {"data": [1, 2, 3, 4]})),  # data and region
        ):
            http_step(twins, step)
        too_small = post(infer, inputs(GOOD, outputs=[shm_output("out", 8)]))
        http_step(twins, too_small, Difference(500, 400, SHM_CLIENT_ERROR))
        for step in (
            post(f"{root}/region/in/unregister"),
            get(f"{root}/region/in/status"),
            post(infer, inputs(shm_input("in"))),
            post(f"{root}/unregister"),
            get(f"{root}/status", "json"),
        ):
            http_step(twins, step)
    finally:
        send(twins.triton.http_url, post(f"{root}/unregister"))
        send(twins.ferry.http_url, post(f"{root}/unregister"))


def test_outputs_written_to_shared_memory_are_the_same(
    twins: Twins, regions: dict[str, Any]
) -> None:
    suffix = regions["suffix"]
    root = "/v2/systemsharedmemory"
    written = []
    for server in (twins.triton, twins.ferry):
        try:
            for name, size in (("in", 16), ("out", 32)):
                body = {"key": f"/parity_{name}_{suffix}", "offset": 0, "byte_size": size}
                assert (
                    send(server.http_url, post(f"{root}/region/{name}/register", body)).status
                    == 200
                )
            shm.set_shared_memory_region(regions["out"], [np.zeros(8, dtype=np.float32)])
            request = inputs(shm_input("in"), outputs=[shm_output("out", 16)])
            answer = send(server.http_url, post("/v2/models/identity/infer", request))
            assert answer.status == 200, answer.body
            written.append(
                (
                    infer_result(answer),
                    shm.get_contents_as_numpy(regions["out"], np.float32, [1, 4]).tolist(),
                )
            )
        finally:
            send(server.http_url, post(f"{root}/unregister"))
    # deliberate: ferry names the region an output went to in the response; Triton does not
    parameters = written[1][0]["outputs"]["OUTPUT0"].pop("parameters")
    assert parameters == {"shared_memory_region": "out", "shared_memory_byte_size": 16}
    written[0][0]["outputs"]["OUTPUT0"].pop("parameters")
    assert written[0] == written[1]
    assert written[1][1] == [[0.0, 1.0, 2.0, 3.0]]
    tally("deliberate")


def test_system_shared_memory_grpc(channels: tuple[Any, Any], regions: dict[str, Any]) -> None:
    suffix = regions["suffix"]

    def case(case_id: str, rpc: str, request: Any, compare: str = "status") -> GrpcCase:
        return GrpcCase(case_id, rpc, request, compare)

    def register(name: str, key: str, size: int, offset: int = 0) -> GrpcCase:
        request = pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=size
        )
        return case(f"register {name}", "SystemSharedMemoryRegister", request)

    def through(
        region: str, size: int = 16, offset: int = 0, output: str = ""
    ) -> pb.ModelInferRequest:
        request = infer_request(raw=[])
        parameters = request.inputs[0].parameters
        parameters["shared_memory_region"].string_param = region
        parameters["shared_memory_byte_size"].int64_param = size
        if offset:
            parameters["shared_memory_offset"].int64_param = offset
        if output:
            out = request.outputs.add(name="OUTPUT0")
            out.parameters["shared_memory_region"].string_param = output
            out.parameters["shared_memory_byte_size"].int64_param = 16
        return request

    status = case(
        "status", "SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(), "message"
    )
    unregister_all = case(
        "unregister all", "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest()
    )
    try:
        for step in (
            register("big", f"/parity_out_{suffix}", 64),
            register("past", f"/parity_out_{suffix}", 8, offset=28),
            register("in", f"/parity_in_{suffix}", 16),
            register("out", f"/parity_out_{suffix}", 32),
            register("in", f"/parity_in_{suffix}", 16),
            status,
            case(
                "status in",
                "SystemSharedMemoryStatus",
                pb.SystemSharedMemoryStatusRequest(name="in"),
                "message",
            ),
            case("infer from shm", "ModelInfer", through("in"), "outputs"),
            case("infer to shm", "ModelInfer", through("in", output="out")),
            case("input too small", "ModelInfer", through("in", 8)),
            case("input past the region", "ModelInfer", through("in", 16, 8)),
            case(
                "unregister in",
                "SystemSharedMemoryUnregister",
                pb.SystemSharedMemoryUnregisterRequest(name="in"),
            ),
            case(
                "status of unregistered",
                "SystemSharedMemoryStatus",
                pb.SystemSharedMemoryStatusRequest(name="in"),
            ),
            case("infer from unregistered", "ModelInfer", through("in")),
            unregister_all,
            status,
        ):
            grpc_step(channels, step)
    finally:
        call(channels[0], unregister_all)
        call(channels[1], unregister_all)


def stream_answers(channel: Any, requests: list[pb.ModelInferRequest]) -> dict[str, Any]:
    """Each request's answer on one ModelStreamInfer stream, by request id: its outputs or
    whether it carried an error."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    answers = {}
    for message in stub.ModelStreamInfer(iter(requests), timeout=60):
        response = message.infer_response
        answers[response.id] = "error" if message.error_message else grpc_infer_result(response)
    return answers


def test_stream_infer(channels: tuple[Any, Any]) -> None:
    """Good and bad requests on one stream: the good ones answered, each bad one an error
    message on the stream, which stays open."""

    def named(request: pb.ModelInferRequest, request_id: str) -> pb.ModelInferRequest:
        request.id = request_id
        return request

    requests = [
        named(infer_request(), "good-1"),
        named(infer_request(inputs=[tensor("NOPE", "FP32", [1, 4])]), "bad-input"),
        named(
            infer_request(
                "two_io",
                raw=[b"\x00" * 12, b"\x00" * 24],
                inputs=[tensor("a", "FP32", [1, 3]), tensor("b", "INT64", [1, 3])],
            ),
            "good-2",
        ),
        named(infer_request("nope"), "unknown-model"),
        named(infer_request(raw=[b"\x00" * 3]), "short-raw"),
        named(infer_request(outputs=["OUTPUT0"]), "good-3"),
    ]
    triton, ferry = (stream_answers(channel, requests) for channel in channels)
    assert triton == ferry
    assert sum(value == "error" for value in ferry.values()) == 3
    tally("equal")
