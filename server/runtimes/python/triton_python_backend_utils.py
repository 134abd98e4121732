"""ferry's `triton_python_backend_utils`: the API a Triton model.py imports as `pb_utils`.

Written for ferry after Triton's python_backend documentation: the same names, signatures and
behaviour (tensors, requests, responses, errors, response senders of decoupled models, BLS
`exec`/`async_exec`, the model-control calls, the logger, `ModelConfig` of
`auto_complete_config`). The model process imports it under the name
`triton_python_backend_utils`; it talks to the server through the `_Backend` the process installs.
Custom metrics (`MetricFamily`) are not supported and say so.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# config data_type names -> numpy types (TYPE_STRING: numpy object arrays of bytes)
TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# TRITONSERVER_DataType numbers (BOOL=1 ... BYTES=13) and their numpy types
_NUMPY_BY_TRITON_TYPE: dict[int, Any] = {
    number: TRITON_STRING_TO_NUMPY[name]
    for number, name in enumerate(
        [
            "TYPE_BOOL",
            "TYPE_UINT8",
            "TYPE_UINT16",
            "TYPE_UINT32",
            "TYPE_UINT64",
            "TYPE_INT8",
            "TYPE_INT16",
            "TYPE_INT32",
            "TYPE_INT64",
            "TYPE_FP16",
            "TYPE_FP32",
            "TYPE_FP64",
            "TYPE_STRING",
        ],
        start=1,
    )
}
_TRITON_TYPE_BY_NUMPY: dict[Any, int] = {
    np.dtype(numpy_type): number for number, numpy_type in _NUMPY_BY_TRITON_TYPE.items()
}


# --- the channel to the server (installed by the model process) -------------------------------


class _Backend(Protocol):
    def call(self, kind: str, payload: Any) -> Any: ...

    def call_async(self, kind: str, payload: Any) -> asyncio.Future[Any]: ...

    def send_response(self, key: tuple[int, int], response: Any, flags: int) -> None: ...

    def log(self, level: str, message: str) -> None: ...


_backend: _Backend | None = None


def _require_backend() -> _Backend:
    if _backend is None:
        raise TritonModelException(
            "this call needs the server: it works only inside a model served by ferry"
        )
    return _backend


# --- errors ----------------------------------------------------------------------------------


class TritonModelException(Exception):
    """Raise it in initialize/execute/finalize to fail with a message."""


class TritonError:
    """An error a response carries; the code is one of the class constants (INTERNAL by default)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        if message is None:
            raise TypeError("TritonError needs a message")
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {ERROR_CODE_NAMES[self._code]})"


ERROR_CODE_NAMES = (
    "UNKNOWN",
    "INTERNAL",
    "NOT_FOUND",
    "INVALID_ARG",
    "UNAVAILABLE",
    "UNSUPPORTED",
    "ALREADY_EXISTS",
    "CANCELLED",
)


# --- tensors ---------------------------------------------------------------------------------


class MemoryType(enum.IntEnum):
    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU
TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU


class PreferredMemory:
    """Where BLS outputs should be placed (ferry serves CPU tensors to Python models)."""

    def __init__(self, preferred_memory_type: MemoryType, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class Tensor:
    """A named tensor held as a numpy array (BYTES: an object array of bytes)."""

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TypeError("Tensor name must be a string")
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Tensor '{name}': data must be a numpy array, got {type(data)}")
        dtype = data.dtype  # every model builds its outputs here: one lookup of each attribute
        kind = dtype.kind
        if (
            kind == "S"
            or kind == "U"
            or (kind == "O" and not all(isinstance(item, bytes) for item in data.flat))
        ):
            data = _to_object_bytes(data)  # BYTES elements: bytes, anything else as str().encode()
        elif kind != "O" and dtype not in _TRITON_TYPE_BY_NUMPY:
            raise TypeError(f"Tensor '{name}': numpy dtype {dtype} has no Triton data type")
        self._name = name
        self._array = data

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray) -> Tensor:
        """A tensor from the wire: already a valid array, so no checks."""
        tensor = cls.__new__(cls)
        tensor._name, tensor._array = name, array
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        array: np.ndarray = self._array
        return array

    def triton_dtype(self) -> int:
        return _TRITON_TYPE_BY_NUMPY[np.dtype(self._array.dtype)]

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._array.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        device: tuple[int, int] = self._array.__dlpack_device__()
        return device

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """A tensor from a DLPack capsule or any object with `__dlpack__` (CPU memory only)."""
        if hasattr(capsule, "__dlpack__"):
            return Tensor(name, np.from_dlpack(capsule))
        raise TritonModelException(
            "ferry's from_dlpack takes an object with __dlpack__ (e.g. a torch or numpy array)"
        )

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


def _to_object_bytes(array: np.ndarray) -> np.ndarray:
    items = [item if isinstance(item, bytes) else str(item).encode() for item in array.flat]
    converted = np.empty(len(items), dtype=np.object_)
    converted[:] = items
    return converted.reshape(array.shape)


# --- requests and responses ------------------------------------------------------------------


class InferenceTrace:
    """Triton's trace handle; ferry has no tracing here, so the context is None."""

    def get_context(self) -> str | None:
        return None


_NO_TRACE = InferenceTrace()


class InferenceResponse:
    """The answer to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        tensors = list(output_tensors or [])
        for tensor in tensors:
            if not isinstance(tensor, Tensor):
                raise TypeError(f"output_tensors must hold pb_utils.Tensor objects, got {tensor!r}")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError("error must be a pb_utils.TritonError")
        self._tensors = tensors
        self._error = error
        self._parameters = _parameters_json(parameters) if parameters else "{}"

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return self._parameters


class InferenceResponseSender:
    """Sends the responses of one request (decoupled models: any number, then FINAL)."""

    def __init__(self, key: tuple[int, int], on_send: Any) -> None:
        self._key = key
        self._on_send = on_send
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TypeError("send takes a pb_utils.InferenceResponse or None")
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is not "
                "equal to TRITONSERVER_RESPONSE_COMPLETE_FINAL."
            )
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        self._on_send(self._key, response, flags)

    def is_cancelled(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed


class InferenceRequest:
    """A request the model received, or one it builds to call another model (BLS)."""

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] | None = None,
        requested_output_names: Sequence[str] | None = None,
        model_name: str | None = None,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: InferenceTrace | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        if inputs is None or requested_output_names is None or model_name is None:
            raise TypeError("InferenceRequest needs inputs, requested_output_names and model_name")
        if not isinstance(correlation_id, (int, str)):
            raise TritonModelException("Correlation ID must be integer or string")
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self.model_name = model_name
        self.model_version = int(model_version)
        self._flags = flags
        self._timeout = timeout
        self._trace = trace or InferenceTrace()
        self._parameters = (
            parameters if isinstance(parameters, str) else _parameters_json(parameters)
        )
        self._sender: InferenceResponseSender | None = None
        self._answer: tuple[tuple[int, int], Any] | None = None  # a received request's sender
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    @classmethod
    def _received(
        cls,
        request_id: str,
        correlation_id: int | str,
        inputs: list[Tensor],
        requested_output_names: set[str],
        parameters: str,
        flags: int,
        answer: tuple[tuple[int, int], Any],
    ) -> InferenceRequest:
        """A request execute() receives (built from the wire, so no checks). `answer`: the key
        and callback of its response sender, made when the model asks for it (most never do)."""
        request = cls.__new__(cls)
        request._request_id, request._correlation_id = request_id, correlation_id
        request._inputs, request._requested = inputs, requested_output_names  # type: ignore[assignment]
        request.model_name, request.model_version = "", -1
        request._flags, request._timeout, request._trace = flags, 0, _NO_TRACE
        request._parameters, request._sender, request._answer = parameters, None, answer
        request._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def trace(self) -> InferenceTrace:
        return self._trace

    def requested_output_names(self) -> list[str]:
        return self._requested

    def is_cancelled(self) -> bool:
        return False

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException(
                "request rescheduling needs the iterative sequence batcher, which ferry lacks"
            )
        self._release_flags = flags

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            if self._answer is None:
                raise TritonModelException(
                    "get_response_sender works on the requests execute() receives"
                )
            self._sender = InferenceResponseSender(*self._answer)
        return self._sender

    # BLS: call another model ferry serves, through its scheduler
    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on `model_name` and wait (decoupled: an iterator of responses)."""
        backend = _require_backend()
        if decoupled:
            return ResponseIterator(backend.call("infer_stream", self._bls_payload()))
        return _response_from_payload(backend.call("infer", self._bls_payload()))

    def async_exec(self, decoupled: bool = False) -> asyncio.Future[Any]:
        """Like exec, as an awaitable (call it from `async def execute`)."""
        backend = _require_backend()
        loop = asyncio.get_running_loop()
        if decoupled:
            return loop.run_in_executor(None, self.exec, True)
        inner = backend.call_async("infer", self._bls_payload())
        outer: asyncio.Future[Any] = loop.create_future()

        def done(future: asyncio.Future[Any]) -> None:
            if outer.done():
                return
            if future.exception() is not None:
                outer.set_exception(future.exception())  # type: ignore[arg-type]
            else:
                outer.set_result(_response_from_payload(future.result()))

        inner.add_done_callback(done)
        return outer

    def _bls_payload(self) -> tuple[Any, ...]:
        return (
            self.model_name,
            self.model_version,
            self._request_id,
            self._correlation_id,
            [(t.name(), t.as_numpy()) for t in self._inputs],
            list(self._requested),
            self._parameters,
            self._flags,
            self._timeout,
        )


class ResponseIterator:
    """The responses of a decoupled BLS call, in order."""

    def __init__(self, items: Any) -> None:
        self._items: Iterator[Any] = iter(items)

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        return _response_from_payload(next(self._items))

    def cancel(self) -> None:
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


def _parameters_json(parameters: dict[str, Any] | None) -> str:
    if not parameters:
        return "{}"
    if not isinstance(parameters, dict):
        raise TypeError("parameters must be a dict")
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, (bool, int, str)):
            raise TritonModelException(
                f"parameter '{key}': keys must be str and values bool, int or str"
            )
    return json.dumps(parameters)


def _response_from_payload(payload: Any) -> InferenceResponse:
    outputs, error, parameters = payload
    response = InferenceResponse(
        [Tensor(name, array) for name, array in outputs],
        TritonError(error[1], ERROR_CODE_NAMES.index(error[0])) if error else None,
    )
    response._parameters = parameters
    return response


# --- helpers model.py files use --------------------------------------------------------------


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input tensor called `name`, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output tensor called `name`, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config entry of input `name` (model_config: the parsed JSON), or None."""
    return next((i for i in model_config.get("input", []) if i["name"] == name), None)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The config entry of output `name`, or None."""
    return next((o for o in model_config.get("output", []) if o["name"] == name), None)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    """True when the config's model_transaction_policy is decoupled."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """'TYPE_FP32' -> numpy.float32 (KeyError for an unknown name, as in Triton)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """TRITONSERVER_DataType number -> numpy type (None when unknown)."""
    return _NUMPY_BY_TRITON_TYPE.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """numpy type -> TRITONSERVER_DataType number (None when it has none)."""
    if data_type in (np.bytes_, np.object_):
        return 13
    try:
        return _TRITON_TYPE_BY_NUMPY.get(np.dtype(data_type))
    except TypeError:
        return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """BYTES tensor -> Triton's wire form: each element as a 4-byte length then its bytes."""
    if input_tensor.size == 0:
        return b""
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    chunks = []
    for item in input_tensor.flat:
        data = item if isinstance(item, bytes) else str(item).encode()
        chunks.append(struct.pack("<I", len(data)))
        chunks.append(data)
    return b"".join(chunks)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """Triton's wire form -> a 1-D object array of bytes."""
    items, offset = [], 0
    view = memoryview(encoded_tensor)
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        items.append(bytes(view[offset : offset + length]))
        offset += length
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


# --- model control from a model (explicit mode) ----------------------------------------------


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether a model (version) ferry serves is ready."""
    return bool(_require_backend().call("model_ready", (model_name, model_version)))


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load a model (explicit model control mode), optionally with a config and files."""
    _require_backend().call("load", (model_name, config, files or {}))


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model (explicit model control mode)."""
    _require_backend().call("unload", (model_name, unload_dependents))


# --- logging ---------------------------------------------------------------------------------


class Logger:
    """Writes to the server's log, tagged with the model instance."""

    class LogLevel(enum.Enum):
        INFO = "INFO"
        WARNING = "WARNING"
        ERROR = "ERROR"
        VERBOSE = "VERBOSE"

    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: Logger.LogLevel = LogLevel.INFO) -> None:
        if _backend is not None:
            _backend.log(level.value, str(message))
        else:
            print(f"{level.value}: {message}", file=sys.stderr)

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, Logger.LogLevel.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, Logger.LogLevel.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, Logger.LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, Logger.LogLevel.VERBOSE)


class MetricFamily:
    """Custom metrics are not supported by ferry's Python models (a clear error, not silence)."""

    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        raise TritonModelException(
            f"custom metrics (MetricFamily '{name}') are not supported by ferry; "
            "ferry's own metrics cover each model on :8002"
        )


# --- auto_complete_config --------------------------------------------------------------------


class ModelConfig:
    """The config `auto_complete_config` may complete: max_batch_size, dynamic batching, inputs,
    outputs and the transaction policy."""

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._config: dict[str, Any] = (
            json.loads(model_config) if isinstance(model_config, str) else dict(model_config)
        )
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])
        self._config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{other}', but "
                    f"auto-complete-config function for model '{self._name()}' tries to set "
                    "scheduling_choice as 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, section: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        model = self._name()
        name = tensor.get("name")
        for key in tensor:
            if key not in allowed:
                raise ValueError(
                    f"{section} '{name}' in auto-complete-config function for model '{model}' "
                    f"contains property other than {', '.join(repr(a) for a in allowed)}."
                )
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"{section} '{name}' in auto-complete-config function for model '{model}' "
                    f"is missing '{key}' property."
                )
        for current in self._config[section]:
            if current["name"] != name:
                continue
            declared = current.get("data_type", "TYPE_INVALID")
            if declared not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype "
                    f"{declared} for {section} '{name}', model provides {tensor['data_type']}"
                )
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects dims "
                    f"{list(tensor['dims'])} but the model configuration specifies dims "
                    f"{list(current['dims'])}"
                )
            current.update(tensor)
            return
        self._config[section].append(dict(tensor))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    "model transaction property in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than 'decoupled'."
                )
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(
                    "trying to change decoupled property in auto-complete-config for model "
                    f"'{self._name()}', which is already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = wanted
