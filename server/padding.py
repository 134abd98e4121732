"""Padding variable dimensions so that requests of different sizes share a batch (beyond Triton).

Triton batches only requests whose non-batch shapes are equal, so a sequence model served at many
lengths runs almost every request alone. A model may declare that padding is safe:

    parameters {
      key: "ferry.pad_variable_dims"
      value: { string_value: "tokens:0=0, mask:0=0, tags:0" }
    }

The value lists groups separated by `;`, each a comma-separated list of `TENSOR:DIM` entries
(DIM counts the config's dims, without the batch dim, and must be -1 there). The inputs of a group
are padded at the end of that dim to the largest size in the batch, with the entry's `=VALUE`
(default 0); the outputs of a group are cut back to each request's own size. All inputs of one
group must have the same size in a request (e.g. tokens and their attention mask). Several groups
pad several dims (`"image:1, mask:1; image:2, mask:2"`).

ferry does not mask anything itself: padding is opt-in because only the model's author knows that
padded positions cannot change the real ones. That holds when the model takes a length or mask
input that the client sends with its real values (an RNN classifier that reads the state at
`length - 1`, attention with a key mask, a masked mean), or when its outputs are per position and
causal (a unidirectional RNN tagger, cut back to each request's length). A model whose answer
depends on the padded positions (e.g. reading the last time step of a padded sequence) must not
declare it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.errors import invalid
from server.repository_format import CONFIG_TYPE_BY_DATATYPE, ModelConfig, ModelConfigError

PAD_PARAMETER = "ferry.pad_variable_dims"


@dataclass(frozen=True, slots=True)
class PaddedDim:
    """One padded dimension: `axis` counts the batch dim (config dim + 1)."""

    tensor: str
    axis: int
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class PadGroup:
    """Input dims padded together, and the output dims cut back to each request's size."""

    inputs: tuple[PaddedDim, ...]
    outputs: tuple[PaddedDim, ...]


class PaddingPlan:
    """How a model's requests are padded into one batch and its outputs cut back."""

    def __init__(self, groups: Sequence[PadGroup]) -> None:
        self.groups = tuple(groups)
        self._padded_axes: dict[str, set[int]] = {}
        for group in self.groups:
            for dim in group.inputs:
                self._padded_axes.setdefault(dim.tensor, set()).add(dim.axis)

    def shape_key(self, inputs: Mapping[str, np.ndarray]) -> Hashable:
        """The batching key: non-batch shapes with padded dims left out. Raises INVALID_ARG
        when the inputs of one group disagree on their size."""
        for group in self.groups:
            sizes = {inputs[d.tensor].shape[d.axis] for d in group.inputs}
            if len(sizes) > 1:
                names = ", ".join(f"'{d.tensor}' dim {d.axis - 1}" for d in group.inputs)
                raise invalid(f"padded dims {names} must have the same size, got {sorted(sizes)}")
        return tuple(
            (
                name,
                tuple(
                    -1 if axis in self._padded_axes.get(name, ()) else size
                    for axis, size in enumerate(array.shape)
                    if axis > 0
                ),
            )
            for name, array in inputs.items()
        )

    def sizes(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, ...]:
        """A request's size in each group."""
        return tuple(
            inputs[group.inputs[0].tensor].shape[group.inputs[0].axis] for group in self.groups
        )

    def concatenate(self, members: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One batch from the requests' inputs, padded inputs padded to the largest size."""
        batched: dict[str, np.ndarray] = {}
        for name in members[0]:
            arrays = [m[name] for m in members]
            axes = self._padded_axes.get(name)
            if not axes or all(a.shape == arrays[0].shape for a in arrays):
                batched[name] = np.concatenate(arrays, axis=0)
                continue
            shape = [sum(a.shape[0] for a in arrays)]
            shape += [max(a.shape[axis] for a in arrays) for axis in range(1, arrays[0].ndim)]
            out = np.full(shape, self._pad_value(name), dtype=arrays[0].dtype)
            row = 0
            for array in arrays:
                region = (slice(row, row + array.shape[0]), *(slice(0, n) for n in array.shape[1:]))
                out[region] = array
                row += array.shape[0]
            batched[name] = out
        return batched

    def cut(self, outputs: dict[str, np.ndarray], sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
        """One request's outputs with the padded output dims cut back to its own sizes."""
        for group, size in zip(self.groups, sizes, strict=True):
            for dim in group.outputs:
                array = outputs.get(dim.tensor)
                if array is not None and array.shape[dim.axis] != size:
                    index = [slice(None)] * array.ndim
                    index[dim.axis] = slice(0, size)
                    outputs[dim.tensor] = array[tuple(index)]
        return outputs

    def _pad_value(self, name: str) -> float:
        for group in self.groups:
            for dim in group.inputs:
                if dim.tensor == name:
                    return dim.value
        return 0.0


def padding_plan(config: ModelConfig) -> PaddingPlan | None:
    """The model's padding plan, or None when it does not declare one; ModelConfigError when
    the declaration does not fit the config."""
    if PAD_PARAMETER not in config.parameters:
        return None
    text = str(config.parameters[PAD_PARAMETER].string_value)
    if config.max_batch_size <= 0:
        raise ModelConfigError(f"{PAD_PARAMETER} needs a batching model (max_batch_size > 0)")
    strings = {t.name for t in config.input if t.data_type == CONFIG_TYPE_BY_DATATYPE["BYTES"]}
    dims = {t.name: ("input", list(t.dims)) for t in config.input}
    dims.update({t.name: ("output", list(t.dims)) for t in config.output})
    groups = []
    for group_text in filter(None, (g.strip() for g in text.split(";"))):
        inputs: list[PaddedDim] = []
        outputs: list[PaddedDim] = []
        for entry in filter(None, (e.strip() for e in group_text.split(","))):
            dim = _parse_entry(entry, dims)
            kind = dims[dim.tensor][0]
            if dim.tensor in strings:
                raise ModelConfigError(
                    f"{PAD_PARAMETER}: BYTES input '{dim.tensor}' cannot be padded"
                )
            (inputs if kind == "input" else outputs).append(dim)
        if not inputs:
            raise ModelConfigError(f"{PAD_PARAMETER}: group '{group_text}' names no input")
        groups.append(PadGroup(tuple(inputs), tuple(outputs)))
    if not groups:
        raise ModelConfigError(f"{PAD_PARAMETER} is empty")
    return PaddingPlan(groups)


def _parse_entry(entry: str, dims: Mapping[str, tuple[str, list[int]]]) -> PaddedDim:
    target, _, value_text = entry.partition("=")
    name, _, dim_text = target.strip().rpartition(":")
    if not name or not dim_text.strip().isdigit():
        raise ModelConfigError(f"{PAD_PARAMETER}: '{entry}' is not TENSOR:DIM[=VALUE]")
    if name not in dims:
        raise ModelConfigError(f"{PAD_PARAMETER}: '{name}' is not an input or output of the model")
    kind, config_dims = dims[name]
    dim = int(dim_text)
    if dim >= len(config_dims) or config_dims[dim] != -1:
        raise ModelConfigError(
            f"{PAD_PARAMETER}: dim {dim} of {kind} '{name}' must be -1 in the config "
            f"(its dims are {config_dims})"
        )
    try:
        value = float(value_text) if value_text.strip() else 0.0
    except ValueError:
        raise ModelConfigError(f"{PAD_PARAMETER}: pad value in '{entry}' is not a number") from None
    if value_text.strip() and kind == "output":
        raise ModelConfigError(f"{PAD_PARAMETER}: output '{name}' takes no pad value")
    return PaddedDim(name, dim + 1, value)
