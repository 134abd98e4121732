"""Upstream Triton as a ferry runtime: ferry fronts a real Triton server as a gateway.

ferry keeps the protocol, its dynamic batcher, metrics and drift monitoring; the formed batch is
sent over gRPC to a model on an upstream NVIDIA Triton Inference Server. config.pbtxt:

    backend: "triton_gateway"              # or platform: "triton_gateway"
    parameters { key: "triton_url" value: { string_value: "localhost:8001" } }   # gRPC, required
    parameters { key: "triton_model" value: { string_value: "..." } }            # default: NAME
    parameters { key: "triton_model_version" value: { string_value: "2" } }      # default: latest
    parameters { key: "triton_timeout_s" value: { string_value: "5" } }          # per call

Version folders may be empty. A config without inputs and outputs is completed at load from the
upstream model's config (`complete_config`); each instance owns its own gRPC channel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.errors import ErrorKind, ServingError
from server.repository_format import (
    DATATYPE_BY_CONFIG_TYPE,
    ModelConfig,
    ModelConfigError,
)
from server.types import datatype_of

if TYPE_CHECKING:
    from server.runtimes import RuntimeContext

GATEWAY_PLATFORM = "triton_gateway"
LOAD_TIMEOUT_S = 10.0  # bound on the load-time checks when triton_timeout_s is not set
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1

# Upstream gRPC status -> ferry's error kind, seen from ferry's client: the request itself is
# wrong (INVALID_ARG) or the upstream cannot serve it now (UNAVAILABLE); anything else is ours.
KIND_BY_UPSTREAM_STATUS: dict[str, ErrorKind] = {
    "INVALID_ARGUMENT": ErrorKind.INVALID_ARG,
    "OUT_OF_RANGE": ErrorKind.INVALID_ARG,
    "UNAVAILABLE": ErrorKind.UNAVAILABLE,
    "DEADLINE_EXCEEDED": ErrorKind.UNAVAILABLE,
    "RESOURCE_EXHAUSTED": ErrorKind.UNAVAILABLE,
    "NOT_FOUND": ErrorKind.UNAVAILABLE,  # the upstream model went away: ferry's model exists
    "FAILED_PRECONDITION": ErrorKind.UNAVAILABLE,
    "UNAUTHENTICATED": ErrorKind.UNAVAILABLE,
    "PERMISSION_DENIED": ErrorKind.UNAVAILABLE,
    "ABORTED": ErrorKind.UNAVAILABLE,
    "CANCELLED": ErrorKind.CANCELLED,
    "UNIMPLEMENTED": ErrorKind.UNSUPPORTED,
    "INTERNAL": ErrorKind.INTERNAL,
    "UNKNOWN": ErrorKind.INTERNAL,
    "DATA_LOSS": ErrorKind.INTERNAL,
    "ALREADY_EXISTS": ErrorKind.INTERNAL,
}


def is_gateway(config: ModelConfig) -> bool:
    """True for a config served by fronting an upstream Triton."""
    return GATEWAY_PLATFORM in (config.platform, config.backend)


@dataclass(frozen=True)
class GatewaySettings:
    """Where the upstream model is: the `triton_*` parameters of config.pbtxt."""

    url: str
    model: str
    model_version: str = ""
    timeout_s: float | None = None

    @property
    def load_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else LOAD_TIMEOUT_S

    @property
    def target(self) -> str:
        version = f" version {self.model_version}" if self.model_version else ""
        return f"upstream Triton model '{self.model}'{version} at {self.url}"

    @classmethod
    def from_config(cls, config: ModelConfig, name: str = "") -> GatewaySettings:
        """Read and check the parameters; ModelConfigError names the one that is wrong."""

        def parameter(key: str) -> str:
            if key not in config.parameters:
                return ""
            return str(config.parameters[key].string_value).strip()

        url = parameter("triton_url")
        if not url:
            raise ModelConfigError(
                'a triton_gateway model needs parameters { key: "triton_url" value: '
                '{ string_value: "HOST:GRPC_PORT" } } (the upstream Triton\'s gRPC address)'
            )
        if url.startswith(("http://", "https://")):
            raise ModelConfigError(
                f"triton_url '{url}' must be the upstream's gRPC address "
                "HOST:PORT (e.g. localhost:8001), not an HTTP URL"
            )
        url = url.removeprefix("grpc://")
        model = parameter("triton_model") or config.name or name
        if not model:
            raise ModelConfigError("triton_model is empty and the model has no name")
        version = parameter("triton_model_version")
        if version not in ("", "-1") and not version.isdigit():
            raise ModelConfigError(f"triton_model_version '{version}' is not a version number")
        timeout_text = parameter("triton_timeout_s")
        timeout_s: float | None = None
        if timeout_text:
            try:
                timeout_s = float(timeout_text)
            except ValueError:
                timeout_s = math.nan
            if not math.isfinite(timeout_s) or timeout_s <= 0:
                raise ModelConfigError(
                    f"triton_timeout_s '{timeout_text}' must be a positive number of seconds"
                )
        return cls(url, model, "" if version == "-1" else version, timeout_s)


def _status_and_detail(exc: Exception) -> tuple[str, str]:
    """("INVALID_ARGUMENT", "upstream's message") from a tritonclient InferenceServerException."""
    status_method = getattr(exc, "status", None)
    status = str(status_method() or "") if callable(status_method) else ""
    message_method = getattr(exc, "message", None)
    detail = str(message_method() or "") if callable(message_method) else ""
    return status.rsplit(".", 1)[-1], detail or str(exc) or type(exc).__name__


def upstream_error(exc: Exception, settings: GatewaySettings) -> ServingError:
    """A tritonclient error (status like "StatusCode.INVALID_ARGUMENT") as a ServingError."""
    code, detail = _status_and_detail(exc)
    kind = KIND_BY_UPSTREAM_STATUS.get(code, ErrorKind.INTERNAL)
    if kind is ErrorKind.INVALID_ARG:
        return ServingError(kind, detail)  # the client's own mistake: upstream's words suffice
    if code == "DEADLINE_EXCEEDED":
        detail = f"no answer within triton_timeout_s={settings.timeout_s}s ({detail})"
    return ServingError(kind, f"{settings.target}: {code or 'error'}: {detail}")


def _connect(settings: GatewaySettings) -> Any:
    """A client with its own channel (a local subchannel pool: no connection shared)."""
    import tritonclient.grpc as grpcclient

    options = [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpcclient.InferenceServerClient(settings.url, channel_args=options)


def _check_ready(client: Any, settings: GatewaySettings) -> None:
    try:
        ready = client.is_model_ready(
            settings.model, settings.model_version, client_timeout=settings.load_timeout_s
        )
    except Exception as exc:  # tritonclient raises InferenceServerException
        code, detail = _status_and_detail(exc)
        raise ServingError(
            ErrorKind.UNAVAILABLE, f"{settings.target} is unreachable: {code or 'error'}: {detail}"
        ) from exc
    if not ready:
        raise ServingError(
            ErrorKind.UNAVAILABLE,
            f"{settings.target} is not ready (not loaded there, or loading failed upstream)",
        )


def fetch_upstream_config(settings: GatewaySettings) -> ModelConfig:
    """The upstream model's config, after checking that it is ready."""
    client = _connect(settings)
    try:
        _check_ready(client, settings)
        try:
            response = client.get_model_config(
                settings.model, settings.model_version, client_timeout=settings.load_timeout_s
            )
        except Exception as exc:
            raise upstream_error(exc, settings) from exc
        config: ModelConfig = response.config
        return config
    finally:
        client.close()


def merge_upstream_config(
    local: ModelConfig, upstream: ModelConfig, settings: GatewaySettings
) -> ModelConfig:
    """Complete the local config from the upstream's: I/O and max_batch_size; check the rest.

    Local dynamic_batching, instance_group and the rest are kept: ferry batches, upstream sees
    the formed batch. A local max_batch_size above upstream's could never run, so it fails.
    """
    completed = ModelConfig()
    completed.CopyFrom(local)
    autocompleted = not completed.input and not completed.output
    if autocompleted and not completed.max_batch_size:
        completed.max_batch_size = upstream.max_batch_size
    if completed.max_batch_size > upstream.max_batch_size:
        raise ModelConfigError(
            f"max_batch_size {completed.max_batch_size} exceeds the max_batch_size "
            f"{upstream.max_batch_size} of {settings.target}: lower it to at most "
            f"{upstream.max_batch_size}"
        )

    def complete(section: Any, upstream_tensors: Any, what: str) -> None:
        by_name = {tensor.name: tensor for tensor in upstream_tensors}
        for tensor in section:  # tensors the local config names must exist upstream, same type
            theirs = by_name.get(tensor.name)
            if theirs is None:
                raise ModelConfigError(
                    f"{what} '{tensor.name}' is not an {what} of "
                    f"{settings.target} (it has {sorted(by_name)})"
                )
            if theirs.data_type != tensor.data_type:
                raise ModelConfigError(
                    f"{what} '{tensor.name}' is "
                    f"{DATATYPE_BY_CONFIG_TYPE.get(tensor.data_type, '?')} here but "
                    f"{DATATYPE_BY_CONFIG_TYPE.get(theirs.data_type, '?')} upstream"
                )
        if section:
            return
        for theirs in upstream_tensors:
            tensor = section.add()
            tensor.name = theirs.name
            tensor.data_type = theirs.data_type
            tensor.dims.extend(theirs.dims)

    complete(completed.input, upstream.input, "input")
    complete(completed.output, upstream.output, "output")
    if (
        autocompleted
        and completed.max_batch_size > 1
        and not completed.HasField("dynamic_batching")
        and not completed.HasField("sequence_batching")
    ):
        completed.dynamic_batching.SetInParent()
    return completed


def complete_config(
    config: ModelConfig, name: str, version_path: Path | None = None
) -> ModelConfig:
    """Load-time step: check the upstream model is ready and complete the config from it."""
    settings = GatewaySettings.from_config(config, name)
    return merge_upstream_config(config, fetch_upstream_config(settings), settings)


class TritonGatewayRuntime:
    """One instance: a gRPC channel to the upstream Triton that runs each formed batch there."""

    # a blocking network round trip: the batcher must never run it on the event loop
    inline_capable = False

    def __init__(
        self,
        config: ModelConfig,
        version_path: Path,
        instance_index: int,
        context: RuntimeContext | None = None,
    ) -> None:
        self.settings = GatewaySettings.from_config(config)
        self.instance_index = instance_index
        self._datatypes = {
            tensor.name: DATATYPE_BY_CONFIG_TYPE.get(tensor.data_type, "")
            for tensor in config.input
        }
        self._client: Any = _connect(self.settings)
        try:
            _check_ready(self._client, self.settings)
        except BaseException:
            self.close()
            raise

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Send the batch upstream (blocking; ferry runs it on the instance's worker thread)."""
        import tritonclient.grpc as grpcclient

        client = self._client
        if client is None:
            raise ServingError(ErrorKind.UNAVAILABLE, "the gateway instance is closed")
        try:
            request_inputs = []
            for name, array in inputs.items():
                datatype = self._datatypes.get(name) or datatype_of(array)
                request_input = grpcclient.InferInput(name, list(array.shape), datatype)
                request_input.set_data_from_numpy(array)
                request_inputs.append(request_input)
            requested = [grpcclient.InferRequestedOutput(name) for name in output_names]
        except Exception as exc:  # tritonclient checks dtype against datatype client-side
            raise ServingError(
                ErrorKind.INVALID_ARG, f"cannot encode the request for the upstream Triton: {exc}"
            ) from exc
        try:
            result = client.infer(
                self.settings.model,
                request_inputs,
                model_version=self.settings.model_version,
                outputs=requested,
                client_timeout=self.settings.timeout_s,
            )
        except Exception as exc:
            raise upstream_error(exc, self.settings) from exc
        outputs: dict[str, np.ndarray] = {}
        for name in output_names:
            array = result.as_numpy(name)
            if array is None:
                raise ServingError(
                    ErrorKind.INTERNAL, f"{self.settings.target} returned no output '{name}'"
                )
            outputs[name] = array
        return outputs

    def close(self) -> None:
        """Close the channel (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
