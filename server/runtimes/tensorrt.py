"""TensorRT runtime: runs a serialized engine (`model.plan`, platform tensorrt_plan) on one GPU.

tensorrt and the CUDA runtime bindings (cuda-python) are imported when the first instance loads.
Device buffers grow to the largest batch seen; copies and execution share one CUDA stream per
instance, and `infer` returns only after the stream is synchronized.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.errors import ErrorKind, ServingError
from server.model_validation import ModelSignature, ModelTensor, SignatureUnavailable
from server.repository_format import ModelConfig, ModelConfigError, model_filename
from server.runtimes.reshape import Reshapes

# tensorrt.DataType member name -> KServe datatype (FP8/INT4/FP4 have none)
DATATYPE_BY_TRT_TYPE = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "BF16": "BF16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}

if TYPE_CHECKING:
    from server.runtimes import RuntimeContext


def _check(result: Any) -> Any:
    """Unwrap a cuda-python call's (error, value...) tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ServingError(ErrorKind.INTERNAL, f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def _device_for(config: ModelConfig, instance_index: int) -> int:
    """The GPU of instance `instance_index`, from instance_group gpus (default GPU 0)."""
    gpus = [int(g) for group in config.instance_group for g in group.gpus]
    return gpus[instance_index % len(gpus)] if gpus else 0


def read_signature(config: ModelConfig, version_path: Path) -> ModelSignature:
    """The I/O tensors of a serialized engine, with their optimization profile bounds."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise SignatureUnavailable(f"tensorrt is not installed ({exc})") from exc
    plan_path = Path(version_path) / model_filename(config)
    if not plan_path.is_file():
        raise ModelConfigError(f"model file not found: {plan_path}")
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    try:
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    except Exception as exc:  # no CUDA device, driver mismatch
        raise SignatureUnavailable(f"TensorRT cannot deserialize engines here: {exc}") from exc
    if engine is None:
        raise ModelConfigError(
            f"{plan_path.name} does not deserialize with TensorRT {trt.__version__} on this GPU "
            "(engines are tied to the GPU and TensorRT version): rebuild with ferry optimize"
        )
    inputs, outputs, batch_limits = [], [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        trt_type = engine.get_tensor_dtype(name).name
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            outputs.append(
                ModelTensor(name, DATATYPE_BY_TRT_TYPE.get(trt_type, ""), dims, trt_type)
            )
            continue
        profiles = [
            engine.get_tensor_profile_shape(name, p)
            for p in range(engine.num_optimization_profiles)
        ]
        low = tuple(min(int(p[0][i]) for p in profiles) for i in range(len(dims)))
        high = tuple(max(int(p[2][i]) for p in profiles) for i in range(len(dims)))
        if profiles and dims and dims[0] == -1:
            batch_limits.append(high[0])
        inputs.append(
            ModelTensor(
                name,
                DATATYPE_BY_TRT_TYPE.get(trt_type, ""),
                dims,
                trt_type,
                min_dims=low if profiles else None,
                max_dims=high if profiles else None,
            )
        )
    del engine, runtime
    return ModelSignature(
        source=plan_path.name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=min(batch_limits) if batch_limits else None,
    )


class TensorRTRuntime:
    """One execution context of a deserialized TensorRT engine."""

    def __init__(
        self,
        config: ModelConfig,
        version_path: Path,
        instance_index: int,
        context: RuntimeContext | None = None,
    ) -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart  # type: ignore[import-untyped]

        self._trt, self._cudart = trt, cudart
        self._device = _device_for(config, instance_index)
        _check(cudart.cudaSetDevice(self._device))
        plan_path = Path(version_path) / model_filename(config)
        if not plan_path.is_file():
            raise ServingError(ErrorKind.NOT_FOUND, f"no TensorRT engine at {plan_path}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            raise ServingError(
                ErrorKind.INTERNAL,
                f"{plan_path} does not deserialize with TensorRT {trt.__version__} on this GPU "
                "(engines are tied to the GPU and TensorRT version): rebuild with ferry optimize",
            )
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._reshapes = Reshapes(config)  # config `reshape`s: the engine's shapes vs the wire's

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name` (grown, never shrunk)."""
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                _check(self._cudart.cudaFree(pointer))
            pointer = int(_check(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Copy inputs in, execute the engine, copy the requested outputs back."""
        if self._reshapes:
            inputs = self._reshapes.to_model(inputs)
        cudart = self._cudart
        _check(cudart.cudaSetDevice(self._device))
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []
        for name in self._inputs:
            array = np.ascontiguousarray(inputs[name], dtype=self._dtypes[name])
            keep.append(array)
            if not self._context.set_input_shape(name, tuple(array.shape)):
                raise ServingError(
                    ErrorKind.INVALID_ARG,
                    f"shape {array.shape} of '{name}' is outside the engine profile",
                )
            pointer = self._buffer(name, array.nbytes)
            _check(
                cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, h2d, self._stream)
            )
            self._context.set_tensor_address(name, pointer)
        results: dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            results[name] = np.empty(shape, dtype=self._dtypes[name])
            self._context.set_tensor_address(name, self._buffer(name, results[name].nbytes))
        if not self._context.execute_async_v3(self._stream):
            raise ServingError(ErrorKind.INTERNAL, "TensorRT execution failed")
        for name in output_names:
            host = results[name]
            _check(
                cudart.cudaMemcpyAsync(
                    host.ctypes.data, self._buffers[name][0], host.nbytes, d2h, self._stream
                )
            )
        _check(cudart.cudaStreamSynchronize(self._stream))
        outputs = {name: results[name] for name in output_names}
        return self._reshapes.to_config(outputs) if self._reshapes else outputs

    def close(self) -> None:
        """Free device buffers, the stream, the context and the engine."""
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine, self._runtime
