"""The model repository contract shared by build tools (export, optimize) and the server.

Triton layout:  REPO/NAME/config.pbtxt  +  REPO/NAME/<version>/model.onnx | model.plan
plus ferry's sidecar files in the version folder (export/optimize reports, drift reference).
config.pbtxt is Triton's ModelConfig in protobuf text format, parsed with the compiled protos that
ship in tritonclient, so the same folder loads in a real Triton.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, TypeAlias

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as mc

# the tensor vocabulary of the contract, re-exported for the build tools
from server.types import NUMPY_DTYPE_BY_DATATYPE as NUMPY_DTYPE_BY_DATATYPE
from server.types import TensorSpec as TensorSpec

ModelConfig = mc.ModelConfig
ConfigDataType: TypeAlias = mc.DataType.ValueType
KIND_GPU = mc.ModelInstanceGroup.Kind.KIND_GPU
KIND_CPU = mc.ModelInstanceGroup.Kind.KIND_CPU

CONFIG_FILENAME = "config.pbtxt"
EXPORT_REPORT_FILENAME = "export_report.json"
OPTIMIZE_REPORT_FILENAME = "optimize_report.json"
REFERENCE_FILENAME = "reference.npz"

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
DEFAULT_MODEL_FILENAME_BY_PLATFORM = {ONNX_PLATFORM: "model.onnx", TENSORRT_PLATFORM: "model.plan"}
# Triton's ONNX Runtime / TensorRT backends auto-complete max_batch_size to this
# (--backend-config=default-max-batch-size=4).
DEFAULT_MAX_BATCH_SIZE = 4

_MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _config_type_pairs() -> list[tuple[str, ConfigDataType]]:
    names = [
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BF16",
    ]
    pairs = [(name, mc.DataType.Value(f"TYPE_{name}")) for name in names]
    pairs.append(("BYTES", mc.DataType.Value("TYPE_STRING")))
    return pairs


DATATYPE_BY_CONFIG_TYPE: dict[ConfigDataType, str] = {
    enum: name for name, enum in _config_type_pairs()
}
CONFIG_TYPE_BY_DATATYPE: dict[str, ConfigDataType] = {
    name: enum for name, enum in _config_type_pairs()
}

# onnx.TensorProto.DataType -> KServe datatype (numbers from onnx.proto, so onnx is not imported).
DATATYPE_BY_ONNX_ELEM_TYPE: dict[int, str] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}


class ModelConfigError(ValueError):
    """config.pbtxt (or a config given to the load API) is unreadable or inconsistent."""


# the longest file name the filesystem takes (NAME_MAX on Linux); a longer model name is the
# client's error (400), not an OSError (ENAMETOOLONG) from the first path it reaches
MAX_MODEL_NAME_BYTES = 255


def is_valid_model_name(name: str) -> bool:
    """True for a plain folder name: no path separators, no '..', nothing hidden, not longer
    than a file name may be."""
    return (
        len(name) <= MAX_MODEL_NAME_BYTES  # the pattern is ASCII: characters are bytes
        and bool(_MODEL_NAME_PATTERN.match(name))
        and name not in (".", "..")
        and not name.startswith(".")
    )


def parse_config(text: str) -> ModelConfig:
    """Parse config.pbtxt text into a ModelConfig."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"config.pbtxt does not parse: {exc}") from exc
    return config


def read_config(model_dir: Path) -> ModelConfig | None:
    """Read REPO/NAME/config.pbtxt; None when the model has no config (it is auto-completed)."""
    path = Path(model_dir) / CONFIG_FILENAME
    if not path.is_file():
        return None
    return parse_config(path.read_text())


def format_config(config: ModelConfig) -> str:
    """ModelConfig as protobuf text, the form config.pbtxt holds."""
    return str(text_format.MessageToString(config))


def write_config(model_dir: Path, config: ModelConfig) -> Path:
    """Write config.pbtxt atomically (a reader never sees half a file)."""
    path = Path(model_dir) / CONFIG_FILENAME
    atomic_write_text(path, format_config(config))
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def version_numbers(model_dir: Path) -> list[int]:
    """Numeric version folders of a model, ascending (Triton ignores non-numeric folders)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    )


def next_version(model_dir: Path) -> int:
    """The next free version number (1 for a new model)."""
    versions = version_numbers(model_dir)
    return versions[-1] + 1 if versions else 1


def model_filename(config: ModelConfig) -> str:
    """The model file inside a version folder: default_model_filename or the platform default."""
    if config.default_model_filename:
        return str(config.default_model_filename)
    return DEFAULT_MODEL_FILENAME_BY_PLATFORM.get(config.platform or ONNX_PLATFORM, "model.onnx")


def tensor_specs(config: ModelConfig) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs as the wire sees them: a leading -1 when the model batches."""
    batch_prefix: tuple[int, ...] = (-1,) if config.max_batch_size > 0 else ()

    def spec(tensor: Any) -> TensorSpec:
        datatype = DATATYPE_BY_CONFIG_TYPE.get(tensor.data_type)
        if datatype is None:
            raise ModelConfigError(f"tensor '{tensor.name}' has no valid data_type")
        dims = batch_prefix + tuple(int(d) for d in tensor.dims)
        return TensorSpec(tensor.name, datatype, dims, getattr(tensor, "optional", False))

    return [spec(t) for t in config.input], [spec(t) for t in config.output]


# --- JSON form (GET /v2/models/{m}/config, the load API's "config" parameter) ----------------


def config_to_json(config: ModelConfig) -> dict[str, Any]:
    """The bare ModelConfig JSON Triton serves: snake_case, defaults printed, int64 as numbers."""
    normalized = ModelConfig()
    normalized.CopyFrom(config)
    normalize_config(normalized)
    data: dict[str, Any] = json_format.MessageToDict(
        normalized,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _int64_strings_to_numbers(data, ModelConfig.DESCRIPTOR)
    return data


def config_from_json(data: str | dict[str, Any]) -> ModelConfig:
    """Parse a ModelConfig from JSON text or a dict (the repository load API's config)."""
    config = ModelConfig()
    if isinstance(data, str) and not data.lstrip().startswith("{"):
        raise ModelConfigError("model config JSON must be an object")
    try:
        if isinstance(data, str):
            json_format.Parse(data, config)
        else:
            json_format.ParseDict(data, config)
    except json_format.ParseError as exc:
        raise ModelConfigError(f"model config JSON does not parse: {exc}") from exc
    return config


def normalize_config(config: ModelConfig) -> None:
    """Fill the defaults Triton fills before serving a config."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if (
        config.HasField("dynamic_batching")
        and not config.dynamic_batching.preferred_batch_size
        and config.max_batch_size > 0
    ):
        config.dynamic_batching.preferred_batch_size.append(config.max_batch_size)
    if config.HasField("sequence_batching"):
        sequence = config.sequence_batching
        if not sequence.max_sequence_idle_microseconds:
            sequence.max_sequence_idle_microseconds = 1_000_000  # Triton's default
        if (
            sequence.HasField("oldest")
            and not sequence.oldest.preferred_batch_size
            and config.max_batch_size > 0
        ):
            sequence.oldest.preferred_batch_size.append(config.max_batch_size)
    if not config.instance_group:  # as Triton on a host without GPUs: one CPU instance
        config.instance_group.add(name=config.name, kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    for index, group in enumerate(config.instance_group):
        group.name = group.name or f"{config.name}_{index}"


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _int64_strings_to_numbers(data: Any, descriptor: Descriptor) -> None:
    """proto3 JSON writes int64 as strings; Triton's /config writes numbers."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for map_key, item in value.items():
                if value_field.message_type is not None:
                    _int64_strings_to_numbers(item, value_field.message_type)
                elif value_field.type in _INT64_TYPES:
                    value[map_key] = int(item)
        elif field.message_type is not None:
            items = value if isinstance(value, list) else [value]
            for item in items:
                _int64_strings_to_numbers(item, field.message_type)
        elif field.type in _INT64_TYPES:
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)


# --- Auto-complete (as Triton's ONNX Runtime backend does) -----------------------------------


def autocomplete_from_onnx(
    config: ModelConfig | None,
    onnx_path: Path,
    name: str,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> ModelConfig:
    """Fill what the config leaves out from the ONNX graph: platform, I/O, max_batch_size.

    A model whose inputs and outputs all have a dynamic first dimension batches: it gets
    `max_batch_size` (default 4, Triton's) and dynamic batching, unless the config says otherwise.
    """
    import onnx

    completed = ModelConfig()
    if config is not None:
        completed.CopyFrom(config)
    completed.name = completed.name or name
    if not completed.platform and not completed.backend:
        completed.platform = ONNX_PLATFORM
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    graph_outputs = list(model.graph.output)

    def dims_of(value_info: Any) -> list[int]:
        dims = value_info.type.tensor_type.shape.dim
        return [
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims
        ]

    all_shapes = [dims_of(v) for v in graph_inputs + graph_outputs]
    batches = bool(all_shapes) and all(shape and shape[0] == -1 for shape in all_shapes)
    explicit_batch = config is not None and config.max_batch_size > 0
    if not completed.max_batch_size and batches and config_may_batch(config):
        completed.max_batch_size = default_max_batch_size
    strip = 1 if completed.max_batch_size > 0 else 0
    if explicit_batch and not batches:
        raise ModelConfigError(
            f"max_batch_size {config.max_batch_size if config else 0} needs a dynamic first "
            "dimension on every input and output of the ONNX model"
        )

    def complete(section: Any, value_infos: list[Any]) -> None:
        known = {t.name for t in section}
        for value_info in value_infos:
            if value_info.name in known:
                continue
            elem_type = value_info.type.tensor_type.elem_type
            datatype = DATATYPE_BY_ONNX_ELEM_TYPE.get(elem_type)
            if datatype is None:
                raise ModelConfigError(
                    f"ONNX tensor '{value_info.name}' has an unsupported element type {elem_type}"
                )
            tensor = section.add()
            tensor.name = value_info.name
            tensor.data_type = CONFIG_TYPE_BY_DATATYPE[datatype]
            tensor.dims.extend(dims_of(value_info)[strip:])

    complete(completed.input, graph_inputs)
    complete(completed.output, graph_outputs)
    if (
        completed.max_batch_size > 1
        and not completed.HasField("dynamic_batching")
        and not completed.HasField("sequence_batching")
    ):
        completed.dynamic_batching.SetInParent()
    return completed


def config_may_batch(config: ModelConfig | None) -> bool:
    """A config that explicitly says max_batch_size: 0 must not be auto-completed to batch."""
    if config is None:
        return True
    # proto3 cannot tell "0" from "absent"; a config that lists inputs was written with intent.
    return len(config.input) == 0 and len(config.output) == 0
