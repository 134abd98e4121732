"""Keep ONNX Runtime's CPU sessions from fusing Add + LayerNormalization (SkipLayerNormalization).

When a session is created (ORT_ENABLE_EXTENDED and above: what `ferry serve` and Triton use by
default) ONNX Runtime rewrites `LayerNormalization(Add(a, b))` into its com.microsoft
`SkipLayerNormalization` when the Add feeds nothing else and both of its inputs are 3-D of the
same shape. On CPU that kernel (scalar loops, a division per element) is far slower than the two
ops it replaces: (32, 64, 256) floats on 2 cores of an AVX-512 Xeon with ORT 1.32, 1.37 ms against
0.31 ms for the Add and the LayerNormalization. Post-norm encoders (BERT, DistilBERT: every
residual Add feeds only its LayerNormalization) get it at every norm: in the INT8 HF BERT of
`bench.optimize_examples` (4 layers, hidden 256, batch 32) its 8 SkipLayerNormalization nodes took
11.5 of the 36 ms of a batch, more than all its quantized MatMuls. A pre-norm encoder (the
torch.nn `encoder` example) gets it only at its final norm, where its residual Add has one user.

`guard_layer_norms` puts a shape-preserving `Reshape(x, [0, 0, -1])` between such an Add and its
LayerNormalization: ONNX Runtime runs it in place (no copy) and the pattern no longer matches.
Only CPU graphs get it; the CUDA SkipLayerNormalization kernel is the fast one there.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

GUARD_PREFIX = "ferry_layer_norm_guard"
SHAPE_NAME = f"{GUARD_PREFIX}_shape"  # [0, 0, -1]: every dim of a 3-D tensor kept as it is
FUSED_RANK = 3  # ONNX Runtime fuses only Adds of two 3-D tensors of the same shape

Dim = int | str | None  # a size, a symbolic name, or unknown
Shape = tuple[Dim, ...]


def _shapes(model: Any) -> dict[str, Shape]:
    """Known shapes of the graph's tensors: its own annotations and initializers, else ONNX
    shape inference."""
    import onnx

    def annotated(graph: Any) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {
            value.name: tuple(
                dim.dim_value
                if dim.HasField("dim_value")
                else (dim.dim_param if dim.HasField("dim_param") else None)
                for dim in value.type.tensor_type.shape.dim
            )
            for value in (*graph.input, *graph.output, *graph.value_info)
            if value.type.tensor_type.HasField("shape")
        }
        return shapes | {init.name: tuple(init.dims) for init in graph.initializer}

    shapes = annotated(model.graph)
    try:  # fills what the annotations miss; contrib ops (Attention...) stay unknown
        shapes = annotated(onnx.shape_inference.infer_shapes(model).graph) | shapes
    except Exception as exc:  # a graph ONNX cannot infer: the annotations alone
        logger.info("shape inference failed (%s); using the graph's own shapes", exc)
    return shapes


def _fusable_sum(shapes: dict[str, Shape], add: Any) -> bool:
    """The Add's output is 3-D and nothing known says its inputs differ from it (a broadcast,
    as in the embeddings' Add of a (1, seq, hidden) position table, is not fused)."""
    out = shapes.get(add.output[0])
    if out is None or len(out) != FUSED_RANK:
        return False
    for name in add.input:
        shape = shapes.get(name)
        if shape is None:
            continue
        if len(shape) != FUSED_RANK or any(
            a is not None and b is not None and a != b for a, b in zip(shape, out, strict=True)
        ):
            return False
    return True


def _is_default_domain(node: Any) -> bool:
    return node.domain in ("", "ai.onnx")


def guard_layer_norms(model: Any) -> int:
    """Insert the guard before every LayerNormalization fed by a single-use Add of two 3-D
    tensors of one shape, in place; returns how many were guarded."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    outputs = {value.name for value in graph.output}
    shapes = _shapes(model)
    guards: dict[str, Any] = {}  # Add output -> its Reshape
    for node in graph.node:
        if node.op_type != "LayerNormalization" or not _is_default_domain(node):
            continue
        summed = node.input[0]
        add = producer.get(summed)
        if (
            add is None
            or add.op_type != "Add"
            or not _is_default_domain(add)
            or users.get(summed) != 1
            or summed in outputs
            or not _fusable_sum(shapes, add)
        ):
            continue
        guarded = f"{summed}_{GUARD_PREFIX}"
        guards[summed] = helper.make_node(
            "Reshape", [summed, SHAPE_NAME], [guarded], name=f"{GUARD_PREFIX}_{len(guards)}"
        )
        node.input[0] = guarded
    if not guards:
        return 0
    ordered = []
    for node in graph.node:  # each Reshape right after its Add: the order stays topological
        ordered.append(node)
        ordered += [guards[name] for name in node.output if name in guards]
    del graph.node[:]
    graph.node.extend(ordered)
    if SHAPE_NAME not in {init.name for init in graph.initializer}:
        shape = numpy_helper.from_array(np.array([0, 0, -1], np.int64), SHAPE_NAME)
        graph.initializer.append(shape)
    typed = {value.name: value for value in graph.value_info}
    for summed, reshape in guards.items():
        if summed in typed:  # the guarded tensor has the Add's type and shape
            value = graph.value_info.add()
            value.CopyFrom(typed[summed])
            value.name = reshape.output[0]
    return len(guards)
