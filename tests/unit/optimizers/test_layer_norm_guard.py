"""The LayerNormalization guard: ONNX Runtime's CPU session no longer fuses a post-norm residual
Add + LayerNormalization into SkipLayerNormalization, and the outputs do not change."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizers.layer_norm_guard import guard_layer_norms
from tests.support.onnx_models import run_reference

HIDDEN = 16


def residual_blocks(shapes: bool = True) -> onnx.ModelProto:
    """(batch, 6, 16) through four LayerNormalizations of sums: an embeddings-like one (x plus a
    (1, 6, 16) position table: a broadcast), a post-norm one (the residual sum feeds only its
    norm), a pre-norm one (the sum also feeds the next residual Add) and a final norm (its sum
    used once). ONNX Runtime fuses the post-norm and the final one."""
    rng = np.random.default_rng(0)
    arrays = [
        numpy_helper.from_array(
            (rng.standard_normal((HIDDEN, HIDDEN)) * 0.3).astype(np.float32), f"w{i}"
        )
        for i in range(2)
    ]
    arrays += [
        numpy_helper.from_array(np.linspace(0.5, 1.5, HIDDEN, dtype=np.float32), "gamma"),
        numpy_helper.from_array(np.linspace(-0.1, 0.1, HIDDEN, dtype=np.float32), "beta"),
        numpy_helper.from_array(
            (rng.standard_normal((1, 6, HIDDEN)) * 0.1).astype(np.float32), "position"
        ),
    ]
    norm = {"axis": -1, "epsilon": 1e-5}
    nodes = [
        # a broadcast sum -> left alone
        helper.make_node("Add", ["x", "position"], ["e"]),
        helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["embedded"], **norm),
        # post-norm: the residual sum feeds only its LayerNormalization -> guarded
        helper.make_node("MatMul", ["embedded", "w0"], ["p0"]),
        helper.make_node("Add", ["embedded", "p0"], ["s0"]),
        helper.make_node("LayerNormalization", ["s0", "gamma", "beta"], ["h"], **norm),
        # pre-norm: the residual sum s1 also feeds the final Add -> left alone
        helper.make_node("Add", ["h", "p0"], ["s1"]),
        helper.make_node("LayerNormalization", ["s1", "gamma", "beta"], ["n1"], **norm),
        helper.make_node("MatMul", ["n1", "w1"], ["p1"]),
        helper.make_node("Add", ["s1", "p1"], ["s2"]),
        # the final norm of a single-use sum -> guarded
        helper.make_node("LayerNormalization", ["s2", "gamma", "beta"], ["y"], **norm),
    ]
    dims: list[str | int] | None = ["batch", 6, HIDDEN] if shapes else None
    graph = helper.make_graph(
        nodes,
        "residual_blocks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializer=arrays,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def session_ops(path: Path, tmp_path: Path) -> Counter[str]:
    """The op types of the graph an ORT_ENABLE_ALL CPU session runs (serving's default)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.session.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def x(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((rows, 6, HIDDEN)).astype(np.float32)}


def test_single_use_residual_sums_are_guarded(tmp_path: Path) -> None:
    source, guarded = tmp_path / "source.onnx", tmp_path / "guarded.onnx"
    onnx.save(residual_blocks(), str(source))
    model = residual_blocks()
    assert guard_layer_norms(model) == 2
    onnx.checker.check_model(model)
    onnx.save(model, str(guarded))
    # the premise: ORT fuses the two single-use sums with their norms on load
    assert session_ops(source, tmp_path)["SkipLayerNormalization"] == 2
    after = session_ops(guarded, tmp_path)
    assert after["SkipLayerNormalization"] == 0 and after["LayerNormalization"] == 4
    assert after["Reshape"] == 2
    for rows in (1, 5):
        np.testing.assert_allclose(
            run_reference(guarded, x(rows, rows))["y"],
            run_reference(source, x(rows, rows))["y"],
            rtol=1e-5,
            atol=1e-5,
        )


def test_guarding_twice_adds_nothing() -> None:
    model = residual_blocks()
    assert guard_layer_norms(model) == 2
    assert guard_layer_norms(model) == 0
    assert [i.name for i in model.graph.initializer].count("ferry_layer_norm_guard_shape") == 1


def test_shapes_come_from_shape_inference(tmp_path: Path) -> None:
    """The sums carry no shape annotation: ONNX shape inference finds them 3-D from the input's
    shape; without one nothing tells they are 3-D (nor does ORT know, and it does not fuse)."""
    model = residual_blocks()
    assert not model.graph.value_info
    assert guard_layer_norms(model) == 2
    unknown = residual_blocks(shapes=False)
    assert guard_layer_norms(unknown) == 0
    path = tmp_path / "unknown.onnx"
    onnx.save(unknown, str(path))
    assert session_ops(path, tmp_path)["SkipLayerNormalization"] == 0


def test_a_2d_sum_is_left_alone() -> None:
    """(batch, 16): ONNX Runtime fuses 3-D sums only."""
    weight = np.eye(HIDDEN, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["p"]),
            helper.make_node("Add", ["x", "p"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma"], ["y"], axis=-1),
        ],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.ones(HIDDEN, np.float32), "gamma"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert guard_layer_norms(model) == 0
