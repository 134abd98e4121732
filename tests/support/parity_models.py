"""Twin model repositories for the Triton differential tests: the same models (name, config.pbtxt,
label files, function) as ONNX models for `ferry serve` and as python-backend models for the real
`tritonserver` (CPU-only, python backend only). Only the `platform` / `backend` line differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

LABELS = "cat\ndog\nbird\nfish\n"

# Python-backend model: every output is the input at the same position, except where
# OPERATIONS names a numpy expression of the inputs (two_io).
PYTHON_MODEL = '''\
"""{doc}"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

OPERATIONS = {operations}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = {{
                name: pb_utils.get_input_tensor_by_name(request, name) for name in self.inputs
            }}
            values = {{name: t.as_numpy() for name, t in tensors.items() if t is not None}}
            tensors = []
            for position, name in enumerate(self.outputs):
                if name in OPERATIONS:
                    array = eval(OPERATIONS[name], {{"np": np}}, values)
                else:
                    array = values[self.inputs[position]]
                tensors.append(pb_utils.Tensor(name, array))
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
'''

ONNX_TYPE_BY_CONFIG_TYPE = {
    "TYPE_FP32": TensorProto.FLOAT,
    "TYPE_FP16": TensorProto.FLOAT16,
    "TYPE_INT64": TensorProto.INT64,
    "TYPE_INT8": TensorProto.INT8,
    "TYPE_BOOL": TensorProto.BOOL,
    "TYPE_STRING": TensorProto.STRING,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # config.pbtxt's TYPE_*
    dims: tuple[int, ...]
    label_filename: str = ""
    optional: bool = False  # an input requests may leave out (ONNX: it has a default value)

    def pbtxt(self) -> str:
        labels = f' label_filename: "{self.label_filename}"' if self.label_filename else ""
        optional = " optional: true" if self.optional else ""
        dims = ", ".join(str(d) for d in self.dims)
        fields = f'name: "{self.name}" data_type: {self.data_type} dims: [{dims}]'
        return f"{{ {fields}{labels}{optional} }}"


@dataclass(frozen=True)
class TwinModel:
    """One model both servers serve: its config body and what it computes."""

    name: str
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    extra_config: str = ""
    # output name -> numpy expression of the inputs; other outputs copy their input
    operations: tuple[tuple[str, str], ...] = ()

    def config(self, runtime_line: str) -> str:
        return (
            f"{runtime_line}\nmax_batch_size: {self.max_batch_size}\n"
            f"input [{', '.join(t.pbtxt() for t in self.inputs)}]\n"
            f"output [{', '.join(t.pbtxt() for t in self.outputs)}]\n"
            f"instance_group [{{ kind: KIND_CPU count: 1 }}]\n{self.extra_config}"
        )

    def onnx_model(self) -> onnx.ModelProto:
        """The same function as an ONNX graph (Identity per output, or two_io's Add/Mul)."""
        operations = dict(self.operations)
        nodes, initializers = [], []
        batch: list[str | int] = ["batch"] if self.max_batch_size > 0 else []
        for position, output in enumerate(self.outputs):
            source = self.inputs[position].name
            if output.name in operations:
                nodes.extend(_onnx_operation(output.name, operations[output.name]))
            else:
                nodes.append(helper.make_node("Identity", [source], [output.name]))
        if operations:
            initializers.append(
                helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            )
        for tensor in self.inputs:  # an optional input's default: an initializer of its name
            if tensor.optional:
                shape = [1] * (self.max_batch_size > 0) + list(tensor.dims)
                zeros = [0.0] * int(np.prod(shape))
                initializers.append(
                    helper.make_tensor(
                        tensor.name, ONNX_TYPE_BY_CONFIG_TYPE[tensor.data_type], shape, zeros
                    )
                )

        def value_info(tensor: Tensor) -> onnx.ValueInfoProto:
            shape = batch + [d if d >= 0 else f"d_{tensor.name}" for d in tensor.dims]
            return helper.make_tensor_value_info(
                tensor.name, ONNX_TYPE_BY_CONFIG_TYPE[tensor.data_type], shape
            )

        graph = helper.make_graph(
            nodes,
            self.name,
            [value_info(t) for t in self.inputs],
            [value_info(t) for t in self.outputs],
            initializer=initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _onnx_operation(output: str, expression: str) -> list[onnx.NodeProto]:
    """The ONNX nodes of the two operations the twins use."""
    if expression == "a + b.astype(np.float32)":
        return [
            helper.make_node("Cast", ["b"], [f"{output}_b"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", f"{output}_b"], [output]),
        ]
    if expression == "a * np.float32(2)":
        return [helper.make_node("Mul", ["a", "two"], [output])]
    raise ValueError(f"no ONNX form for {expression!r}")


def _identity(name: str, data_type: str, dims: tuple[int, ...], max_batch_size: int) -> TwinModel:
    return TwinModel(
        name,
        max_batch_size,
        (Tensor("INPUT0", data_type, dims),),
        (Tensor("OUTPUT0", data_type, dims),),
    )


TWIN_MODELS = (
    TwinModel(
        "identity",
        8,
        (Tensor("INPUT0", "TYPE_FP32", (4,)),),
        (Tensor("OUTPUT0", "TYPE_FP32", (4,), label_filename="labels.txt"),),
        extra_config="dynamic_batching { max_queue_delay_microseconds: 100 }\n",
    ),
    TwinModel(
        "two_io",
        8,
        (Tensor("a", "TYPE_FP32", (3,)), Tensor("b", "TYPE_INT64", (3,))),
        (Tensor("sum", "TYPE_FP32", (3,)), Tensor("prod", "TYPE_FP32", (3,))),
        operations=(("sum", "a + b.astype(np.float32)"), ("prod", "a * np.float32(2)")),
    ),
    _identity("strings", "TYPE_STRING", (2,), 8),
    _identity("nobatch", "TYPE_FP32", (2, 3), 0),
    _identity("half", "TYPE_FP16", (4,), 8),
    _identity("vardim", "TYPE_FP32", (-1,), 0),
    _identity("int8", "TYPE_INT8", (2,), 8),
    _identity("flags", "TYPE_BOOL", (2,), 8),
    TwinModel(  # OUTPUT0 = INPUT0; INPUT1 may be left out
        "optional",
        0,
        (Tensor("INPUT0", "TYPE_FP32", (2,)), Tensor("INPUT1", "TYPE_FP32", (2,), optional=True)),
        (Tensor("OUTPUT0", "TYPE_FP32", (2,)),),
    ),
    _identity("text1", "TYPE_STRING", (1,), 8),  # a raw binary body is its one element
    _identity("grid", "TYPE_FP32", (-1, -1), 0),
    _identity("spare", "TYPE_FP32", (4,), 8),  # loaded and unloaded by the repository scenario
    _identity("counted", "TYPE_FP32", (4,), 8),  # only the statistics scenario infers on it
)


def _write_common(model_dir: Path, model: TwinModel, runtime_line: str) -> None:
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(model.config(runtime_line))
    if any(t.label_filename for t in model.outputs):
        (model_dir / "labels.txt").write_text(LABELS)


def write_onnx_twin(repository: Path, model: TwinModel) -> Path:
    """`model` as an ONNX Runtime model for ferry."""
    model_dir = repository / model.name
    _write_common(model_dir, model, 'platform: "onnxruntime_onnx"')
    onnx.save(model.onnx_model(), str(model_dir / "1" / "model.onnx"))
    return model_dir


def write_python_twin(repository: Path, model: TwinModel) -> Path:
    """`model` as a python-backend model for tritonserver."""
    model_dir = repository / model.name
    _write_common(model_dir, model, 'backend: "python"')
    (model_dir / "1" / "model.py").write_text(
        PYTHON_MODEL.format(doc=f"The '{model.name}' twin.", operations=dict(model.operations))
    )
    return model_dir


def write_twin_repositories(
    ferry_repository: Path, triton_repository: Path, models: tuple[TwinModel, ...] = TWIN_MODELS
) -> None:
    """Both repositories with every twin model."""
    for model in models:
        write_onnx_twin(ferry_repository, model)
        write_python_twin(triton_repository, model)
