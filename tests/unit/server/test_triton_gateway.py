"""The triton_gateway runtime without a Triton: parameters, config completion, error mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from server.errors import ErrorKind, ServingError
from server.model_config import prepare
from server.protocol.status import GRPC_CODE_BY_KIND, HTTP_STATUS_BY_KIND
from server.repository_format import ModelConfig, ModelConfigError, parse_config
from server.runtimes import complete_config, runtime_factory
from server.runtimes import triton_gateway as gateway
from server.runtimes.triton_gateway import (
    GatewaySettings,
    TritonGatewayRuntime,
    merge_upstream_config,
    upstream_error,
)

URL = 'parameters { key: "triton_url" value: { string_value: "localhost:8001" } }\n'
UPSTREAM = parse_config("""
    name: "linear" backend: "python" max_batch_size: 16
    input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
    output [{ name: "y" data_type: TYPE_FP32 dims: [3] },
            { name: "label" data_type: TYPE_STRING dims: [1] label_filename: "l.txt" }]
    dynamic_batching { max_queue_delay_microseconds: 7 }""")


def gateway_config(extra: str = "", **parameters: str) -> ModelConfig:
    lines = ['backend: "triton_gateway"', URL]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return parse_config("\n".join(lines) + extra)


SETTINGS = GatewaySettings("localhost:8001", "linear")


# --- parameters -------------------------------------------------------------------------------


def test_settings_defaults_to_the_model_name_and_upstream_version_policy() -> None:
    settings = GatewaySettings.from_config(gateway_config(), "linear")
    assert settings == GatewaySettings("localhost:8001", "linear", "", None)
    assert settings.load_timeout_s == gateway.LOAD_TIMEOUT_S


def test_settings_reads_every_parameter() -> None:
    config = gateway_config(triton_model="other", triton_model_version="3", triton_timeout_s="2.5")
    settings = GatewaySettings.from_config(config, "linear")
    assert settings == GatewaySettings("localhost:8001", "other", "3", 2.5)
    assert settings.load_timeout_s == 2.5
    assert "'other' version 3 at localhost:8001" in settings.target


def test_settings_accepts_platform_spelling_and_grpc_scheme() -> None:
    config = parse_config(
        'platform: "triton_gateway"\n'
        'parameters { key: "triton_url" value: { string_value: "grpc://h:9001" } }'
    )
    assert gateway.is_gateway(config)
    assert GatewaySettings.from_config(config, "m").url == "h:9001"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (parse_config('backend: "triton_gateway"'), "triton_url"),
        (
            parse_config(
                'backend: "triton_gateway" parameters { key: "triton_url" '
                'value: { string_value: "http://h:8000" } }'
            ),
            "not an HTTP URL",
        ),
        (gateway_config(triton_timeout_s="soon"), "triton_timeout_s"),
        (gateway_config(triton_timeout_s="-1"), "triton_timeout_s"),
        (gateway_config(triton_timeout_s="nan"), "triton_timeout_s"),
        (gateway_config(triton_model_version="latest"), "triton_model_version"),
    ],
)
def test_settings_errors_name_the_parameter(config: ModelConfig, words: str) -> None:
    with pytest.raises(ModelConfigError, match=words):
        GatewaySettings.from_config(config, "m")


def test_version_minus_one_means_latest() -> None:
    assert (
        GatewaySettings.from_config(gateway_config(triton_model_version="-1"), "m").model_version
        == ""
    )


# --- config completion ------------------------------------------------------------------------


def test_a_bare_config_is_completed_from_upstream() -> None:
    completed = merge_upstream_config(gateway_config(), UPSTREAM, SETTINGS)
    assert completed.max_batch_size == 16
    assert [(t.name, t.data_type, list(t.dims)) for t in completed.input] == [
        ("x", UPSTREAM.input[0].data_type, [4])
    ]
    assert [t.name for t in completed.output] == ["y", "label"]
    assert not completed.output[1].label_filename  # upstream's files are not ours
    assert completed.HasField("dynamic_batching")  # ferry batches ...
    assert completed.dynamic_batching.max_queue_delay_microseconds == 0  # ... with its settings
    assert completed.backend == "triton_gateway"


def test_local_batching_and_max_batch_size_are_kept() -> None:
    local = gateway_config(
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500 }\n"
        "instance_group [{ kind: KIND_CPU count: 3 }]"
    )
    completed = merge_upstream_config(local, UPSTREAM, SETTINGS)
    assert completed.max_batch_size == 8
    assert completed.dynamic_batching.max_queue_delay_microseconds == 500
    assert completed.instance_group[0].count == 3


def test_a_local_max_batch_size_above_upstreams_is_refused() -> None:
    with pytest.raises(ModelConfigError, match="exceeds the max_batch_size 16"):
        merge_upstream_config(gateway_config("max_batch_size: 32"), UPSTREAM, SETTINGS)
    no_batching = ModelConfig()
    no_batching.CopyFrom(UPSTREAM)
    no_batching.max_batch_size = 0
    with pytest.raises(ModelConfigError, match="max_batch_size 0"):
        merge_upstream_config(gateway_config("max_batch_size: 4"), no_batching, SETTINGS)
    completed = merge_upstream_config(gateway_config(), no_batching, SETTINGS)
    assert completed.max_batch_size == 0 and not completed.HasField("dynamic_batching")


def test_local_tensors_must_match_upstream() -> None:
    explicit = gateway_config(
        'max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [4] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]'
    )
    completed = merge_upstream_config(explicit, UPSTREAM, SETTINGS)
    assert [t.name for t in completed.output] == ["y"]  # only what the local config asks for
    assert not completed.HasField("dynamic_batching")  # written with intent: left alone
    unknown = gateway_config('input [{ name: "z" data_type: TYPE_FP32 dims: [4] }]')
    with pytest.raises(ModelConfigError, match="'z' is not an input"):
        merge_upstream_config(unknown, UPSTREAM, SETTINGS)
    wrong_type = gateway_config('output [{ name: "y" data_type: TYPE_INT64 dims: [3] }]')
    with pytest.raises(ModelConfigError, match="INT64 here but FP32 upstream"):
        merge_upstream_config(wrong_type, UPSTREAM, SETTINGS)


def test_prepare_loads_a_gateway_with_an_empty_version_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[GatewaySettings] = []

    def fake_fetch(settings: GatewaySettings) -> ModelConfig:
        asked.append(settings)
        return UPSTREAM

    monkeypatch.setattr(gateway, "fetch_upstream_config", fake_fetch)
    (tmp_path / "linear" / "1").mkdir(parents=True)
    (tmp_path / "linear" / "config.pbtxt").write_text(f'backend: "triton_gateway"\n{URL}')
    prepared = prepare("linear", tmp_path / "linear", None, 4)
    assert prepared.versions == [1]
    assert prepared.config.max_batch_size == 16 and prepared.config.name == "linear"
    assert asked == [GatewaySettings("localhost:8001", "linear")]


def test_an_empty_version_folder_is_accepted_for_the_gateway_only(tmp_path: Path) -> None:
    (tmp_path / "onnx" / "1").mkdir(parents=True)
    with pytest.raises(ModelConfigError, match="model file not found"):
        prepare("onnx", tmp_path / "onnx", None, 4)


def test_onnx_models_have_no_config_completer() -> None:
    config = parse_config('platform: "onnxruntime_onnx" max_batch_size: 2')
    assert complete_config(config, "m", Path("unused")) is config
    assert runtime_factory(gateway_config()) is TritonGatewayRuntime


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "http_status", "grpc_code"),
    [
        (
            "StatusCode.INVALID_ARGUMENT",
            ErrorKind.INVALID_ARG,
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ("StatusCode.UNAVAILABLE", ErrorKind.UNAVAILABLE, 503, grpc.StatusCode.UNAVAILABLE),
        ("StatusCode.DEADLINE_EXCEEDED", ErrorKind.UNAVAILABLE, 503, grpc.StatusCode.UNAVAILABLE),
        ("StatusCode.NOT_FOUND", ErrorKind.UNAVAILABLE, 503, grpc.StatusCode.UNAVAILABLE),
        ("StatusCode.RESOURCE_EXHAUSTED", ErrorKind.UNAVAILABLE, 503, grpc.StatusCode.UNAVAILABLE),
        ("StatusCode.UNIMPLEMENTED", ErrorKind.UNSUPPORTED, 501, grpc.StatusCode.UNIMPLEMENTED),
        ("StatusCode.CANCELLED", ErrorKind.CANCELLED, 400, grpc.StatusCode.CANCELLED),
        ("StatusCode.INTERNAL", ErrorKind.INTERNAL, 500, grpc.StatusCode.INTERNAL),
        ("StatusCode.UNKNOWN", ErrorKind.INTERNAL, 500, grpc.StatusCode.INTERNAL),
        (None, ErrorKind.INTERNAL, 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_upstream_status_maps_to_the_right_kind(
    status: str | None, kind: ErrorKind, http_status: int, grpc_code: grpc.StatusCode
) -> None:
    error = upstream_error(InferenceServerException("boom", status=status), SETTINGS)
    assert error.kind is kind
    assert HTTP_STATUS_BY_KIND[error.kind] == http_status
    assert GRPC_CODE_BY_KIND[error.kind] == grpc_code
    assert "boom" in error.message


def test_error_messages_say_where_except_for_the_clients_own_mistakes() -> None:
    invalid = upstream_error(
        InferenceServerException("x must not contain NaN", "StatusCode.INVALID_ARGUMENT"),
        SETTINGS,
    )
    assert invalid.message == "x must not contain NaN"
    timeout = upstream_error(
        InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED"),
        GatewaySettings("h:1", "m", timeout_s=0.5),
    )
    assert "triton_timeout_s=0.5" in timeout.message and "'m' at h:1" in timeout.message
    plain = upstream_error(RuntimeError("socket closed"), SETTINGS)
    assert plain.kind is ErrorKind.INTERNAL and "socket closed" in plain.message


# --- runtime, with a fake tritonclient --------------------------------------------------------


class FakeResult:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


class FakeClient:
    def __init__(self, ready: bool = True, error: Exception | None = None) -> None:
        self.ready, self.error, self.closed = ready, error, 0
        self.calls: list[tuple[str, list[Any], dict[str, Any]]] = []

    def is_model_ready(self, model: str, version: str, client_timeout: float) -> bool:
        return self.ready

    def infer(self, model: str, inputs: list[Any], **kwargs: Any) -> FakeResult:
        self.calls.append((model, inputs, kwargs))
        if self.error is not None:
            raise self.error
        return FakeResult({"upper": np.array([[b"AB"]], dtype=np.object_)})

    def close(self) -> None:
        self.closed += 1


def bytes_config() -> ModelConfig:
    return gateway_config(
        'max_batch_size: 4\ninput [{ name: "text" data_type: TYPE_STRING dims: [1] }]\n'
        'output [{ name: "upper" data_type: TYPE_STRING dims: [1] }]',
        triton_model="upper",
        triton_timeout_s="3",
    )


def test_runtime_sends_bytes_and_returns_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient()
    monkeypatch.setattr(gateway, "_connect", lambda settings: client)
    runtime = TritonGatewayRuntime(bytes_config(), Path("unused"), 0)
    outputs = runtime.infer({"text": np.array([[b"ab"]], dtype=np.object_)}, ["upper"])
    assert outputs["upper"].tolist() == [[b"AB"]]
    model, inputs, kwargs = client.calls[0]
    assert model == "upper" and kwargs["client_timeout"] == 3.0
    assert inputs[0].name() == "text" and inputs[0].datatype() == "BYTES"
    assert inputs[0].shape() == [1, 1]
    runtime.close()
    runtime.close()
    assert client.closed == 1
    with pytest.raises(ServingError) as closed:
        runtime.infer({"text": np.array([[b"ab"]], dtype=np.object_)}, ["upper"])
    assert closed.value.kind is ErrorKind.UNAVAILABLE


def test_runtime_maps_upstream_errors_and_missing_outputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeClient(error=InferenceServerException("bad", "StatusCode.INVALID_ARGUMENT"))
    monkeypatch.setattr(gateway, "_connect", lambda settings: client)
    runtime = TritonGatewayRuntime(bytes_config(), Path("unused"), 1)
    text = {"text": np.array([[b"ab"]], dtype=np.object_)}
    with pytest.raises(ServingError) as invalid:
        runtime.infer(text, ["upper"])
    assert invalid.value.kind is ErrorKind.INVALID_ARG
    client.error = None
    with pytest.raises(ServingError, match="returned no output 'other'"):
        runtime.infer(text, ["other"])


def test_runtime_refuses_an_upstream_that_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(ready=False)
    monkeypatch.setattr(gateway, "_connect", lambda settings: client)
    with pytest.raises(ServingError, match="is not ready") as error:
        TritonGatewayRuntime(bytes_config(), Path("unused"), 0)
    assert error.value.kind is ErrorKind.UNAVAILABLE
    assert client.closed == 1
