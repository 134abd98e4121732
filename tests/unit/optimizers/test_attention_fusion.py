"""Attention fusion: torch dynamo's nn.MultiheadAttention graph (and the HuggingFace-style form)
becomes ORT's Attention op, only when the fused graph reproduces the source."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizers import attention_fusion
from optimizers.attention_fusion import fuse_attention, fuse_attention_file
from tests.support.onnx_models import run_reference
from tests.unit.optimizers.models import encoder_onnx


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encoder_onnx(tmp_path_factory.mktemp("encoder") / "model.onnx", layers=2)


def tokens(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 32, (rows, 64)).astype(np.int64)


def ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_dynamo_multihead_attention_is_fused(encoder: Path, tmp_path: Path) -> None:
    fused = tmp_path / "fused.onnx"
    assert fuse_attention_file(encoder, fused, {"tokens": tokens(4)}) == 2
    counts = ops(fused)
    assert counts["Attention"] == 2
    # The layout work around the heads is gone; the one Softmax left is the classifier's.
    assert counts["Transpose"] == 0 and counts["Softmax"] == 1
    attention = next(n for n in onnx.load(str(fused)).graph.node if n.op_type == "Attention")
    attributes = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    assert attention.domain == "com.microsoft" and attributes["num_heads"] == 4
    assert attributes["scale"] == pytest.approx(1 / np.sqrt(64 // 4))
    for rows in (1, 7):  # any batch size, not only the checked one
        x = {"tokens": tokens(rows, seed=rows)}
        np.testing.assert_allclose(
            run_reference(fused, x)["output"], run_reference(encoder, x)["output"], atol=1e-5
        )
    onnx.checker.check_model(onnx.load(str(fused)))


def test_a_fusion_that_changes_outputs_is_dropped(
    encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_match = attention_fusion._match

    def wrong_heads(g: Any, softmax: Any) -> dict[str, Any] | None:
        match = real_match(g, softmax)
        return None if match is None else match | {"num_heads": 2}

    monkeypatch.setattr(attention_fusion, "_match", wrong_heads)
    fused = tmp_path / "fused.onnx"
    assert fuse_attention_file(encoder, fused, {"tokens": tokens(4)}) == 0
    assert ops(fused) == ops(encoder)


def test_no_sample_data_no_fusion(encoder: Path, tmp_path: Path) -> None:
    fused = tmp_path / "fused.onnx"
    assert fuse_attention_file(encoder, fused, None) == 0
    assert "Attention" not in ops(fused)


def separate_projection_attention(hidden: int = 32, heads: int = 4) -> onnx.ModelProto:
    """HuggingFace-style self-attention: three projections, (B,S,H,d) reshapes, a Div by
    sqrt(d) on the scores, K transposed to (B,H,d,S), then an output projection with bias."""
    rng = np.random.default_rng(0)
    head = hidden // heads
    weights = {f"w{n}": rng.standard_normal((hidden, hidden)) * 0.2 for n in "qkvo"}
    weights |= {f"b{n}": rng.standard_normal(hidden) * 0.1 for n in "qkvo"}
    arrays = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    arrays += [
        numpy_helper.from_array(np.array([0, 0, heads, head], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([0, 0, hidden], np.int64), "merged_shape"),
        numpy_helper.from_array(np.array(np.sqrt(head), np.float32), "sqrt_d"),
    ]
    nodes = []
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}0"]),
            helper.make_node("Add", [f"{n}0", f"b{n}"], [f"{n}1"]),
            helper.make_node("Reshape", [f"{n}1", "heads_shape"], [f"{n}2"]),
            helper.make_node("Transpose", [f"{n}2"], [n], perm=perm),
        ]
    nodes += [
        helper.make_node("MatMul", ["q", "k"], ["scores"]),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merged_shape"], ["merged"]),
        helper.make_node("MatMul", ["merged", "wo"], ["o0"]),
        helper.make_node("Add", ["o0", "bo"], ["attended"]),
        helper.make_node("Add", ["x", "attended"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hf_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10, hidden])],
        initializer=arrays,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_separate_projections_are_fused(tmp_path: Path) -> None:
    source = tmp_path / "hf.onnx"
    onnx.save(separate_projection_attention(), str(source))
    x = np.random.default_rng(1).standard_normal((3, 10, 32)).astype(np.float32)
    fused = tmp_path / "fused.onnx"
    assert fuse_attention_file(source, fused, {"x": x}) == 1
    assert ops(fused) == Counter({"Attention": 1, "MatMul": 1, "Add": 2})
    np.testing.assert_allclose(
        run_reference(fused, {"x": x})["y"], run_reference(source, {"x": x})["y"], atol=1e-5
    )


def test_masked_attention_is_left_alone() -> None:
    model = separate_projection_attention()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.zeros((10, 10), np.float32), "mask"))
    for node in graph.node:
        if node.op_type == "Softmax":
            node.input[0] = "masked"
    graph.node.append(helper.make_node("Add", ["scaled", "mask"], ["masked"]))
    assert fuse_attention(model) == []
