"""Export a torch module to ONNX with named dynamic axes (the TorchScript exporter: fast, and
stable for RNNs), for serving tests and benchmarks that need models with variable dimensions."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import onnx
import torch


def export_onnx(
    module: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> onnx.ModelProto:
    """`module` traced on `inputs` (names -> example tensors); `dynamic_axes` names the variable
    dims of each input and output, e.g. {"sequence": {0: "batch", 1: "seq_len"}}."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            tuple(inputs.values()),
            buffer,
            input_names=list(inputs),
            output_names=list(output_names),
            dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())
