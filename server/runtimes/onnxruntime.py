"""ONNX Runtime as a ferry runtime, configured as Triton's onnxruntime backend reads config.pbtxt.

- `parameters { key: "intra_op_thread_count" | "inter_op_thread_count" | "execution_mode" |
  "enable_mem_arena" | "enable_mem_pattern" }` set the session options, and keys starting with
  "session." are passed to ONNX Runtime as session config entries (e.g.
  "session.intra_op.allow_spinning": "0");
- `optimization { graph { level: -1 | 1 } }` picks BASIC / EXTENDED (default: ALL), as Triton does;
- `instance_group { kind: KIND_GPU }` runs on CUDA; `optimization { execution_accelerators {
  gpu_execution_accelerator [{ name: "tensorrt" parameters {...} }] } }` adds the TensorRT
  execution provider (precision_mode FP16, trt_engine_cache_path, max_workspace_size_bytes...).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.errors import ErrorKind, ServingError
from server.model_validation import ModelSignature, ModelTensor
from server.repository_format import (
    DATATYPE_BY_ONNX_ELEM_TYPE,
    KIND_GPU,
    ModelConfig,
    ModelConfigError,
    model_filename,
)
from server.runtimes.reshape import Reshapes

if TYPE_CHECKING:
    from server.runtimes import RuntimeContext

logger = logging.getLogger(__name__)


def _parameter(config: ModelConfig, key: str) -> str | None:
    if key in config.parameters:
        return str(config.parameters[key].string_value)
    return None


def session_options(config: ModelConfig, default_intra_op_threads: int = 0) -> Any:
    """Build ort.SessionOptions from the model config; `default_intra_op_threads` (0: ONNX
    Runtime's default, one per core) applies when the config sets no intra_op_thread_count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    level = config.optimization.graph.level if config.HasField("optimization") else 0
    options.graph_optimization_level = {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    intra = _parameter(config, "intra_op_thread_count")
    if intra is not None:
        options.intra_op_num_threads = int(intra)
    elif default_intra_op_threads > 0:
        options.intra_op_num_threads = default_intra_op_threads
    inter = _parameter(config, "inter_op_thread_count")
    if inter is not None:
        options.inter_op_num_threads = int(inter)
    if _parameter(config, "execution_mode") == "1":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    arena = _parameter(config, "enable_mem_arena")
    if arena is not None:
        options.enable_cpu_mem_arena = arena.lower() in ("1", "true")
    pattern = _parameter(config, "enable_mem_pattern")
    if pattern is not None:
        options.enable_mem_pattern = pattern.lower() in ("1", "true")
    for key, value in config.parameters.items():  # ORT session config entries, verbatim
        if key.startswith("session."):
            options.add_session_config_entry(key, value.string_value)
    return options


def execution_providers(config: ModelConfig, device_id: int = 0) -> list[Any]:
    """CPU by default; CUDA for KIND_GPU; TensorRT in front when the config asks for it."""
    wants_gpu = any(group.kind == KIND_GPU for group in config.instance_group)
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    providers: list[Any] = []
    for accelerator in accelerators:
        if accelerator.name != "tensorrt":
            raise ServingError(
                ErrorKind.UNSUPPORTED,
                f"GPU execution accelerator '{accelerator.name}' is not supported",
            )
        trt_options: dict[str, Any] = {"device_id": device_id}
        for key, value in accelerator.parameters.items():
            if key == "precision_mode":
                trt_options["trt_fp16_enable"] = value.upper() == "FP16"
                trt_options["trt_int8_enable"] = value.upper() == "INT8"
            elif key == "max_workspace_size_bytes":
                trt_options["trt_max_workspace_size"] = int(value)
            elif key in ("trt_engine_cache_path", "engine_cache_path"):
                trt_options["trt_engine_cache_enable"] = True
                trt_options["trt_engine_cache_path"] = value
            elif key == "trt_engine_cache_enable":
                trt_options["trt_engine_cache_enable"] = value.lower() in ("1", "true")
            else:
                trt_options[key] = value
        providers.append(("TensorrtExecutionProvider", trt_options))
    if wants_gpu or providers:
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    providers.append("CPUExecutionProvider")
    return providers


def read_signature(config: ModelConfig, version_path: Path) -> ModelSignature:
    """The inputs and outputs of a version's ONNX graph (read with onnx, weights left on disk)."""
    import onnx

    path = Path(version_path) / model_filename(config)
    if path.is_dir():  # Triton: a directory holds <dir>/model.onnx
        path = path / "model.onnx"
    if not path.is_file():
        raise ModelConfigError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends on a corrupt file
        raise ModelConfigError(f"cannot read {path.name}: {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}

    def tensor(value_info: Any) -> ModelTensor:
        kind = value_info.type.WhichOneof("value")
        if kind != "tensor_type":
            return ModelTensor(value_info.name, "", None, native_type=f"ONNX {kind}")
        tensor_type = value_info.type.tensor_type
        datatype = DATATYPE_BY_ONNX_ELEM_TYPE.get(tensor_type.elem_type, "")
        native = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        if not tensor_type.HasField("shape"):
            return ModelTensor(value_info.name, datatype, None, native_type=native)
        dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in tensor_type.shape.dim
        )
        return ModelTensor(value_info.name, datatype, dims, native_type=native)

    return ModelSignature(
        source=path.name,
        inputs=[tensor(v) for v in model.graph.input],
        outputs=[tensor(v) for v in model.graph.output],
        optional_inputs=frozenset(v.name for v in model.graph.input if v.name in initializers),
    )


# ORT's messages for inputs whose values a kernel rejects (Gather/GatherND/ScatterND indices,
# OneHot depth, Reshape sizes...): the request is at fault, not the server.
_DATA_FAULT = re.compile(
    r"out of (data )?bounds|out of range|must be within the inclusive range|"
    r"invalid (index|indices)|The input tensor cannot be reshaped",
    re.IGNORECASE,
)


def data_at_fault(error: BaseException) -> bool:
    """True when ONNX Runtime says an input's data is invalid (INVALID_ARGUMENT status, or a
    kernel message about out-of-range values): answered 400, not 500."""
    return type(error).__name__ == "InvalidArgument" or bool(_DATA_FAULT.search(str(error)))


def _to_ort_strings(name: str, array: np.ndarray) -> np.ndarray:
    """ORT's Python binding takes string tensors as `str` objects (it would str() bytes)."""
    decode = np.vectorize(
        lambda item: item.decode() if isinstance(item, bytes) else str(item), otypes=[np.object_]
    )
    try:
        decoded: np.ndarray = decode(array)
    except UnicodeDecodeError:
        raise ServingError(
            ErrorKind.INVALID_ARG,
            f"input '{name}': ONNX Runtime string tensors must be valid UTF-8",
        ) from None
    return decoded


def _from_ort_strings(array: np.ndarray) -> np.ndarray:
    encode = np.vectorize(
        lambda item: item.encode() if isinstance(item, str) else item, otypes=[np.object_]
    )
    encoded: np.ndarray = encode(array)
    return encoded


class OnnxRuntime:
    """One ONNX Runtime InferenceSession: a model instance."""

    def __init__(
        self,
        config: ModelConfig,
        version_path: Path,
        instance_index: int,
        context: RuntimeContext | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(version_path) / model_filename(config)
        if not path.exists():
            raise ServingError(ErrorKind.NOT_FOUND, f"model file not found: {path}")
        providers = execution_providers(config, self._device_id(config))
        available = set(ort.get_available_providers())
        missing = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [name for name in missing if name not in available]
        if missing:
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"execution providers {missing} are not available in this onnxruntime build "
                f"(available: {sorted(available)}); install the `gpu` extra on a GPU machine",
            )
        try:
            self._session = ort.InferenceSession(
                str(path),
                sess_options=session_options(config, context.cpu_threads if context else 0),
                providers=providers,
            )
        except Exception as exc:  # ORT raises several unrelated types for bad files
            raise ServingError(
                ErrorKind.INTERNAL, f"onnxruntime could not load {path.name}: {exc}"
            ) from exc
        self.providers: list[str] = list(self._session.get_providers())
        self.instance_index = instance_index
        self._reshapes = Reshapes(config)  # config `reshape`s: the model's shapes vs the wire's
        logger.debug("loaded %s instance %d on %s", path, instance_index, self.providers)

    @staticmethod
    def _device_id(config: ModelConfig) -> int:
        for group in config.instance_group:
            if group.kind == KIND_GPU and group.gpus:
                return int(group.gpus[0])
        return 0

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the session; ORT releases the GIL while it computes."""
        if self._reshapes:
            inputs = self._reshapes.to_model(inputs)
        feeds = {
            name: _to_ort_strings(name, array) if array.dtype == np.object_ else array
            for name, array in inputs.items()
        }
        try:
            results = self._session.run(list(output_names), feeds)
        except Exception as exc:
            raise ServingError(
                ErrorKind.INVALID_ARG if data_at_fault(exc) else ErrorKind.INTERNAL,
                f"onnxruntime execution failed: {exc}",
            ) from exc
        outputs = {
            name: _from_ort_strings(result) if result.dtype == np.object_ else result
            for name, result in zip(output_names, results, strict=True)
        }
        return self._reshapes.to_config(outputs) if self._reshapes else outputs

    def close(self) -> None:
        """Drop the session (ORT frees it when the last reference goes)."""
        self._session = None
