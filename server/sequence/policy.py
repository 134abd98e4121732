"""What the sequence batcher takes from config.pbtxt's `sequence_batching`, checked as Triton
checks it (the same messages): the strategy and its fields, the control inputs and the implicit
state with its initial value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc.model_config_pb2 import ModelInput, ModelOutput

from server.repository_format import (
    CONFIG_TYPE_BY_DATATYPE,
    DATATYPE_BY_CONFIG_TYPE,
    ModelConfig,
    ModelConfigError,
)
from server.types import NUMPY_DTYPE_BY_DATATYPE

# ModelSequenceBatching.Control.Kind values (model_config.proto)
START, READY, END, CORRID = 0, 1, 2, 3
KIND_NAMES = {
    START: "CONTROL_SEQUENCE_START",
    END: "CONTROL_SEQUENCE_END",
    READY: "CONTROL_SEQUENCE_READY",
    CORRID: "CONTROL_SEQUENCE_CORRID",
}
CORRID_DATATYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")
IDLE_DEFAULT_US = 1_000_000  # Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS
INITIAL_STATE_FOLDER = "initial_state"  # REPO/NAME/initial_state/<data_file>
# ferry's bound on requests waiting in the backlog (Triton has none): parameter
# `ferry.max_sequence_backlog` overrides it
DEFAULT_MAX_BACKLOG = 65536


@dataclass(frozen=True, slots=True)
class ControlInput:
    """One control tensor: START/END/READY carry `false`/`true`, CORRID the sequence id."""

    name: str
    kind: int
    datatype: str  # KServe datatype
    false_value: Any = 0
    true_value: Any = 1


@dataclass(frozen=True, slots=True)
class StateSpec:
    """An implicit state: the model reads `input_name`, writes `output_name`; `initial` is one
    sequence's starting value (batch dim of 1 included when the model batches)."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]
    initial: np.ndarray


@dataclass(frozen=True, slots=True)
class SequencePolicy:
    """Everything the sequence batcher needs from a config."""

    name: str
    max_batch_size: int
    oldest: bool
    slots_per_instance: int
    idle_s: float
    max_queue_delay_s: float
    minimum_slot_utilization: float  # direct
    preferred_batch_sizes: tuple[int, ...]  # oldest
    preserve_ordering: bool  # oldest
    controls: tuple[ControlInput, ...]
    states: tuple[StateSpec, ...]
    max_backlog: int = DEFAULT_MAX_BACKLOG

    @property
    def corrid(self) -> ControlInput | None:
        return next((c for c in self.controls if c.kind == CORRID), None)

    @classmethod
    def from_config(cls, config: ModelConfig, model_dir: Path | None = None) -> SequencePolicy:
        """Read and check `sequence_batching` (ModelConfigError with Triton's message)."""
        validate_sequence_config(config)
        batching = config.sequence_batching
        name = str(config.name)
        max_batch_size = int(config.max_batch_size)
        oldest = batching.HasField("oldest")
        slots = max(1, max_batch_size)
        if oldest and batching.oldest.max_candidate_sequences > 0:
            slots = int(batching.oldest.max_candidate_sequences)
        if oldest:
            delay_us = batching.oldest.max_queue_delay_microseconds
            preferred = tuple(sorted(int(s) for s in batching.oldest.preferred_batch_size))
        else:
            delay_us = batching.direct.max_queue_delay_microseconds
            preferred = ()
        backlog = DEFAULT_MAX_BACKLOG
        if "ferry.max_sequence_backlog" in config.parameters:
            backlog = int(config.parameters["ferry.max_sequence_backlog"].string_value)
        return cls(
            name=name,
            max_batch_size=max_batch_size,
            oldest=oldest,
            slots_per_instance=slots,
            idle_s=(batching.max_sequence_idle_microseconds or IDLE_DEFAULT_US) / 1e6,
            max_queue_delay_s=delay_us / 1e6,
            minimum_slot_utilization=float(batching.direct.minimum_slot_utilization),
            preferred_batch_sizes=preferred or (max(1, max_batch_size),),
            preserve_ordering=bool(oldest and batching.oldest.preserve_ordering),
            controls=tuple(control_inputs(config)),
            states=tuple(state_specs(config, model_dir)),
            max_backlog=backlog,
        )


def _kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, str(kind))


def control_inputs(config: ModelConfig) -> list[ControlInput]:
    """The control tensors the config asks for, with Triton's checks and messages."""
    name = config.name
    controls: list[ControlInput] = []
    seen_tensors: set[str] = set()
    seen_kinds: set[int] = set()
    for control_input in config.sequence_batching.control_input:
        if not control_input.name:
            raise ModelConfigError(f"sequence batching control tensor must have a name for {name}")
        if control_input.name in seen_tensors:
            raise ModelConfigError(
                f"sequence batching control tensor '{control_input.name}' is specified for "
                f"multiple control kinds for {name}"
            )
        seen_tensors.add(control_input.name)
        for control in control_input.control:
            kind = int(control.kind)
            if kind in seen_kinds:
                raise ModelConfigError(
                    f"sequence batching specifies multiple {_kind_name(kind)} tensors for {name}"
                )
            seen_kinds.add(kind)
            controls.append(_control(name, control_input.name, kind, control))
    return controls


def _control(model: str, tensor: str, kind: int, control: Any) -> ControlInput:
    kind_name = _kind_name(kind)
    pairs = {
        "int32_false_true": ("INT32", list(control.int32_false_true)),
        "fp32_false_true": ("FP32", list(control.fp32_false_true)),
        "bool_false_true": ("BOOL", list(control.bool_false_true)),
    }
    given = {field: value for field, value in pairs.items() if value[1]}
    if kind == CORRID:
        if given:
            raise ModelConfigError(
                "sequence batching must not specify either 'int32_false_true', "
                f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {model}"
            )
        datatype = DATATYPE_BY_CONFIG_TYPE.get(control.data_type, "")
        if datatype not in CORRID_DATATYPES:
            raise ModelConfigError(
                f"unexpected data type for control {kind_name} for {model}. Allowed data types "
                "are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
            )
        return ControlInput(tensor, kind, datatype)
    if not given:
        raise ModelConfigError(
            "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
            f"'bool_false_true' for {kind_name} for {model}"
        )
    if len(given) > 1:
        raise ModelConfigError(
            "sequence batching specifies more than one from 'int32_false_true', "
            f"'fp32_false_true' and 'bool_false_true' for {kind_name} for {model}"
        )
    field, (datatype, values) = next(iter(given.items()))
    if len(values) != 2:
        raise ModelConfigError(
            f"sequence batching control '{field}' must have exactly 2 entries for "
            f"{kind_name} for {model}"
        )
    return ControlInput(tensor, kind, datatype, values[0], values[1])


def validate_sequence_config(config: ModelConfig) -> None:
    """Triton's ValidateModelConfig checks of `sequence_batching`."""
    if not config.HasField("sequence_batching"):
        return
    name = config.name
    batching = config.sequence_batching
    control_inputs(config)
    if batching.HasField("oldest"):
        for size in batching.oldest.preferred_batch_size:
            if size <= 0:
                raise ModelConfigError(
                    f"sequence batching preferred batch size must be positive for {name}"
                )
            if size > config.max_batch_size:
                raise ModelConfigError(
                    f"sequence batching preferred batch size must be <= max batch size for {name}"
                )
    if batching.HasField("direct"):
        utilization = batching.direct.minimum_slot_utilization
        if utilization < 0.0 or utilization > 1.0:
            raise ModelConfigError(
                f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for {name}"
            )
    if batching.iterative_sequence:
        raise ModelConfigError(
            f"iterative sequences (sequence_batching.iterative_sequence) are not supported for "
            f"{name}"
        )


def state_specs(config: ModelConfig, model_dir: Path | None = None) -> list[StateSpec]:
    """The implicit states with their initial values (Triton's checks and messages)."""
    batching = config.max_batch_size > 0
    specs: list[StateSpec] = []
    seen: set[str] = set()
    for state in config.sequence_batching.state:
        datatype = DATATYPE_BY_CONFIG_TYPE.get(state.data_type, "")
        if datatype not in NUMPY_DTYPE_BY_DATATYPE:
            raise ModelConfigError(
                f"state '{state.input_name}' of {config.name} has an unsupported data type"
            )
        if len(state.initial_state) > 1:
            raise ModelConfigError(
                f"initial_state field for state input '{state.input_name}' must contain exactly "
                f"one or zero element. Found '{len(state.initial_state)}' elements."
            )
        if state.input_name in seen:
            raise ModelConfigError(
                f"State input name '{state.input_name}' specified more than once."
            )
        seen.add(state.input_name)
        if state.initial_state:
            value = _initial_state(state, datatype, state.initial_state[0], model_dir)
        else:  # Triton leaves it uninitialized with 1 for each variable dim: zeros here
            shape = tuple(1 if d == -1 else int(d) for d in state.dims)
            value = np.zeros(shape, NUMPY_DTYPE_BY_DATATYPE[datatype])
            if datatype == "BYTES":
                value = np.full(shape, b"", dtype=np.object_)
        if batching:
            value = value[np.newaxis]
        value.setflags(write=False)
        dims = tuple(int(d) for d in state.dims)
        specs.append(StateSpec(state.input_name, state.output_name, datatype, dims, value))
    return specs


def _initial_state(state: Any, datatype: str, initial: Any, model_dir: Path | None) -> np.ndarray:
    name = state.input_name
    if initial.data_type != state.data_type:
        raise ModelConfigError(
            f"The data type used for 'initial_state' field of state '{name}' does not match the "
            "state data type."
        )
    if not initial.name:
        raise ModelConfigError(
            f"Field 'name' must be set when using initial_state for state input '{name}'."
        )
    if len(initial.dims) != len(state.dims):
        raise ModelConfigError(
            "Number of dimensions in 'initial_state' doesn't match the size of 'state' "
            f"dimensions for state input '{name}'. {len(initial.dims)} != {len(state.dims)}"
        )
    for initial_dim, state_dim in zip(initial.dims, state.dims, strict=True):
        if initial_dim == -1:
            raise ModelConfigError(
                f"'initial_state' field for state input name '{name}' contains variable dimensions."
            )
        if state_dim != -1 and initial_dim != state_dim:
            raise ModelConfigError(
                f"'initial_state' dim for input name '{name}' doesn't match 'state' dim "
                f"description. {initial_dim} != {state_dim}"
            )
    shape = tuple(int(d) for d in initial.dims)
    dtype = NUMPY_DTYPE_BY_DATATYPE[datatype]
    which = initial.WhichOneof("state_data")
    if which == "zero_data":
        if datatype == "BYTES":
            return np.full(shape, b"", dtype=np.object_)
        return np.zeros(shape, dtype)
    if which != "data_file":
        raise ModelConfigError(
            f"initial_state setting expects state'{name}' to have state_data set"
        )
    if model_dir is None:
        raise ModelConfigError(f"initial_state data_file of '{name}' needs the model folder")
    path = model_dir / INITIAL_STATE_FOLDER / initial.data_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"failed to read initial_state file {path}: {exc}") from exc
    if datatype == "BYTES":
        return _deserialize_strings(data, shape, path)
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if needed > len(data):
        raise ModelConfigError(
            f"initial_state setting expects {needed} bytes, but the data provided from "
            f"{initial.data_file}only has {len(data)} bytes."
        )
    return np.frombuffer(data[:needed], dtype=dtype).reshape(shape).copy()


def _deserialize_strings(data: bytes, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Triton's serialized string tensor: each element a 4-byte little-endian length + bytes."""
    items: list[bytes] = []
    offset = 0
    while offset + 4 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        items.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    count = int(np.prod(shape, dtype=np.int64))
    if len(items) < count:
        raise ModelConfigError(
            f"initial_state file {path} holds {len(items)} strings, {count} needed"
        )
    return np.array(items[:count], dtype=np.object_).reshape(shape)


def implicit_inputs(config: ModelConfig) -> list[ModelInput]:
    """Inputs the model takes that the config does not list among `input`: the control
    tensors ([1] per row) and the state inputs, as config entries (dims without the batch)."""
    if not config.HasField("sequence_batching"):
        return []
    inputs = [
        ModelInput(name=c.name, data_type=CONFIG_TYPE_BY_DATATYPE[c.datatype], dims=[1])
        for c in control_inputs(config)
    ]
    for state in config.sequence_batching.state:
        inputs.append(ModelInput(name=state.input_name, data_type=state.data_type, dims=state.dims))
    return inputs


def implicit_outputs(config: ModelConfig) -> list[ModelOutput]:
    """Outputs the model writes that the config need not list: the state outputs."""
    if not config.HasField("sequence_batching"):
        return []
    return [
        ModelOutput(name=s.output_name, data_type=s.data_type, dims=s.dims)
        for s in config.sequence_batching.state
    ]


def state_output_names(states: Sequence[StateSpec]) -> list[str]:
    return [state.output_name for state in states]
