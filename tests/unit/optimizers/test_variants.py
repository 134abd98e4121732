"""Each CPU variant builds from a real ONNX model and runs in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from optimizers import variants
from optimizers.onnx_variants import STATIC_EXCLUDED_OPS, is_transformer, op_types
from optimizers.runners import OrtRunner, run_dataset, slice_inputs
from optimizers.source import load_dataset, locate_source
from tests.support.onnx_models import mlp_model
from tests.unit.optimizers.models import Example, write_encoder_example, write_example


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return write_example(tmp_path_factory.mktemp("variants"))


def context(
    example: Example, work: Path, excluded: tuple[str, ...] = STATIC_EXCLUDED_OPS
) -> variants.BuildContext:
    source = locate_source(example.repository, example.name, None)
    calibration = load_dataset(
        example.calibration_data, source, role="calibration", need_labels=False
    )
    return variants.BuildContext(
        source, work, "cpu", calibration, "minmax", excluded, {"input": (32,)}, work / "cache"
    )


@pytest.mark.parametrize(
    ("name", "ops"),
    [
        ("ort-fp32", None),
        ("int8-dynamic", {"DynamicQuantizeLinear", "MatMulInteger"}),
        ("int8-static", {"QuantizeLinear", "DequantizeLinear"}),
        ("fp16", {"Cast"}),
    ],
)
def test_cpu_variant_builds_and_matches_fp32(
    example: Example, tmp_path: Path, name: str, ops: set[str] | None
) -> None:
    ctx = context(example, tmp_path)
    artifact = variants.build(variants.VARIANTS[name], ctx)
    assert artifact.path.is_file() and artifact.precision == variants.VARIANTS[name].precision
    if ops:
        assert ops <= op_types(artifact.path)
    model = onnx.load(str(artifact.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    data = np.load(example.eval_data)
    runtime = artifact.open("cpu", 1, ctx.source)
    got = run_dataset(runtime, {"input": data["input"]}, 256, ["output"], 8)["output"]
    fp32 = OrtRunner(ctx.source.onnx_path, ["CPUExecutionProvider"], 1).infer(
        {"input": data["input"]}, ["output"]
    )["output"]
    tolerance = 1e-4 if name == "ort-fp32" else 0.25 * float(np.abs(fp32).max())
    assert np.abs(got - fp32).max() < tolerance
    assert np.mean(got.argmax(1) == fp32.argmax(1)) > 0.9


def norm_softmax_model() -> onnx.ModelProto:
    """input -> MatMul -> LayerNormalization -> MatMul -> Softmax (the ops INT8 breaks)."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((32, 16)),
        "scale": np.ones(16),
        "bias": np.zeros(16),
        "w2": rng.standard_normal((16, 5)),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["n"], axis=-1),
            helper.make_node("MatMul", ["n", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=-1),
        ],
        "norm_softmax",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 5])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_static_int8_exclusions(example: Example, tmp_path: Path) -> None:
    onnx.save(norm_softmax_model(), str(example.model_dir / "1" / "model.onnx"))
    try:
        spec = variants.VARIANTS["int8-static"]
        naive = variants.build(spec, context(example, tmp_path / "naive", ()))
        default = variants.build(spec, context(example, tmp_path / "default"))
    finally:
        onnx.save(mlp_model(32, 64, 5, seed=0), str(example.model_dir / "1" / "model.onnx"))
    assert naive.details["excluded_op_types"] == [] and default.details["excluded_nodes"] == 2

    def quantized_after(path: Path, op_type: str) -> bool:
        nodes = onnx.load(str(path)).graph.node
        produced = {o for n in nodes if n.op_type == op_type for o in n.output}
        return any(n.op_type == "QuantizeLinear" and n.input[0] in produced for n in nodes)

    def quantized_params(path: Path) -> set[str]:
        return {i.name for i in onnx.load(str(path)).graph.initializer if "quantized" in i.name}

    assert quantized_after(naive.path, "Softmax")
    assert "scale_quantized" in quantized_params(naive.path)
    assert not quantized_after(default.path, "Softmax")
    assert quantized_params(default.path) == {"w1_quantized", "w2_quantized"}


def test_transformer_detection(example: Example) -> None:
    assert not is_transformer(example.model_dir / "1" / "model.onnx")


def test_default_variants_exist_for_every_target() -> None:
    for target, names in variants.DEFAULT_VARIANTS.items():
        assert all(target in variants.VARIANTS[n].targets for n in names)


@pytest.fixture(scope="module")
def encoder_example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return write_encoder_example(tmp_path_factory.mktemp("encoder"))


def encoder_context(example: Example, work: Path) -> variants.BuildContext:
    source = locate_source(example.repository, example.name, None)
    data = load_dataset(example.eval_data, source, role="eval", need_labels=True)
    return variants.BuildContext(
        source,
        work,
        "cpu",
        None,
        "minmax",
        STATIC_EXCLUDED_OPS,
        {"tokens": (64,)},
        work / "cache",
        samples=slice_inputs(data.inputs, 0, 8, batching=True),
    )


def test_transformer_variants_fuse_attention(encoder_example: Example, tmp_path: Path) -> None:
    """ort-fp32 gets ORT's Attention op for the dynamo graph (no SkipLayerNormalization on CPU,
    slower there); int8-dynamic quantizes it to QAttention; both stay close to FP32."""
    ctx = encoder_context(encoder_example, tmp_path)
    assert is_transformer(ctx.source.onnx_path)
    data = np.load(encoder_example.eval_data)
    fp32 = OrtRunner(ctx.source.onnx_path, ["CPUExecutionProvider"], 1).infer(
        {"tokens": data["tokens"]}, ["output"]
    )["output"]
    fused = variants.build(variants.VARIANTS["ort-fp32"], ctx)
    assert fused.details["transformer_fusions"]["Attention"] == 2
    assert "SkipLayerNormalization" not in fused.details["transformer_fusions"]
    assert "Attention" in op_types(fused.path) and "Transpose" not in op_types(fused.path)
    got = fused.open("cpu", 1, ctx.source).infer({"tokens": data["tokens"]}, ["output"])["output"]
    np.testing.assert_allclose(got, fp32, atol=1e-5)
    int8 = variants.build(variants.VARIANTS["int8-dynamic"], ctx)
    assert int8.details["quantized_ops"]["QAttention"] == 2
    assert {"QAttention", "DynamicQuantizeLinear", "MatMulInteger"} <= op_types(int8.path)
    got = int8.open("cpu", 1, ctx.source).infer({"tokens": data["tokens"]}, ["output"])["output"]
    assert np.abs(got - fp32).max() < 0.02
    assert np.mean(got.argmax(1) == fp32.argmax(1)) >= 0.9


def test_without_samples_transformers_are_not_attention_fused(
    encoder_example: Example, tmp_path: Path
) -> None:
    ctx = encoder_context(encoder_example, tmp_path)
    ctx = variants.BuildContext(**{**ctx.__dict__, "samples": None})
    int8 = variants.build(variants.VARIANTS["int8-dynamic"], ctx)
    assert "Attention" not in int8.details["transformer_fusions"]
    assert "QAttention" not in op_types(int8.path) and "MatMulInteger" in op_types(int8.path)
