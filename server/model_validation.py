"""Load-time validation of config.pbtxt against the model file, as Triton's backends do it.

Every input and output the config names must exist in the model with the same datatype and a
compatible shape, and every input the model requires must be in the config; otherwise the version
is UNAVAILABLE with a message that names the tensor, the config's view and the model's view.
Shapes follow Triton's CompareDimsSupported: with `max_batch_size > 0` the model's first
dimension must be -1 and the config's dims follow it; ranks must match; a -1 in the model accepts
any config dim, a fixed model dim needs exactly that dim in the config (a config -1 against a
fixed model dim is refused: requests of other sizes would fail at run time). The sequence
batcher's control and state tensors (`sequence_batching`) count as listed inputs and outputs, as
in Triton's backends.

Each platform reads its model file in its runtime module (`read_signature`, found through the
table below, so the serving core never imports onnx or tensorrt at module level). Platforms with no
reader (e.g. an upstream Triton) are validated by their own loaders.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc.model_config_pb2 import ModelInput, ModelOutput

from server.repository_format import DATATYPE_BY_CONFIG_TYPE, ModelConfig, ModelConfigError
from server.sequence.policy import implicit_inputs, implicit_outputs

logger = logging.getLogger(__name__)

# platform -> "module:function(config, version_path) -> ModelSignature"
SIGNATURE_READER_BY_PLATFORM: dict[str, str] = {
    "onnxruntime_onnx": "server.runtimes.onnxruntime:read_signature",
    "onnxruntime": "server.runtimes.onnxruntime:read_signature",
    "tensorrt_plan": "server.runtimes.tensorrt:read_signature",
    "tensorrt": "server.runtimes.tensorrt:read_signature",
}


@dataclass(frozen=True, slots=True)
class ModelTensor:
    """A tensor as the model file declares it: -1 for a dynamic dim, None for an unknown rank."""

    name: str
    datatype: str  # KServe datatype; "" when the model's type has none (e.g. an ONNX sequence)
    dims: tuple[int, ...] | None
    native_type: str = ""  # the file's own name for the type, for messages about unknown types
    # TensorRT optimization profile bounds of an input (min and max dims); None: unbounded
    min_dims: tuple[int, ...] | None = None
    max_dims: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a model file takes and returns."""

    source: str  # the file, for messages ("model.onnx")
    inputs: Sequence[ModelTensor]
    outputs: Sequence[ModelTensor]
    # inputs the model can run without (ONNX initializers that are also graph inputs)
    optional_inputs: frozenset[str] = field(default_factory=frozenset)
    # the largest batch the file accepts (a TensorRT engine's profiles); None: unbounded
    max_batch_size: int | None = None


class SignatureUnavailable(Exception):
    """The model file cannot be read on this machine (e.g. TensorRT is not installed)."""


def shape_text(dims: Sequence[int] | None) -> str:
    """Triton's ShapeToString: [-1,16]."""
    return "[?]" if dims is None else "[" + ",".join(str(d) for d in dims) + "]"


def config_type_text(datatype: str) -> str:
    """The config's spelling of a KServe datatype (FP32 -> TYPE_FP32, BYTES -> TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def signature_reader(platform: str) -> Callable[[ModelConfig, Path], ModelSignature] | None:
    """The platform's model file reader, or None when the platform has none."""
    target = SIGNATURE_READER_BY_PLATFORM.get(platform)
    if target is None:
        return None
    module_name, attribute = target.split(":")
    reader: Callable[[ModelConfig, Path], ModelSignature] = getattr(
        importlib.import_module(module_name), attribute
    )
    return reader


def validate_model_file(config: ModelConfig, version_path: Path) -> ModelSignature | None:
    """Read the version's model file and raise ModelConfigError listing every mismatch.

    Returns the signature, or None when the platform has no reader. SignatureUnavailable
    propagates (the caller decides whether an unreadable file is an error).
    """
    reader = signature_reader(config.platform or config.backend)
    if reader is None:
        return None
    signature = reader(config, Path(version_path))
    problems = signature_problems(config, signature)
    if problems:
        raise ModelConfigError("; ".join(problems))
    return signature


def check_before_load(config: ModelConfig, version_path: Path) -> None:
    """Serving's check: mismatches raise; a file this machine cannot read is left to the runtime."""
    try:
        validate_model_file(config, version_path)
    except SignatureUnavailable as exc:
        logger.warning(
            "model '%s': config not checked against the model file: %s", config.name, exc
        )


def signature_problems(config: ModelConfig, signature: ModelSignature) -> list[str]:
    """Every way the config disagrees with the model file (empty: they agree)."""
    name = config.name
    prefix = f"unable to load model '{name}'"
    batching = config.max_batch_size > 0
    problems: list[str] = []
    model_inputs = {t.name: t for t in signature.inputs}
    model_outputs = {t.name: t for t in signature.outputs}
    # the sequence batcher's control and state tensors count as listed (as in Triton's backends)
    inputs = [*config.input, *implicit_inputs(config)]
    listed_outputs = {t.name for t in config.output}
    outputs = [
        *config.output,
        *(t for t in implicit_outputs(config) if t.name not in listed_outputs),
    ]
    config_inputs = {t.name for t in inputs}

    for kind, section, tensors in (
        ("input", inputs, model_inputs),
        ("output", outputs, model_outputs),
    ):
        for tensor in section:
            found = tensors.get(tensor.name)
            if found is None:
                allowed = ", ".join(sorted(tensors)) or "(none)"
                problems.append(
                    f"{prefix}, unexpected inference {kind} '{tensor.name}' in config.pbtxt, "
                    f"allowed {kind}s of {signature.source} are: {allowed}"
                )
                continue
            problems.extend(
                _tensor_problems(prefix, name, kind, tensor, found, batching, signature)
            )
    required = [t for t in signature.inputs if t.name not in signature.optional_inputs]
    counts = (
        f", configuration expects {len(inputs)} inputs, model provides {len(required)}"
        if len(inputs) != len(required)
        else ""
    )
    for needed in required:
        if needed.name not in config_inputs:
            problems.append(
                f"{prefix}{counts}: {signature.source} requires input '{needed.name}' "
                f"({needed.datatype or needed.native_type} {shape_text(needed.dims)}), which "
                "config.pbtxt does not list"
            )
    if (
        batching
        and signature.max_batch_size is not None
        and config.max_batch_size > signature.max_batch_size
    ):
        problems.append(
            f"{prefix}, configuration specified max-batch {config.max_batch_size} but "
            f"{signature.source} only supports max-batch {signature.max_batch_size}"
        )
    return problems


def _tensor_problems(
    prefix: str,
    model_name: str,
    kind: str,
    tensor: ModelInput | ModelOutput,
    found: ModelTensor,
    batching: bool,
    signature: ModelSignature,
) -> list[str]:
    datatype = DATATYPE_BY_CONFIG_TYPE.get(tensor.data_type, "")
    if datatype != found.datatype:
        model_type = (
            config_type_text(found.datatype) if found.datatype else found.native_type or "unknown"
        )
        return [
            f"{prefix}, configuration expects datatype {config_type_text(datatype)} for {kind} "
            f"'{tensor.name}', {signature.source} provides {model_type}"
        ]
    dims = tuple(
        int(d) for d in (tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)
    )
    model_dims = found.dims
    if model_dims is None:
        return []
    where = f"model '{model_name}', {kind} '{tensor.name}'"
    if not model_dims:  # a scalar: only all-1 config dims (and no batching) describe it
        if batching or any(d != 1 for d in dims):
            return [
                f"{where}: {signature.source} has a scalar tensor (shape []), which the "
                f"model configuration can only describe with dims of 1 and max_batch_size 0; "
                f"configuration provided: {shape_text(dims)}"
                + (" with max_batch_size > 0" if batching else "")
            ]
        return []
    if batching:
        if model_dims[0] != -1:
            return [
                f"{where}: for the model to support batching (max_batch_size > 0) the shape "
                "should have at least 1 dimension and the first dimension must be -1; but "
                f"shape expected by {signature.source} is {shape_text(model_dims)}"
            ]
        full_dims = (-1, *dims)
        config_view = (
            f"{len(full_dims)} dimensions (an initial batch dimension because max_batch_size > 0 "
            f"followed by the explicit tensor shape, making complete shape "
            f"{shape_text(full_dims)})"
        )
    else:
        full_dims = dims
        config_view = f"{len(dims)} dimensions (shape {shape_text(dims)})"
    if len(model_dims) != len(full_dims):
        return [
            f"{where}: {signature.source} expects {len(model_dims)} dimensions (shape "
            f"{shape_text(model_dims)}) but the model configuration specifies {config_view}"
        ]
    for index, (model_dim, config_dim) in enumerate(zip(model_dims, full_dims, strict=True)):
        if model_dim not in (-1, config_dim):
            return [
                f"{where}: {signature.source} expects shape {shape_text(model_dims)} but the "
                f"model configuration specifies {config_view}: dim {index} is "
                f"{config_dim} in config.pbtxt"
                + (" (any size)" if config_dim == -1 else "")
                + f", {model_dim} in {signature.source}"
            ]
    return _profile_problems(where, found, full_dims, batching, signature.source)


def _profile_problems(
    where: str, found: ModelTensor, dims: Sequence[int], batching: bool, source: str
) -> list[str]:
    """Fixed config dims must lie inside a TensorRT optimization profile's [min, max]."""
    if found.min_dims is None or found.max_dims is None:
        return []
    for index, dim in enumerate(dims):
        if (batching and index == 0) or dim == -1 or index >= len(found.max_dims):
            continue
        low, high = found.min_dims[index], found.max_dims[index]
        if not low <= dim <= high:
            return [
                f"{where}: the model configuration's dim {index} is {dim} but the optimization "
                f"profiles of {source} accept {low} to {high} (min {shape_text(found.min_dims)}, "
                f"max {shape_text(found.max_dims)})"
            ]
    return []
