"""Stateful models for the sequence batcher's tests: an ONNX RNN cell with implicit state and
every control input (it echoes the controls it saw), its numpy reference, and a Python-backend
accumulator that keeps its own per-sequence sums from the control inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.onnx_models import write_model
from tests.support.python_models import write_python_model

INPUT_SIZE = 4
HIDDEN = 6


def cell_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((INPUT_SIZE, HIDDEN)).astype(np.float32) * 0.5
    u = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) * 0.5
    b = rng.standard_normal(HIDDEN).astype(np.float32) * 0.1
    return w, u, b


def rnn_cell_model(seed: int = 0, corrid_type: int = TensorProto.UINT64) -> onnx.ModelProto:
    """h' = tanh(x W + h U + b): OUTPUT and STATE_OUT are h'; FLAGS = START + 2 END + 4 READY
    and CORRID_OUT = CORRID echo the control inputs (all with a batch dim)."""
    w, u, b = cell_weights(seed)
    nodes = [
        helper.make_node("MatMul", ["INPUT", "w"], ["xw"]),
        helper.make_node("MatMul", ["STATE_IN", "u"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["s0"]),
        helper.make_node("Add", ["s0", "b"], ["s1"]),
        helper.make_node("Tanh", ["s1"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
        helper.make_node("Mul", ["END", "two"], ["end2"]),
        helper.make_node("Mul", ["READY", "four"], ["ready4"]),
        helper.make_node("Add", ["START", "end2"], ["f0"]),
        helper.make_node("Add", ["f0", "ready4"], ["FLAGS"]),
        helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
    ]

    def value(name: str, elem: int, width: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, elem, ["batch", width])

    graph = helper.make_graph(
        nodes,
        "rnn_cell",
        [
            value("INPUT", TensorProto.FLOAT, INPUT_SIZE),
            value("STATE_IN", TensorProto.FLOAT, HIDDEN),
            value("START", TensorProto.INT32, 1),
            value("END", TensorProto.INT32, 1),
            value("READY", TensorProto.INT32, 1),
            value("CORRID", corrid_type, 1),
        ],
        [
            value("OUTPUT", TensorProto.FLOAT, HIDDEN),
            value("STATE_OUT", TensorProto.FLOAT, HIDDEN),
            value("FLAGS", TensorProto.INT32, 1),
            value("CORRID_OUT", corrid_type, 1),
        ],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(u, "u"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array(2, np.int32), "two"),
            numpy_helper.from_array(np.array(4, np.int32), "four"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def rnn_reference(steps: np.ndarray, seed: int = 0) -> np.ndarray:
    """The outputs of one sequence run alone, the state carried by hand (steps: [T, INPUT])."""
    w, u, b = cell_weights(seed)
    h = np.zeros((1, HIDDEN), np.float32)
    outputs = []
    for x in steps:
        h = np.tanh(x[np.newaxis] @ w + h @ u + b).astype(np.float32)
        outputs.append(h[0])
    return np.stack(outputs)


def rnn_cell_config(
    name: str,
    strategy: str = "direct { }",
    max_batch_size: int = 8,
    instances: int = 1,
    idle_us: int = 0,
    corrid_type: str = "TYPE_UINT64",
    extra: str = "",
) -> str:
    idle = f"max_sequence_idle_microseconds: {idle_us}" if idle_us else ""
    controls = "\n".join(
        f'    {{ name: "{tensor}" control [{{ kind: {kind} int32_false_true: [0, 1] }}] }},'
        for tensor, kind in (
            ("START", "CONTROL_SEQUENCE_START"),
            ("END", "CONTROL_SEQUENCE_END"),
            ("READY", "CONTROL_SEQUENCE_READY"),
        )
    )
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [{{ name: "INPUT" data_type: TYPE_FP32 dims: [{INPUT_SIZE}] }}]
output [
  {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [{HIDDEN}] }},
  {{ name: "FLAGS" data_type: TYPE_INT32 dims: [1] }},
  {{ name: "CORRID_OUT" data_type: {corrid_type} dims: [1] }}
]
instance_group [{{ kind: KIND_CPU count: {instances} }}]
sequence_batching {{
  {idle}
  {strategy}
  control_input [
{controls}
    {{ name: "CORRID" control [{{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid_type} }}] }}
  ]
  state [{{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32
            dims: [{HIDDEN}] initial_state {{ name: "zeros" data_type: TYPE_FP32
            dims: [{HIDDEN}] zero_data: true }} }}]
}}
{extra}
"""


def write_rnn_cell(repository: Path, name: str = "rnn", **options: object) -> Path:
    """REPO/NAME with the RNN cell and a sequence_batching config (options: rnn_cell_config)."""
    corrid = options.get("corrid_type", "TYPE_UINT64")
    elem = TensorProto.STRING if corrid == "TYPE_STRING" else TensorProto.UINT64
    return write_model(
        repository,
        name,
        rnn_cell_model(corrid_type=elem),
        rnn_cell_config(name, **options),  # type: ignore[arg-type]
    )


ACCUMULATOR_MODEL_PY = '''\
"""Triton's accumulator pattern with control inputs: each sequence's running sum lives in the
model, keyed by CORRID; START resets it, a request with READY false (a null slot) is skipped."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            def control(name):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                return int(tensor.as_numpy().reshape(-1)[0])

            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().reshape(-1)
            corrid = control("CORRID")
            if not control("READY"):
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT", np.zeros((1, 1), np.int32))]))
                continue
            if control("START"):
                self.sums[corrid] = 0
            if int(value[0]) < 0:
                error = pb_utils.TritonError("INPUT must not be negative",
                                             pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            self.sums[corrid] = self.sums.get(corrid, 0) + int(value[0])
            total = self.sums[corrid]
            if control("END"):
                del self.sums[corrid]
            flags = control("START") + 2 * control("END")
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", np.array([[total]], np.int32)),
                pb_utils.Tensor("FLAGS", np.array([[flags]], np.int32)),
            ]))
        return responses
'''


def accumulator_config(name: str, idle_us: int = 0, strategy: str = "direct { }") -> str:
    idle = f"max_sequence_idle_microseconds: {idle_us}" if idle_us else ""
    return f"""
name: "{name}"
max_batch_size: 4
input [{{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }}]
output [
  {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }},
  {{ name: "FLAGS" data_type: TYPE_INT32 dims: [1] }}
]
instance_group [{{ kind: KIND_CPU count: 1 }}]
sequence_batching {{
  {idle}
  {strategy}
  control_input [
    {{ name: "START" control [{{ kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] }}] }},
    {{ name: "END" control [{{ kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] }}] }},
    {{ name: "READY" control [{{ kind: CONTROL_SEQUENCE_READY int32_false_true: [0, 1] }}] }},
    {{ name: "CORRID" control [{{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }}] }}
  ]
}}
"""


def write_accumulator(repository: Path, name: str = "accumulator", **options: object) -> Path:
    """REPO/NAME: the Python accumulator (options: accumulator_config)."""
    config = accumulator_config(name, **options)  # type: ignore[arg-type]
    return write_python_model(repository, name, ACCUMULATOR_MODEL_PY, config)


def run_alone_in_onnxruntime(model_path: Path, steps: np.ndarray, corrid: int = 1) -> np.ndarray:
    """OUTPUT of one sequence run alone in in-process ONNX Runtime, the state carried by hand."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    state = np.zeros((1, HIDDEN), np.float32)
    outputs = []
    for t, x in enumerate(steps):
        flag = np.array([[1]], np.int32)
        output, state = session.run(
            ["OUTPUT", "STATE_OUT"],
            {
                "INPUT": x.reshape(1, INPUT_SIZE).astype(np.float32),
                "STATE_IN": state,
                "START": flag * (t == 0),
                "END": flag * (t == len(steps) - 1),
                "READY": flag,
                "CORRID": np.array([[corrid]], np.uint64),
            },
        )
        outputs.append(output[0])
    return np.stack(outputs)


STATE_SUM_MODEL_PY = '''\
"""A running sum kept as implicit state: OUTPUT = STATE_OUT = STATE_IN + INPUT."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            state = pb_utils.get_input_tensor_by_name(request, "STATE_IN").as_numpy()
            total = state + value
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", total), pb_utils.Tensor("STATE_OUT", total)]))
        return responses
'''


def write_state_sum(repository: Path, name: str = "state_sum") -> Path:
    """REPO/NAME: a Python model whose running sum is implicit state kept by the server."""
    model_dir = write_python_model(
        repository,
        name,
        STATE_SUM_MODEL_PY,
        f"""name: "{name}"
max_batch_size: 4
input [{{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }}]
output [{{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }}]
sequence_batching {{
  state [{{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [1]
            initial_state {{ name: "ten" data_type: TYPE_INT32 dims: [1] data_file: "ten" }} }}]
}}
""",
    )
    (model_dir / "initial_state").mkdir(exist_ok=True)
    (model_dir / "initial_state" / "ten").write_bytes((10).to_bytes(4, "little"))
    return model_dir
