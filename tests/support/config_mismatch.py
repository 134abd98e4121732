"""Repositories whose config.pbtxt disagrees with model.onnx, one way per model, and what ferry
must say about each (load-time validation, `ferry check`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from tests.support.onnx_models import mlp_model, two_io_model, write_model

MLP_OUTPUT = 'output [{ name: "output" data_type: TYPE_FP32 dims: [4] }]'


@dataclass(frozen=True)
class MismatchCase:
    """A model folder and the fragments its UNAVAILABLE reason must contain."""

    model: onnx.ModelProto
    config: str
    expected: tuple[str, ...]


def _mlp_config(input_line: str, max_batch_size: int = 8, output: str = MLP_OUTPUT) -> str:
    return f"max_batch_size: {max_batch_size}\ninput [{input_line}]\n{output}\n"


MISMATCH_CASES: dict[str, MismatchCase] = {
    "renamed_input": MismatchCase(
        mlp_model(),
        _mlp_config('{ name: "features" data_type: TYPE_FP32 dims: [16] }'),
        ("unexpected inference input 'features'", "allowed inputs of model.onnx are: input"),
    ),
    "renamed_output": MismatchCase(
        mlp_model(),
        _mlp_config(
            '{ name: "input" data_type: TYPE_FP32 dims: [16] }',
            output='output [{ name: "logits" data_type: TYPE_FP32 dims: [4] }]',
        ),
        ("unexpected inference output 'logits'", "allowed outputs of model.onnx are: output"),
    ),
    "wrong_dtype": MismatchCase(
        mlp_model(),
        _mlp_config('{ name: "input" data_type: TYPE_INT32 dims: [16] }'),
        ("datatype TYPE_INT32 for input 'input'", "model.onnx provides TYPE_FP32"),
    ),
    "wrong_rank": MismatchCase(
        mlp_model(),
        _mlp_config('{ name: "input" data_type: TYPE_FP32 dims: [4, 4] }'),
        ("input 'input'", "model.onnx expects 2 dimensions (shape [-1,16])", "[-1,4,4]"),
    ),
    "wrong_dim": MismatchCase(
        mlp_model(),
        _mlp_config('{ name: "input" data_type: TYPE_FP32 dims: [8] }'),
        ("input 'input'", "expects shape [-1,16]", "dim 1 is 8 in config.pbtxt, 16 in model.onnx"),
    ),
    "variable_against_fixed": MismatchCase(
        mlp_model(),
        _mlp_config('{ name: "input" data_type: TYPE_FP32 dims: [-1] }'),
        ("input 'input'", "dim 1 is -1 in config.pbtxt (any size), 16 in model.onnx"),
    ),
    "no_batch_dim": MismatchCase(
        mlp_model(batch_dim=1),
        _mlp_config('{ name: "input" data_type: TYPE_FP32 dims: [16] }'),
        ("input 'input'", "first dimension must be -1", "shape expected by model.onnx is [1,16]"),
    ),
    "missing_input": MismatchCase(
        two_io_model(),
        _mlp_config(
            '{ name: "a" data_type: TYPE_FP32 dims: [3] }',
            output='output [{ name: "sum" data_type: TYPE_FP32 dims: [3] }]',
        ),
        ("configuration expects 1 inputs, model provides 2", "requires input 'b' (INT64 [-1,3])"),
    ),
}

# configs that match their model.onnx although they differ from it (-1 in the model, fixed in
# the config; the whole shape spelled out without batching)
MATCHING_CONFIGS: dict[str, tuple[onnx.ModelProto, str]] = {
    "matching": (mlp_model(), _mlp_config('{ name: "input" data_type: TYPE_FP32 dims: [16] }')),
    "no_batching": (
        mlp_model(),
        _mlp_config(
            '{ name: "input" data_type: TYPE_FP32 dims: [2, 16] }',
            max_batch_size=0,
            output='output [{ name: "output" data_type: TYPE_FP32 dims: [-1, 4] }]',
        ),
    ),
}


def write_mismatch_repository(repository: Path) -> Path:
    """Every mismatch case and every matching config as models of one repository."""
    for name, case in MISMATCH_CASES.items():
        write_model(repository, name, case.model, case.config)
    for name, (model, config) in MATCHING_CONFIGS.items():
        write_model(repository, name, model, config)
    return repository
