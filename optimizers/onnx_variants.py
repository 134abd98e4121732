"""ONNX-to-ONNX candidate builders: ORT graph optimization, INT8 dynamic/static, FP16."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from optimizers.attention_fusion import fuse_attention_file
from optimizers.layer_norm_guard import guard_layer_norms
from optimizers.source import Dataset, OptimizeError

# Nodes that break INT8 accuracy when quantized (outlier activations), ORT's fused forms included.
STATIC_EXCLUDED_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "Gelu",
    "FastGelu",
    "BiasGelu",
)
# Kept in FP32 by the FP16 conversion: reductions, variance, exponentials overflow in FP16.
FP16_BLOCKED_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Softmax",
    "Exp",
    "Log",
    "Sqrt",
    "Erf",
)
QUANTIZED_OP_TYPES = ["MatMul", "Gemm", "Conv"]
# quantize_dynamic: fused `Attention` becomes QAttention (its QKV projection in INT8).
DYNAMIC_QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Attention")
CALIBRATION_MAX_SAMPLES = 512
CALIBRATION_BATCH = 16
logger = logging.getLogger(__name__)


def _nodes(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


def op_types(path: Path) -> set[str]:
    """Operator types used by an ONNX model's main graph."""
    return {node.op_type for node in _nodes(path)}


def is_transformer(path: Path) -> bool:
    """Attention-shaped graphs (MatMul + Softmax + a normalization) get transformer fusions."""
    ops = op_types(path)
    return {"MatMul", "Softmax"} <= ops and bool(ops & {"LayerNormalization", "ReduceMean"})


def ort_offline_optimize(source: Path, output: Path, providers: list[Any]) -> None:
    """ORT EXTENDED graph optimization saved to a file (portable across x86 CPUs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(output)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=providers)


def transformer_fuse(
    source: Path, output: Path, use_gpu: bool, samples: Mapping[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Attention fusion, then onnxruntime.transformers fusions; returns the details to report:
    `transformer_fusions` (the fused-op counts), `fused_attention` and, on CPU,
    `layer_norm_guards`.

    `fuse_attention_file` matches the self-attention of the torch dynamo export (which the ORT
    optimizer's bert patterns miss) and keeps it only when the fused graph matches the source
    on `samples`. On CPU, SkipLayerNormalization is kept out: its CPU kernel is slower than the
    LayerNormalization + Add it replaces (encoder example, 2-core AVX2 EPYC, ORT 1.32: FP32
    1.03-1.06x with it vs 1.10-1.17x without, vs the source). The optimizer's fusion is left off
    and `guard_layer_norms` keeps ONNX Runtime from making the same fusion when a session loads
    the graph (for post-norm encoders such as BERT it did at every LayerNormalization).
    BiasGelu is left off on CPU too: unfused, ONNX Runtime folds the feed-forward bias into
    the INT8 DynamicQuantizeMatMul and runs the ONNX Gelu kernel, faster than its BiasGelu
    (HF BERT of bench.optimize_examples, INT8 at batch 32: 3.9-4.1 ms against 6.5-7.2 ms for
    the 4 layers); FP32 sessions fuse Add + Gelu into BiasGelu on load as before.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    attention = output.with_name(output.stem + ".attention.onnx")
    fused_blocks = fuse_attention_file(source, attention, samples)
    options = FusionOptions("bert")
    if not use_gpu:
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
        options.enable_bias_gelu = False  # INT8: the bias goes into DynamicQuantizeMatMul
    with contextlib.chdir(output.parent):  # as in preprocess: shape inference dumps here
        fused = optimizer.optimize_model(
            str(attention.resolve()),
            model_type="bert",
            num_heads=0,
            hidden_size=0,
            opt_level=0,
            use_gpu=use_gpu,
            optimization_options=options,
        )
    guards = None if use_gpu else guard_layer_norms(fused.model)
    fused.save_model_to_file(str(output))
    attention.unlink()
    stats = {
        name: int(count)
        for name, count in (  # the graph's fused ops, ours included
            fused.get_fused_operator_statistics() or {}
        ).items()
        if count
    }
    logger.info(
        "attention fusion: %d block(s); fused ops %s; %s LayerNormalization(s) guarded",
        fused_blocks,
        stats,
        guards,
    )
    details: dict[str, Any] = {
        "transformer_fusions": stats,
        "fused_attention": stats.get("Attention", 0),
    }
    if guards is not None:
        details["layer_norm_guards"] = guards
    return details


def build_ort_fp32(
    source: Path,
    output: Path,
    providers: list[Any],
    samples: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """`ort-fp32`: transformer fusions (for transformer graphs) then offline EXTENDED."""
    details: dict[str, Any] = {"graph_optimization_level": "ORT_ENABLE_EXTENDED"}
    graph = source
    if is_transformer(source):
        fused_path = output.with_name("fused.onnx")
        details |= transformer_fuse(
            source, fused_path, use_gpu=_first(providers) != "CPUExecutionProvider", samples=samples
        )
        graph = fused_path
    ort_offline_optimize(graph, output, providers)
    return details


def preprocess(source: Path, output: Path) -> None:
    """quant_pre_process (shape inference + basic optimization), then name unnamed nodes."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # ORT's symbolic shape inference dumps sym_shape_infer_temp.onnx (+ .data) into the working
    # directory when it fails (Hugging Face graphs): let it dump into the build folder
    source, output = source.resolve(), output.resolve()
    with contextlib.chdir(output.parent):
        try:
            quant_pre_process(str(source), str(output))
        except Exception as exc:  # symbolic shape inference fails on some graphs: retry without
            logger.info("quant_pre_process with symbolic shapes failed (%s); retrying without", exc)
            quant_pre_process(str(source), str(output), skip_symbolic_shape=True)
    model = onnx.load(str(output))
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{index}"
    onnx.save(model, str(output))


def build_int8_dynamic(
    source: Path, output: Path, per_channel: bool, samples: Mapping[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """`int8-dynamic`: quant_pre_process + quantize_dynamic of MatMul/Gemm weights.

    Transformer graphs are fused first (`transformer_fuse`, CPU fusions) so that each
    self-attention block becomes one `Attention` node, which quantize_dynamic turns into
    `QAttention` (INT8 QKV projection; no reshape/transpose traffic around the heads).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    details: dict[str, Any] = {"weight_type": "QInt8", "per_channel": per_channel}
    graph = source
    if is_transformer(source):
        graph = output.with_name("fused.onnx")
        details |= transformer_fuse(source, graph, use_gpu=False, samples=samples)
    ops = list(DYNAMIC_QUANTIZED_OP_TYPES)
    pre = output.with_name("preprocessed.onnx")
    preprocess(graph, pre)
    quantize_dynamic(
        str(pre),
        str(output),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=ops,
    )
    quantized = Counter(node.op_type for node in _nodes(output))
    return details | {
        "ops": ops,
        "quantized_ops": {
            op: quantized[op]
            for op in ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul")
            if quantized[op]
        },
    }


class _Calibration:
    """CalibrationDataReader over real samples, in small batches."""

    def __init__(self, data: Dataset, batching: bool) -> None:
        self._data, self._batching = data, batching
        self._iterator = self._batches()

    def _batches(self) -> Iterator[dict[str, Any]]:
        count = min(self._data.count, CALIBRATION_MAX_SAMPLES)
        step = CALIBRATION_BATCH if self._batching else 1
        for start in range(0, count, step):
            yield {
                name: (array[start : start + step] if self._batching else array[start])
                for name, array in self._data.inputs.items()
            }

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = self._batches()


def build_int8_static(
    source: Path,
    output: Path,
    calibration: Dataset,
    *,
    batching: bool,
    method: str,
    excluded_ops: tuple[str, ...],
    symmetric: bool,
    per_channel: bool = True,
) -> dict[str, Any]:
    """`int8-static`: QDQ S8S8 with calibration of MatMul/Gemm/Conv; excluded op types stay FP32.

    With no exclusions every quantizable op is quantized: the naive setting that breaks models
    with outlier activations (kept for comparison; the accuracy gate rejects it when it does).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise OptimizeError(f"unknown calibration method '{method}'; choose {sorted(methods)}")
    pre = output.with_name("preprocessed.onnx")
    preprocess(source, pre)
    excluded = [
        node.name for node in onnx.load(str(pre)).graph.node if node.op_type in excluded_ops
    ]
    quantize_static(
        str(pre),
        str(output),
        _Calibration(calibration, batching),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=QUANTIZED_OP_TYPES if excluded_ops else None,
        nodes_to_exclude=excluded,
        calibrate_method=methods[method],
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "CalibPercentile": 99.999,
        },
    )
    return {
        "format": "QDQ",
        "calibration_method": method,
        "per_channel": per_channel,
        "symmetric_activations": symmetric,
        "excluded_op_types": list(excluded_ops),
        "excluded_nodes": len(excluded),
        "calibration_samples": min(calibration.count, CALIBRATION_MAX_SAMPLES),
    }


def build_fp16(source: Path, output: Path) -> dict[str, Any]:
    """`fp16`: FP16 weights and compute, FP32 inputs/outputs, sensitive ops blocked."""
    import onnx
    from onnxruntime.transformers import float16

    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_BLOCKED_OPS))
    model = float16.convert_float_to_float16(
        onnx.load(str(source)), keep_io_types=True, op_block_list=blocked
    )
    onnx.save(model, str(output))
    return {"keep_io_types": True, "blocked_op_types": sorted(FP16_BLOCKED_OPS)}


def _first(providers: list[Any]) -> str:
    head = providers[0]
    return str(head[0] if isinstance(head, tuple) else head)
