"""Fuse self-attention blocks into ONNX Runtime's `Attention` contrib op.

ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`, model_type bert)
matches the attention subgraphs of HuggingFace-style exports; it does not match what the
torch.onnx dynamo exporter emits for `nn.MultiheadAttention` (a packed in-projection, reshapes
and transposes around a decomposed scaled_dot_product_attention, with the scale split between
Q and K). Left unfused, the Transpose/Split layout work is ~12 % of the FP32 and ~18 % of the
INT8 kernel time of the `encoder` example on a 2-core AVX2 CPU, and quantize_dynamic can only
quantize the projections one by one. Fused, quantize_dynamic makes each block a QAttention.

This pass matches the attention semantics rather than one exporter's node sequence:

    Softmax(MatMul(q, k) * scale [+ mask bias]) [NaN guard] @ v

where q, k and v reach one packed projection `x @ W + b` (or three projections of the same x)
through layout-only ops (Reshape, Transpose, Squeeze, Unsqueeze, Gather/Split of the packed
axis, scalar Mul/Div), and the context goes through layout-only ops to an output projection.
Each match becomes `Attention(x, W_qkv, b_qkv)` + `MatMul` (+ `Add`) for the output
projection. The caller must check the fused model against the original on real inputs
(`fuse_attention_file` does): the match infers the head count and layout from the graph and the
check is what proves the inference right.

Hugging Face models (BERT, DistilBERT, ViT... through SDPA or eager attention) add a bias built
from `attention_mask` before the Softmax, and SDPA's decomposition zeroes NaN rows after it
(`Where(IsNaN(p), 0, p)`). A bias computed from exactly one rank-2 graph input (the padding
mask: shapes aside) becomes the Attention op's 2-D `mask_index` (key positions where the mask is
0 are left out); a bias computed from shapes and constants alone (ViT's all-true mask) is
dropped. Any other bias (a learned position bias, a causal mask) leaves the block unfused, as would
a wrong guess: the check runs the samples and the same samples with padding at the end of the
mask. Dropping the NaN guard changes only rows whose keys are all masked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten"})
MS_DOMAIN = "com.microsoft"
MASK_INDEX_PREFIX = "ferry_attention_mask_index"
CHECK_TOLERANCE = 1e-3  # fused vs source, relative to each checked tensor's largest value


@dataclass
class _Branch:
    """Where one of q, k, v comes from: a projection output and its block of the packed axis."""

    root: str  # the projection output (x @ W + b)
    block: int | None  # Gather index / Split output along the packed q|k|v axis; None: unpacked
    scale: float
    head_size: int | None  # last dim of the nearest Reshape (q branch: the head size)


@dataclass
class _Projection:
    x: str
    weight: np.ndarray  # (in, out), as MatMul's B
    bias: np.ndarray | None
    nodes: list[Any]


class _Graph:
    """Producer / consumer / constant lookups over an onnx GraphProto."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.constants: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in self.graph.initializer
        }
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        for attribute in node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.reshape(-1)[0])

    def sole_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _scaled(g: _Graph, node: Any) -> tuple[float, str] | None:
    """(factor, tensor) when a Mul / Div node is `tensor * factor` with a constant scalar."""
    factor = g.scalar(node.input[1])
    if factor is not None and factor != 0.0:
        return (factor if node.op_type == "Mul" else 1.0 / factor), str(node.input[0])
    factor = g.scalar(node.input[0]) if node.op_type == "Mul" else None
    return None if factor is None else (factor, str(node.input[1]))


def _trace_branch(g: _Graph, name: str) -> _Branch | None:
    """Walk back from a q/k/v operand through layout ops to the projection output."""
    scale, block, head_size = 1.0, None, None
    for _ in range(64):
        node = g.producer.get(name)
        if node is None:
            return None
        if node.op_type in LAYOUT_OPS:
            if node.op_type == "Reshape" and head_size is None:
                last = _last_shape_value(g, node.input[1])
                if last is not None and last > 0:
                    head_size = last
            name = node.input[0]
        elif node.op_type in ("Mul", "Div"):
            scaled = _scaled(g, node)
            if scaled is None:
                return None
            factor, name = scaled
            scale *= factor
        elif node.op_type == "Gather" and block is None:
            index = g.constants.get(node.input[1])
            if index is None or index.size != 1:
                return None
            block, name = int(index.reshape(-1)[0]), node.input[0]
        elif node.op_type == "Split" and block is None:
            block, name = list(node.output).index(name), node.input[0]
        else:
            return _Branch(name, block, scale, head_size)
    return None


def _last_shape_value(g: _Graph, name: str) -> int | None:
    """The last entry of a Reshape's target shape: a constant, or the last (constant) piece of
    a Concat that builds the shape from the input's dims (HF: `view(*shape[:-1], -1, d)`)."""
    shape = g.constants.get(name)
    if shape is None:
        concat = g.producer.get(name)
        if concat is None or concat.op_type != "Concat":
            return None
        shape = g.constants.get(concat.input[-1])
    if shape is None or not shape.size:
        return None
    return int(shape.reshape(-1)[-1])


def _leads_to_matmul(g: _Graph, name: str) -> bool:
    """`name` is MatMul(q, k), possibly scaled by constant scalars."""
    node = g.producer.get(name)
    while node is not None and node.op_type in ("Mul", "Div"):
        scaled = _scaled(g, node)
        if scaled is None:
            return False
        node = g.producer.get(scaled[1])
    return node is not None and node.op_type == "MatMul"


def _mask_source(g: _Graph, bias: str) -> tuple[bool, str | None]:
    """(fusable, mask input) for an additive bias before the Softmax: the one rank-2 graph input
    it is computed from (None: shapes and scalar constants only); not fusable when it reads any
    other input, an input of another rank, or a float tensor constant (a learned bias)."""
    inputs = {v.name: v for v in g.graph.input}
    reached: set[str] = set()
    stack, seen = [bias], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs and name not in g.constants:
            reached.add(name)
            continue
        constant = g.constants.get(name)
        if constant is not None and constant.dtype.kind == "f" and constant.size > 1:
            return False, None  # learned values (T5's relative position bias): not a mask
        node = g.producer.get(name)
        if node is None or node.op_type == "Shape":  # shape reads carry no data
            continue
        stack += [i for i in node.input if i]
    if not reached:
        return True, None
    if len(reached) != 1:
        return False, None
    name = next(iter(reached))
    rank = len(inputs[name].type.tensor_type.shape.dim)
    return (True, name) if rank == 2 else (False, None)


def _context_matmul(g: _Graph, probs: str) -> Any | None:
    """The MatMul(probs, v) after the Softmax, through SDPA's NaN guard Where(IsNaN(p), 0, p)."""
    users = g.consumers.get(probs, [])
    if probs in g.outputs:
        return None
    if len(users) == 1 and users[0].op_type == "MatMul" and users[0].input[0] == probs:
        return users[0]
    isnan = [u for u in users if u.op_type == "IsNaN"]
    where = [u for u in users if u.op_type == "Where"]
    if len(users) != 2 or len(isnan) != 1 or len(where) != 1:
        return None
    guard = where[0]
    zero = g.scalar(guard.input[1])
    if guard.input[0] != isnan[0].output[0] or guard.input[2] != probs or zero != 0.0:
        return None
    user = g.sole_consumer(guard.output[0])
    if user is None or user.op_type != "MatMul" or user.input[0] != guard.output[0]:
        return None
    return user


def _projection(g: _Graph, name: str) -> _Projection | None:
    """`name` = x @ W (+ b) with constant W (2-D) and b."""
    node = g.producer.get(name)
    bias, nodes = None, []
    if node is not None and node.op_type == "Add":
        for i in (0, 1):
            constant = g.constants.get(node.input[1 - i])
            if constant is not None and constant.ndim == 1:
                bias, nodes = constant, [node]
                node = g.producer.get(node.input[i])
                break
        else:
            return None
    if node is None:
        return None
    if node.op_type == "MatMul":
        weight = g.constants.get(node.input[1])
        if weight is None or weight.ndim != 2:
            return None
        return _Projection(node.input[0], weight, bias, [node, *nodes])
    if (
        node.op_type == "Gemm"
        and bias is None
        and not g.attr(node, "transA", 0)
        and g.attr(node, "alpha", 1.0) == 1.0
        and g.attr(node, "beta", 1.0) == 1.0
    ):
        weight = g.constants.get(node.input[1])
        c = g.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None or weight.ndim != 2 or (c is not None and c.ndim != 1):
            return None
        weight = weight.T if g.attr(node, "transB", 0) else weight
        return _Projection(node.input[0], weight, c, [node])
    return None


def _follow_layout(g: _Graph, name: str) -> str:
    """The last tensor of a chain of single-consumer layout ops starting at `name`."""
    while (user := g.sole_consumer(name)) is not None and user.op_type in LAYOUT_OPS:
        name = user.output[0]
    return name


def _out_projection(g: _Graph, name: str) -> _Projection | None:
    """The projection consuming `name`: MatMul / Gemm with a constant weight (+ constant bias)."""
    user = g.sole_consumer(name)
    if user is None or user.op_type not in ("MatMul", "Gemm") or user.input[0] != name:
        return None
    projection = _projection(g, user.output[0])
    if projection is None or projection.bias is not None:  # Gemm's C
        return projection
    after = g.sole_consumer(user.output[0])
    if after is not None and after.op_type == "Add":
        biased = _projection(g, after.output[0])
        if biased is not None and biased.x == name:
            return biased
    return projection


def _batch_first_input(g: _Graph, x: str) -> str:
    """The (batch, seq, hidden) tensor: x itself, or x's source when x is its (seq, batch) view."""
    node = g.producer.get(x)
    if (
        node is not None
        and node.op_type == "Transpose"
        and list(g.attr(node, "perm", [])) == [1, 0, 2]
    ):
        return str(node.input[0])
    return x


def _match(g: _Graph, softmax: Any) -> dict[str, Any] | None:
    """One attention block around a Softmax, or None."""
    if g.attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores, scale, mask = softmax.input[0], 1.0, None
    node = g.producer.get(scores)
    if node is not None and node.op_type == "Add":
        sides = [i for i in (0, 1) if _leads_to_matmul(g, node.input[i])]
        if len(sides) != 1:
            return None
        fusable, mask = _mask_source(g, node.input[1 - sides[0]])
        if not fusable:
            return None
        node = g.producer.get(node.input[sides[0]])
    while node is not None and node.op_type in ("Mul", "Div"):
        scaled = _scaled(g, node)
        if scaled is None:
            return None
        scale *= scaled[0]
        node = g.producer.get(scaled[1])
    if node is None or node.op_type != "MatMul":
        return None
    context_node = _context_matmul(g, softmax.output[0])
    if context_node is None:
        return None
    q, k = _trace_branch(g, node.input[0]), _trace_branch(g, node.input[1])
    v = _trace_branch(g, context_node.input[1])
    if q is None or k is None or v is None or q.head_size is None:
        return None
    if len({q.root, k.root, v.root}) == 1:  # packed in-projection: blocks q | k | v of W
        projection = _projection(g, q.root)
        order = [b.block for b in (q, k, v) if b.block is not None]
        if projection is None or sorted(order) != [0, 1, 2]:
            return None
        hidden = projection.weight.shape[1] // 3
        weight = np.concatenate(
            [projection.weight[:, b * hidden : (b + 1) * hidden] for b in order], axis=1
        )
        bias = (
            None
            if projection.bias is None
            else np.concatenate([projection.bias[b * hidden : (b + 1) * hidden] for b in order])
        )
        x = projection.x
    else:
        parts = [_projection(g, b.root) for b in (q, k, v)]
        if any(p is None or b.block is not None for p, b in zip(parts, (q, k, v), strict=True)):
            return None
        projections = [p for p in parts if p is not None]
        if len({p.x for p in projections}) != 1 or len({p.weight.shape for p in projections}) != 1:
            return None
        hidden = projections[0].weight.shape[1]
        weight = np.concatenate([p.weight for p in projections], axis=1)
        bias = (
            None
            if any(p.bias is None for p in projections)
            else np.concatenate([p.bias for p in projections if p.bias is not None])
        )
        x = projections[0].x
    if hidden % q.head_size or hidden == q.head_size:
        return None
    # Forward from the context through layout ops to the output projection, then to the output.
    name = _follow_layout(g, context_node.output[0])
    out = _out_projection(g, name)
    if out is None or out.weight.shape[0] != hidden:
        return None
    name = _follow_layout(g, out.nodes[-1].output[0])
    if bias is None:
        bias = np.zeros(weight.shape[1], dtype=weight.dtype)
    return {
        "x": _batch_first_input(g, x),
        "weight": weight,
        "bias": bias,
        "num_heads": hidden // q.head_size,
        "scale": scale * q.scale * k.scale,
        "v_scale": v.scale,
        "out_weight": out.weight,
        "out_bias": out.bias,
        "output": name,
        "mask": mask,
    }


def fuse_attention(model: Any) -> list[str]:
    """Rewrite every matched attention block in place; returns the fused blocks' outputs."""
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(model)
    matches = [
        m
        for node in g.graph.node
        if node.op_type == "Softmax"
        if (m := _match(g, node)) is not None
    ]
    new_nodes, new_initializers = [], []
    mask_index: dict[str, str] = {}  # mask input -> its int32 cast, shared by every block
    for mask in sorted({m["mask"] for m in matches if m["mask"] is not None}):
        mask_index[mask] = f"{MASK_INDEX_PREFIX}_{len(mask_index)}"
        new_nodes.append(
            helper.make_node(
                "Cast", [mask], [mask_index[mask]], name=mask_index[mask], to=TensorProto.INT32
            )
        )
    for index, match in enumerate(matches):
        prefix = f"ferry_attention_{index}"
        weight = match["weight"].astype(np.float32)
        if match["v_scale"] != 1.0:  # a scalar on v scales the context: fold it into W_v
            hidden = weight.shape[1] // 3
            weight[:, 2 * hidden :] *= match["v_scale"]
            match["bias"] = match["bias"].copy()
            match["bias"][2 * hidden :] *= match["v_scale"]
        new_initializers += [
            numpy_helper.from_array(weight, f"{prefix}_qkv_weight"),
            numpy_helper.from_array(match["bias"].astype(np.float32), f"{prefix}_qkv_bias"),
            numpy_helper.from_array(match["out_weight"].astype(np.float32), f"{prefix}_out_weight"),
        ]
        context, projected = f"{prefix}_context", f"{prefix}_projected"
        new_nodes.append(
            helper.make_node(
                "Attention",
                [match["x"], f"{prefix}_qkv_weight", f"{prefix}_qkv_bias"]
                + ([mask_index[match["mask"]]] if match["mask"] is not None else []),
                [context],
                name=prefix,
                domain=MS_DOMAIN,
                num_heads=int(match["num_heads"]),
                scale=float(match["scale"]),
            )
        )
        if match["out_bias"] is None:
            new_nodes.append(
                helper.make_node(
                    "MatMul",
                    [context, f"{prefix}_out_weight"],
                    [match["output"]],
                    name=f"{prefix}_out",
                )
            )
        else:
            new_initializers.append(
                numpy_helper.from_array(match["out_bias"].astype(np.float32), f"{prefix}_out_bias")
            )
            new_nodes += [
                helper.make_node(
                    "MatMul", [context, f"{prefix}_out_weight"], [projected], name=f"{prefix}_out"
                ),
                helper.make_node(
                    "Add",
                    [projected, f"{prefix}_out_bias"],
                    [match["output"]],
                    name=f"{prefix}_out_bias",
                ),
            ]
    if not matches:
        return []
    replaced = {m["output"] for m in matches}
    kept = [n for n in g.graph.node if not set(n.output) & replaced]
    ordered = _topological([*kept, *new_nodes])
    del g.graph.node[:]
    g.graph.node.extend(ordered)
    g.graph.initializer.extend(new_initializers)
    # ONNX shape inference does not know contrib ops: type their outputs for quant_pre_process
    # and the quantizer, which otherwise cannot type the projection after the Attention node
    typed = {v.name for v in g.graph.value_info}
    g.graph.value_info.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for node in new_nodes
        if node.op_type != "Cast"
        for name in node.output
        if name not in typed and name not in g.outputs
    )
    _remove_dead_nodes(model)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return [m["output"] for m in matches]


def _topological(nodes: list[Any]) -> list[Any]:
    """Nodes in an order where every input is produced before it is used (stable otherwise)."""
    producer = {name: node for node in nodes for name in node.output}
    done: set[int] = set()
    ordered: list[Any] = []
    for root in nodes:
        stack, visiting = [(root, False)], set()
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                ordered.append(node)
                continue
            if id(node) in visiting:
                raise ValueError(f"cycle through node {node.name}")
            visiting.add(id(node))
            stack.append((node, True))
            stack += [
                (producer[name], False)
                for name in reversed(node.input)
                if name in producer and id(producer[name]) not in done
            ]
    return ordered


def _used_names(node: Any) -> set[str]:
    """Tensors a node reads, those read inside its subgraphs (If / Loop / Scan bodies) included."""
    names = set(node.input)
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names |= _used_names(inner)
    return names


def _remove_dead_nodes(model: Any) -> None:
    """Drop nodes, initializers and value_info that no longer feed a graph output."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    alive: list[Any] = []
    for node in reversed(list(graph.node)):
        if set(node.output) & needed:
            alive.append(node)
            needed |= _used_names(node)
    alive.reverse()
    del graph.node[:]
    graph.node.extend(alive)
    for field in (graph.initializer, graph.value_info):
        kept = [item for item in field if item.name in needed]
        del field[:]
        field.extend(kept)


def fuse_attention_file(
    source: Path, output: Path, samples: Mapping[str, np.ndarray] | None
) -> int:
    """Fuse `source` into `output` when the fused model reproduces it on `samples`.

    The check compares every fused block's output tensor (the residual-stream tensor it
    replaces, present in both graphs) and every model output, each to `CHECK_TOLERANCE` of its
    own scale: comparing the final outputs alone can miss a wrong fusion when the attention
    contributes little to them. Returns the number of fused blocks (0: nothing matched, no
    samples to check with, or the check failed; `output` is then the source graph).
    """
    import onnx

    model = onnx.load(str(source))
    original = onnx.load(str(source))
    fused = fuse_attention(model)
    if fused and samples is None:
        logger.warning(
            "attention fusion matched %d block(s) but there is no sample data to "
            "check them; not fused",
            len(fused),
        )
        model, fused = original, []
    elif fused and samples is not None:
        masks = [n.input[0] for n in model.graph.node if n.name.startswith(MASK_INDEX_PREFIX)]
        errors = [
            _relative_error(original, model, checked, fused)
            for checked in (samples, *([_padded(samples, masks)] if masks else []))
        ]
        error = None if None in errors else max(e for e in errors if e is not None)
        if error is None or error > CHECK_TOLERANCE:
            logger.warning(
                "attention fusion changed the results (relative error %s); not fused", error
            )
            model, fused = original, []
    onnx.save(model, str(output))
    return len(fused)


def _padded(samples: Mapping[str, np.ndarray], masks: list[str]) -> dict[str, np.ndarray]:
    """The samples with padding at the end of every other row of each mask input (a third of
    its length set to 0): the mask must act as a padding mask, whatever the samples held."""
    padded = dict(samples)
    for name in masks:
        mask = np.array(samples[name], copy=True)
        if mask.ndim == 2 and mask.shape[1] >= 2:
            mask[1::2, mask.shape[1] - max(1, mask.shape[1] // 3) :] = 0
        padded[name] = mask
    return padded


def _relative_error(
    original: Any, fused: Any, samples: Mapping[str, np.ndarray], tensors: list[str]
) -> float | None:
    """Worst max|fused - original| / max|original| over the outputs and the fused tensors;
    None when the fused graph does not run or its results have the wrong shape or NaN/Inf."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    options = ort.SessionOptions()
    options.log_severity_level = 3
    results = []
    try:
        for model in (original, fused):
            probe = onnx.ModelProto()
            probe.CopyFrom(model)
            names = [o.name for o in probe.graph.output]
            extra = [name for name in tensors if name not in names]  # float residual streams
            probe.graph.output.extend(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra
            )
            session = ort.InferenceSession(
                probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            results.append(session.run([*names, *extra], dict(samples)))
    except Exception as exc:  # the fused graph does not load or run: it is wrong
        logger.warning("the attention-fused model does not run: %s", exc)
        return None
    worst = 0.0
    for want, got in zip(*results, strict=True):
        want, got = np.asarray(want, dtype=np.float64), np.asarray(got, dtype=np.float64)
        if want.shape != got.shape or not np.all(np.isfinite(got)):
            return None
        if want.size:
            scale = max(float(np.abs(want).max()), 1e-6)
            worst = max(worst, float(np.abs(want - got).max()) / scale)
    return worst
