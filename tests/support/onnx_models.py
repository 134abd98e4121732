"""Tiny ONNX models built with onnx.helper (no torch), and repository entries holding them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_model(
    in_features: int = 16,
    hidden: int = 32,
    out_features: int = 4,
    seed: int = 0,
    input_name: str = "input",
    output_name: str = "output",
    batch_dim: str | int = "batch",
) -> onnx.ModelProto:
    """x -> relu(x W1 + b1) W2 + b2, FP32, with a dynamic (named) batch dimension."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((in_features, hidden)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = rng.standard_normal((hidden, out_features)).astype(np.float32) * 0.3
    b2 = rng.standard_normal(out_features).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch_dim, in_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_dim, out_features])],
        initializer=[
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_io_model() -> onnx.ModelProto:
    """Two inputs (FP32 a, INT64 b) and two outputs: sum = a + float(b), prod = a * 2."""
    nodes = [
        helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "b_float"], ["sum"]),
        helper.make_node("Mul", ["a", "two"], ["prod"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_model(
    repository: Path,
    name: str,
    model: onnx.ModelProto,
    config: str | None = None,
    version: int = 1,
) -> Path:
    """Write REPO/NAME/<version>/model.onnx (+ config.pbtxt when given); returns the model dir."""
    model_dir = repository / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / str(version) / "model.onnx"))
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def run_reference(model_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the model in in-process ONNX Runtime (the ground truth for server tests)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def slow_model(width: int = 256, layers: int = 150, seed: int = 0) -> onnx.ModelProto:
    """x -> tanh(x W) repeated `layers` times with one shared W: a few ms of real compute per row,
    for tests of queueing, timeouts and draining."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, current = [], "input"
    for layer in range(layers):
        nodes.append(helper.make_node("MatMul", [current, "w"], [f"m{layer}"]))
        out = "output" if layer == layers - 1 else f"t{layer}"
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def bytes_model() -> onnx.ModelProto:
    """A BYTES (string) identity model: text in, the same text out."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


CLASSIFIER_CONFIG = """
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "input" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }]
"""


def write_classifier(repository: Path, extra_config: str = "") -> Path:
    """The `classifier` model: an MLP whose 4 outputs are labelled (classification extension)."""
    model_dir = write_model(
        repository, "classifier", mlp_model(seed=3), CLASSIFIER_CONFIG + extra_config
    )
    (model_dir / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    return model_dir


def embedding_model(vocab: int = 100, width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """tokens (INT64, [batch, seq_len]) -> the mean of their embeddings (FP32, [batch, width]).

    A token id outside [-vocab, vocab) makes ONNX Runtime's Gather fail ("indices element out of
    data bounds"): the bad-data request of the failure-isolation tests.
    """
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
            helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
        ],
        "embedding_bag",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq_len"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", width])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def embedding_reference(
    tokens: np.ndarray, vocab: int = 100, width: int = 8, seed: int = 0
) -> np.ndarray:
    """What `embedding_model` answers, in numpy."""
    table = np.random.default_rng(seed).standard_normal((vocab, width)).astype(np.float32)
    return np.asarray(table[tokens].mean(axis=1), dtype=np.float32)


def identity_model(dims: list[int], elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x -> y unchanged; a -1 in `dims` (the full shape, batch dim included) is a dynamic dim."""
    shape: list[int | str] = [d if d != -1 else f"d{i}" for i, d in enumerate(dims)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def concat_model() -> onnx.ModelProto:
    """y = concat(a, b) along axis 0 (no batching): a and b of different widths make ONNX
    Runtime fail with an error about the model, not the data (a 500)."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["a", "b"], ["y"], axis=0)],
        "concat",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["rows_a", "width"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["rows_b", "width_b"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
