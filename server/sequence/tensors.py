"""The tensors of one sequence batch: the requests' inputs row by row (a slot without a request
gets a null row of zeros, as Triton's null requests), the control tensors and the implicit
states; and the outputs split back per row, each sequence keeping its new state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from server.sequence.policy import CORRID, END, START, ControlInput, SequencePolicy
from server.types import NUMPY_DTYPE_BY_DATATYPE


class SequenceRow(Protocol):
    """What the assembler reads of one request in a batch."""

    @property
    def inputs(self) -> Mapping[str, np.ndarray]: ...
    @property
    def start(self) -> bool: ...
    @property
    def end(self) -> bool: ...
    @property
    def corrid(self) -> int | str: ...
    @property
    def state(self) -> dict[str, np.ndarray] | None:
        """The sequence's state before this request (None: it has not run yet)."""


@dataclass(frozen=True, slots=True)
class Controls:
    """Control values of one row."""

    start: bool
    end: bool
    ready: bool
    corrid: int | str


NULL_CONTROLS = Controls(False, False, False, 0)


def controls_of(row: SequenceRow | None) -> Controls:
    if row is None:
        return NULL_CONTROLS
    return Controls(row.start, row.end, True, row.corrid)


def control_array(control: ControlInput, rows: Sequence[Controls], batching: bool) -> np.ndarray:
    """One control tensor for the batch: [rows, 1] when the model batches, else [1]."""
    if control.kind == CORRID:
        array = _corrid_array(control.datatype, [c.corrid for c in rows])
    else:
        flags = [
            c.start if control.kind == START else c.end if control.kind == END else c.ready
            for c in rows
        ]
        dtype = NUMPY_DTYPE_BY_DATATYPE[control.datatype]
        true = np.asarray(control.true_value, dtype)
        false = np.asarray(control.false_value, dtype)
        array = np.where(np.array(flags, dtype=bool), true, false).astype(dtype, copy=False)
    return array.reshape(-1, 1) if batching else array.reshape(1)


def _corrid_array(datatype: str, ids: Sequence[int | str]) -> np.ndarray:
    if datatype == "BYTES":
        return np.array(
            [i.encode() if isinstance(i, str) else (str(i).encode() if i else b"") for i in ids],
            dtype=np.object_,
        )
    # Triton copies the uint64 id's low bytes into a narrower type
    numbers = np.array([i if isinstance(i, int) else 0 for i in ids], dtype=np.uint64)
    return numbers.astype(NUMPY_DTYPE_BY_DATATYPE[datatype])


class BatchAssembler:
    """Builds a batch's model inputs and splits its outputs for one model version."""

    def __init__(self, policy: SequencePolicy, output_names: Sequence[str]) -> None:
        self.policy = policy
        self.batching = policy.max_batch_size > 0
        self.output_names = list(output_names)
        state_outputs = [s.output_name for s in policy.states]
        # the runtime is asked for the state outputs too
        self.runtime_outputs = self.output_names + [
            n for n in state_outputs if n not in self.output_names
        ]

    def row_extras(self, rows: Sequence[SequenceRow | None]) -> list[dict[str, np.ndarray]]:
        """Per row, its control and state tensors (each with a batch dim of 1 when batching):
        what a request runtime receives added to each request's inputs."""
        first = self.row_states(next(r for r in rows if r is not None))
        extras: list[dict[str, np.ndarray]] = []
        for row in rows:
            controls = [controls_of(row)]
            extra = {
                c.name: control_array(c, controls, self.batching) for c in self.policy.controls
            }
            if row is None:
                extra.update({name: np.zeros_like(value) for name, value in first.items()})
            else:
                extra.update(self.row_states(row))
            extras.append(extra)
        return extras

    def row_states(self, row: SequenceRow | None) -> dict[str, np.ndarray]:
        """A row's input states: the initial ones for a null row or a START, else the
        sequence's last outputs."""
        if row is None:
            return {s.input_name: s.initial for s in self.policy.states}
        return {s.input_name: _row_state(row, s.input_name, s.initial) for s in self.policy.states}

    def feeds(self, rows: Sequence[SequenceRow | None]) -> dict[str, np.ndarray]:
        """The whole batch's model inputs (rows in slot order, None rows as zeros)."""
        first = next(r for r in rows if r is not None)
        if not self.batching or len(rows) == 1:
            feeds = dict(first.inputs)
        else:
            feeds = {
                name: np.concatenate(
                    _with_nulls([None if r is None else r.inputs[name] for r in rows])
                )
                for name in first.inputs
            }
        if self.policy.controls:
            controls = [controls_of(r) for r in rows]
            for control in self.policy.controls:
                feeds[control.name] = control_array(control, controls, self.batching)
        for state in self.policy.states:
            name, initial = state.input_name, state.initial
            # a null row's state has the shape of the first real row's (variable-size states)
            values = _with_nulls(
                [None if r is None else _row_state(r, name, initial) for r in rows]
            )
            feeds[name] = values[0] if len(values) == 1 else np.concatenate(values, axis=0)
        return feeds

    def split(
        self, rows: Sequence[SequenceRow | None], outputs: Mapping[str, np.ndarray]
    ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Per real row (in order): its outputs (views of the batch's) and its new state
        (copied out of the batch's buffers)."""
        if not self.batching:
            return [
                (self.request_outputs(outputs), self.new_state(outputs))
                for row in rows
                if row is not None
            ]
        visible = [(name, outputs[name]) for name in self.output_names if name in outputs]
        states = [
            (s.input_name, outputs[s.output_name])
            for s in self.policy.states
            if s.output_name in outputs
        ]
        results: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        for index, row in enumerate(rows):
            if row is None:
                continue
            stop = index + 1
            results.append(
                (
                    {name: array[index:stop] for name, array in visible},
                    {name: array[index:stop].copy() for name, array in states},
                )
            )
        return results

    def request_outputs(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """The outputs a client may see (state outputs only when the config lists them)."""
        return {name: outputs[name] for name in self.output_names if name in outputs}

    def new_state(self, outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A row's state outputs, copied out of the batch's buffers."""
        return {
            s.input_name: np.array(outputs[s.output_name], copy=True)
            for s in self.policy.states
            if s.output_name in outputs
        }

    def check_rows(self, outputs: Mapping[str, np.ndarray], width: int) -> None:
        """Every output must have a row per slot of the batch."""
        if not self.batching:
            return
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != width:
                raise ValueError(
                    f"output '{name}' has shape {list(array.shape)}, expected {width} rows for "
                    "the batch: the model's first dimension is not a batch dimension"
                )


def _row_state(row: SequenceRow, name: str, initial: np.ndarray) -> np.ndarray:
    """One input state of a real row: the initial value at a START or before the sequence's
    first run, else the sequence's last output."""
    state = row.state
    if row.start or state is None:
        return initial
    return state.get(name, initial)


def _with_nulls(values: list[np.ndarray | None]) -> list[np.ndarray]:
    """Null rows (None) as zeros shaped as the first real row's value."""
    real = next((v for v in values if v is not None), None)
    if real is None or all(v is not None for v in values):
        return cast(list[np.ndarray], values)
    null = np.zeros_like(real)
    return [null if v is None else v for v in values]
