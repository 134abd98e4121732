"""`ferry export --stateful`: a recurrent module whose forward takes and returns its state
(`forward(x, h) -> (y, h)`, `forward(x, h, c) -> (y, h, c)`) becomes an ONNX step model with
the state as inputs and outputs, served by Triton's sequence batcher with implicit state.

The plain export pipeline does the work (the step function is exported and parity-checked at
batch 1, 2 and max like any model); this module adds the state and control tensors to its specs,
a whole-sequence parity check (ONNX Runtime step by step, the state carried from step to step,
against PyTorch run once on the full sequence) and the `sequence_batching` section of
config.pbtxt: the state kept by the server (`state [...]`, zero initial state) and the control
inputs the forward takes.

Conventions: every tensor is batch-first, states included (an nn.GRU's [layers, batch, hidden]
state is transposed inside the module), with fixed dims; inputs, states and controls bind to
forward's parameters by name, as every export's inputs do; the first dim after the batch of each
input and output is time, so PyTorch can run the full sequence in one call (when it cannot, or
the forward takes control tensors, the reference is PyTorch step by step); the state outputs
follow the outputs in forward's result, in the order of the --state flags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc.model_config_pb2 import ModelSequenceBatching

from exporters.binding import ModelCall, bind_inputs, forward_signature
from exporters.errors import ExportError, summarize_exception
from exporters.inputs import InputBatches, to_torch
from exporters.outputs import select_outputs
from exporters.parity import OutputParity, compare_output
from exporters.pipeline import ExportOptions, ExportResult, StageListener, run_export
from exporters.prepare import PreparedModel
from exporters.sources import load_source
from exporters.specs import IOSpec, parse_input_spec
from server.repository_format import CONFIG_TYPE_BY_DATATYPE, ModelConfig

STATE_OUTPUT_SUFFIX = "_out"  # state h: input "h", output "h_out"
PARITY_SEQUENCES = 2  # sequences (batch rows) in the whole-sequence parity check
# --control KIND: a forward parameter of that name; (config kind, datatype)
CONTROLS = {
    "start": ("CONTROL_SEQUENCE_START", "INT32"),
    "end": ("CONTROL_SEQUENCE_END", "INT32"),
    "ready": ("CONTROL_SEQUENCE_READY", "INT32"),
    "corrid": ("CONTROL_SEQUENCE_CORRID", "INT64"),
}
STRATEGIES = ("direct", "oldest")


@dataclass(frozen=True)
class StatefulOptions:
    """What `--stateful` adds to an export."""

    states: tuple[str, ...]  # --state NAME:DTYPE:DIMS, in forward's order after the inputs
    controls: tuple[str, ...] = ()  # --control start|end|ready|corrid, after the states
    sequence_length: int = 16
    strategy: str = "direct"
    max_sequence_idle_us: int = 1_000_000


def run_stateful_export(
    options: ExportOptions, stateful: StatefulOptions, listener: StageListener | None = None
) -> ExportResult:
    """Export a step model with its state as inputs and outputs; ExportError on any failure."""
    step_options, plan = stateful_export(options, stateful)
    return run_export(step_options, listener, plan)


def stateful_export(
    options: ExportOptions, stateful: StatefulOptions
) -> tuple[ExportOptions, StatefulPlan]:
    """The plain export's options for the step function, and the stateful variant's hooks."""
    if not stateful.states:
        raise ExportError("--stateful needs the state: --state NAME:DTYPE:DIMS", stage="load")
    if not options.inputs:
        raise ExportError("--stateful needs the inputs: --input NAME:DTYPE:DIMS", stage="load")
    if stateful.strategy not in STRATEGIES:
        raise ExportError(f"--sequence-strategy must be one of {STRATEGIES}", stage="load")
    if stateful.sequence_length < 1:
        raise ExportError("--sequence-length must be at least 1", stage="load")
    unknown = [c for c in stateful.controls if c not in CONTROLS]
    if unknown or len(set(stateful.controls)) != len(stateful.controls):
        raise ExportError(
            f"--control takes each of {', '.join(CONTROLS)} at most once", stage="load"
        )
    if options.dynamic_dims or options.dim_sizes:
        raise ExportError(
            "--stateful exports a step model with fixed dims: no --dynamic-dim or --dim-sizes",
            stage="load",
        )
    inputs = [parse_input_spec(text) for text in options.inputs]
    states = [parse_input_spec(text) for text in stateful.states]
    controls = [IOSpec(kind, CONTROLS[kind][1], (1,)) for kind in stateful.controls]
    variable = next((s for s in inputs + states if -1 in s.config_dims), None)
    if variable is not None:
        raise ExportError(
            f"--stateful: '{variable}' has a variable dim; a step model's inputs and states "
            "have fixed dims",
            stage="load",
        )
    names = [s.name for s in inputs + states + controls]
    if len(set(names)) != len(names):
        raise ExportError("--input, --state and --control names must be unique", stage="load")
    outputs = _output_names(options, inputs, states, controls)
    plan = StatefulPlan(stateful, inputs, states, controls, outputs, options)
    step_options = replace(
        options,
        inputs=tuple(options.inputs) + tuple(map(str, states)) + tuple(map(str, controls)),
        outputs=tuple(outputs) + tuple(s.name + STATE_OUTPUT_SUFFIX for s in states),
    )
    return step_options, plan


def _output_names(
    options: ExportOptions, inputs: list[IOSpec], states: list[IOSpec], controls: list[IOSpec]
) -> list[str]:
    """The non-state outputs' names: --output, or output / output_0, output_1..."""
    import torch

    loaded = load_source(
        options.source, options.weights, options.trust_pickled_module, options.init_args
    )
    signature = forward_signature(loaded)
    specs = bind_inputs(inputs + states + controls, signature)
    call = ModelCall(
        loaded.module,
        tuple(s.name for s in specs),
        signature is not None and signature.by_keyword,
        dict(options.forward_kwargs),
    )
    arrays = InputBatches(specs, None, options.seed).batch(2, {})
    try:
        with torch.inference_mode():
            returned = len(select_outputs(call(*to_torch(arrays, specs)), ()).names)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            "the model fails on inputs, states and controls of the declared specs: "
            f"{summarize_exception(exc, max_lines=4)}",
            stage="load",
        ) from None
    count = returned - len(states)
    if count < 1:
        raise ExportError(
            f"the model returns {returned} tensors: a stateful forward returns its outputs and "
            f"then its {len(states)} state tensor(s)",
            stage="load",
        )
    if options.outputs:
        if len(options.outputs) != count:
            raise ExportError(
                f"{len(options.outputs)} --output names for {count} outputs (the model returns "
                f"{returned} tensors, the last {len(states)} its state)",
                stage="load",
            )
        return list(options.outputs)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


@dataclass(frozen=True)
class StatefulPlan:
    """The stateful variant of the export (an ExportVariant): whole-sequence parity and the
    sequence_batching config."""

    stateful: StatefulOptions
    inputs: list[IOSpec]
    states: list[IOSpec]
    controls: list[IOSpec]
    outputs: list[str]
    options: ExportOptions

    # --- the whole-sequence parity check ----------------------------------------------------

    def extra_verify(self, prepared: PreparedModel, model_path: Path) -> dict[str, Any]:
        """ONNX Runtime step by step vs PyTorch on the whole sequence; ExportError on a gap."""
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        order = session_order(session)
        steps = [
            InputBatches(self.inputs, None, self.options.seed * 7919 + t).batch(
                PARITY_SEQUENCES, {}
            )
            for t in range(self.stateful.sequence_length)
        ]
        got_steps, got_state = self._run_steps(
            lambda feeds: session.run(None, {name: feeds[name] for name in order}), steps
        )
        reference, expected_steps, expected_state = self._pytorch_reference(prepared, steps)
        checks = [
            compare_output(PARITY_SEQUENCES, name, want, have, self.options.atol, self.options.rtol)
            for name, want, have in zip(
                self.outputs + [s.name + STATE_OUTPUT_SUFFIX for s in self.states],
                _along_time(expected_steps) + expected_state,
                _along_time(got_steps) + got_state,
                strict=True,
            )
        ]
        failed = next((c for c in checks if not c.passed), None)
        if failed is not None:
            raise ExportError(
                f"stepping the ONNX model through a {self.stateful.sequence_length}-step "
                f"sequence does not match PyTorch ({reference.replace('_', ' ')}): output "
                f"'{failed.output}': {failed.reason}",
                stage="verify",
            )
        return {"sequence_parity": _section(reference, self.stateful.sequence_length, checks)}

    def _controls(self, t: int) -> dict[str, np.ndarray]:
        last = self.stateful.sequence_length - 1
        values = {
            "start": int(t == 0),
            "end": int(t == last),
            "ready": 1,
        }
        arrays = {}
        for spec in self.controls:
            if spec.name == "corrid":
                column = np.arange(1, PARITY_SEQUENCES + 1)
            else:
                column = np.full(PARITY_SEQUENCES, values[spec.name])
            arrays[spec.name] = column.reshape(-1, 1).astype(spec.numpy_dtype)
        return arrays

    def _zero_states(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.shape(PARITY_SEQUENCES, {}), s.numpy_dtype) for s in self.states}

    def _run_steps(
        self, run: Callable[[dict[str, np.ndarray]], Sequence[Any]], steps: list[dict[str, Any]]
    ) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
        """Run `run(feeds) -> outputs then states` step by step, carrying the state by hand."""
        state = self._zero_states()
        per_step: list[list[np.ndarray]] = []
        for t, step in enumerate(steps):
            results = [np.asarray(r) for r in run({**step, **state, **self._controls(t)})]
            per_step.append(results[: len(self.outputs)])
            state = dict(
                zip((s.name for s in self.states), results[len(self.outputs) :], strict=True)
            )
        return per_step, list(state.values())

    def _pytorch_reference(
        self, prepared: PreparedModel, steps: list[dict[str, np.ndarray]]
    ) -> tuple[str, list[list[np.ndarray]], list[np.ndarray]]:
        """PyTorch once on the full sequence (time on axis 1), or step by step when it can't."""
        import torch

        def forward(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode():
                result = prepared.reference(*to_torch(feeds, prepared.inputs))
            return [t.detach().cpu().numpy() for t in result]

        if not self.controls:
            full = {
                s.name: np.concatenate([step[s.name] for step in steps], axis=1)
                for s in self.inputs
            }
            try:
                results = forward({**full, **self._zero_states()})
            except Exception:
                results = []
            outputs, state = results[: len(self.outputs)], results[len(self.outputs) :]
            step_shapes = [r.shape for r in forward({**steps[0], **self._zero_states()})]
            if len(results) == len(step_shapes) and all(
                o.ndim >= 2 and o.shape[1] == shape[1] * len(steps)
                for o, shape in zip(outputs, step_shapes, strict=False)
            ):
                per_step = [
                    [np.split(o, len(steps), axis=1)[t] for o in outputs] for t in range(len(steps))
                ]
                return "full_sequence", per_step, state
        per_step, final = self._run_steps(forward, steps)
        return "step_by_step", per_step, final

    # --- config.pbtxt --------------------------------------------------------------------

    def edit_config(self, config: ModelConfig) -> None:
        """State and controls leave input/output for sequence_batching (Triton's layout)."""
        hidden_inputs = {s.name for s in self.states + self.controls}
        hidden_outputs = {s.name + STATE_OUTPUT_SUFFIX for s in self.states}
        kept_inputs = [t for t in config.input if t.name not in hidden_inputs]
        kept_outputs = [t for t in config.output if t.name not in hidden_outputs]
        del config.input[:]
        config.input.extend(kept_inputs)
        del config.output[:]
        config.output.extend(kept_outputs)
        config.ClearField("dynamic_batching")
        config.ClearField("sequence_batching")
        batching = config.sequence_batching
        batching.max_sequence_idle_microseconds = self.stateful.max_sequence_idle_us
        if self.stateful.strategy == "oldest":
            batching.oldest.max_candidate_sequences = config.max_batch_size
        else:
            batching.direct.SetInParent()
        for spec in self.controls:
            kind, datatype = CONTROLS[spec.name]
            control_input = batching.control_input.add()
            control_input.name = spec.name
            control = control_input.control.add()
            control.kind = ModelSequenceBatching.Control.Kind.Value(kind)
            if spec.name == "corrid":
                control.data_type = CONFIG_TYPE_BY_DATATYPE[datatype]
            else:
                control.int32_false_true.extend([0, 1])
        for spec in self.states:
            state = batching.state.add()
            state.input_name = spec.name
            state.output_name = spec.name + STATE_OUTPUT_SUFFIX
            state.data_type = CONFIG_TYPE_BY_DATATYPE[spec.datatype]
            state.dims.extend(spec.config_dims)
            initial = state.initial_state.add()
            initial.name = "zeros"
            initial.data_type = state.data_type
            initial.dims.extend(spec.config_dims)
            initial.zero_data = True


def session_order(session: Any) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _along_time(per_step: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Each output's steps joined on the time axis (axis 1; a new one for [batch] outputs)."""
    joined = []
    for index in range(len(per_step[0])):
        arrays = [step[index] for step in per_step]
        axis_exists = arrays[0].ndim >= 2
        joined.append(np.concatenate(arrays, axis=1) if axis_exists else np.stack(arrays, axis=1))
    return joined


def _section(reference: str, steps: int, checks: list[OutputParity]) -> dict[str, Any]:
    return {
        "reference": reference,
        "steps": steps,
        "sequences": PARITY_SEQUENCES,
        "passed": all(c.passed for c in checks),
        "max_abs_error": max(c.max_abs_error for c in checks),
        "checks": [
            {"output": c.output, "max_abs_error": c.max_abs_error, "passed": c.passed}
            for c in checks
        ],
    }
