"""Load-time validation of config.pbtxt against the model file, and `ferry check`'s rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.check import CheckStatus, check_repository, model_names, repository_problem
from server.model_config import prepare
from server.model_validation import (
    ModelSignature,
    ModelTensor,
    signature_problems,
    validate_model_file,
)
from server.repository_format import ModelConfigError, parse_config
from server.runtimes.onnxruntime import OnnxRuntime, read_signature
from tests.support.config_mismatch import (
    MATCHING_CONFIGS,
    MISMATCH_CASES,
    write_mismatch_repository,
)
from tests.support.onnx_models import identity_model, write_model


@pytest.mark.parametrize("case", sorted(MISMATCH_CASES))
def test_each_mismatch_names_the_tensor_and_both_views(tmp_path: Path, case: str) -> None:
    spec = MISMATCH_CASES[case]
    model_dir = write_model(tmp_path, case, spec.model, spec.config)
    prepared = prepare(case, model_dir, None, 4)
    with pytest.raises(ModelConfigError) as raised:
        validate_model_file(prepared.config, model_dir / "1")
    for fragment in spec.expected:
        assert fragment in str(raised.value)


@pytest.mark.parametrize("case", sorted(MATCHING_CONFIGS))
def test_matching_configs_pass(tmp_path: Path, case: str) -> None:
    model, config = MATCHING_CONFIGS[case]
    model_dir = write_model(tmp_path, case, model, config)
    prepared = prepare(case, model_dir, None, 4)
    signature = validate_model_file(prepared.config, model_dir / "1")
    assert signature is not None and signature.source == "model.onnx"


def _config(text: str) -> object:
    config = parse_config('name: "m"\n' + text)
    return config


def test_fixed_config_dim_against_dynamic_model_dim_is_fine() -> None:
    signature = ModelSignature(
        "model.onnx", [ModelTensor("x", "FP32", (-1, -1, 8))], [ModelTensor("y", "FP32", (-1, 3))]
    )
    config = _config("""max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP32 dims: [12, 8] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]""")
    assert signature_problems(config, signature) == []


def test_every_problem_is_reported_not_only_the_first() -> None:
    signature = ModelSignature(
        "model.onnx", [ModelTensor("x", "FP32", (-1, 8))], [ModelTensor("y", "FP32", (-1, 3))]
    )
    config = _config("""max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP16 dims: [8] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]""")
    problems = signature_problems(config, signature)
    assert len(problems) == 2
    assert "TYPE_FP16 for input 'x'" in problems[0] and "output 'y'" in problems[1]


def test_scalar_model_tensor_needs_ones_and_no_batching() -> None:
    signature = ModelSignature(
        "model.onnx", [ModelTensor("x", "FP32", ())], [ModelTensor("y", "FP32", ())]
    )
    ok = _config("""input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]""")
    assert signature_problems(ok, signature) == []
    bad = _config("""input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]""")
    assert "scalar tensor" in signature_problems(bad, signature)[0]


_SEQUENCE_CONFIG = """max_batch_size: 4
    input [{ name: "x" data_type: TYPE_FP32 dims: [5] }]
    output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
    sequence_batching {
      direct {}
      control_input [{ name: "START" control [{ kind: CONTROL_SEQUENCE_START
                                                int32_false_true: [0, 1] }] }]
      state [{ input_name: "h" output_name: "h_out" data_type: TYPE_FP32 dims: [%s]
               initial_state { name: "z" data_type: TYPE_FP32 dims: [%s] zero_data: true } }]
    }"""


def test_sequence_control_and_state_tensors_count_as_listed() -> None:
    """Triton's backends count the sequence batcher's control and state tensors among the
    config's inputs and outputs, and check them against the model like listed ones."""
    signature = ModelSignature(
        "model.onnx",
        [
            ModelTensor("x", "FP32", (-1, 5)),
            ModelTensor("START", "INT32", (-1, 1)),
            ModelTensor("h", "FP32", (-1, 2, 4)),
        ],
        [ModelTensor("y", "FP32", (-1, 3)), ModelTensor("h_out", "FP32", (-1, 2, 4))],
    )
    assert signature_problems(_config(_SEQUENCE_CONFIG % ("2, 4", "2, 4")), signature) == []
    problems = signature_problems(_config(_SEQUENCE_CONFIG % ("2, 5", "2, 5")), signature)
    assert any("input 'h'" in p and "dim 2 is 5" in p for p in problems), problems
    assert any("output 'h_out'" in p for p in problems), problems
    stateless = ModelSignature(
        "model.onnx", [ModelTensor("x", "FP32", (-1, 5))], [ModelTensor("y", "FP32", (-1, 3))]
    )
    problems = signature_problems(_config(_SEQUENCE_CONFIG % ("2, 4", "2, 4")), stateless)
    assert any("unexpected inference input 'START'" in p for p in problems), problems
    assert any("unexpected inference output 'h_out'" in p for p in problems), problems


def test_engine_batch_and_profile_limits() -> None:
    """TensorRT's view: max batch from the profiles, fixed config dims inside [min, max]."""
    signature = ModelSignature(
        "model.plan",
        [ModelTensor("x", "FP32", (-1, -1), min_dims=(1, 4), max_dims=(16, 32))],
        [ModelTensor("y", "FP32", (-1, 3))],
        max_batch_size=16,
    )
    config = _config("""max_batch_size: 32
        input [{ name: "x" data_type: TYPE_FP32 dims: [64] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]""")
    problems = signature_problems(config, signature)
    assert any("dim 1 is 64" in p and "accept 4 to 32" in p for p in problems)
    assert any("max-batch 32 but model.plan only supports max-batch 16" in p for p in problems)


def test_onnx_initializer_inputs_are_optional_and_odd_inputs_readable(tmp_path: Path) -> None:
    """An initializer that is also a graph input may be left out of the config (Triton's
    overridable initializers); an input without shape information skips the shape check."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(np.ones(3, dtype=np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir = write_model(
        tmp_path,
        "m",
        model,
        """max_batch_size: 2
        input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]""",
    )
    prepared = prepare("m", model_dir, None, 4)
    signature = read_signature(prepared.config, model_dir / "1")
    assert signature.optional_inputs == {"bias"}
    assert signature.inputs[0].dims is None
    assert validate_model_file(prepared.config, model_dir / "1") == signature


def test_unreadable_model_file_is_a_config_error(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"not a protobuf at all")
    config = parse_config(
        'name: "m" platform: "onnxruntime_onnx" max_batch_size: 0 '
        'input [{ name: "x" data_type: TYPE_FP32 dims: [1] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]'
    )
    with pytest.raises(ModelConfigError, match=r"cannot read model\.onnx"):
        validate_model_file(config, model_dir / "1")


def test_check_repository_rows(tmp_path: Path) -> None:
    write_mismatch_repository(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.pbtxt").write_text("max_batch_size: {")
    (tmp_path / ".hidden").mkdir()
    rows = {row.model: row for row in check_repository(tmp_path)}
    assert set(rows) == set(MISMATCH_CASES) | set(MATCHING_CONFIGS) | {"broken"}
    for name in MISMATCH_CASES:
        assert rows[name].status == CheckStatus.FAILED and rows[name].version == "1"
    for name in MATCHING_CONFIGS:
        assert rows[name].status == CheckStatus.OK and "matches model.onnx" in rows[name].detail
    assert rows["broken"].status == CheckStatus.FAILED and rows["broken"].version == ""
    assert "does not parse" in rows["broken"].detail


def test_repository_problems(tmp_path: Path) -> None:
    assert repository_problem(tmp_path) is None
    assert "does not exist" in str(repository_problem(tmp_path / "nope"))
    (tmp_path / "file").write_text("")
    assert "is not a directory" in str(repository_problem(tmp_path / "file"))
    assert model_names(tmp_path) == []


def test_onnx_sequence_input_has_no_datatype(tmp_path: Path) -> None:
    seq = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["xs"], ["n"])],
        "g",
        [seq],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m" / "1"
    path.mkdir(parents=True)
    onnx.save(model, str(path / "model.onnx"))
    config = parse_config(
        'name: "m" platform: "onnxruntime_onnx" '
        'input [{ name: "xs" data_type: TYPE_FP32 dims: [-1] }] '
        'output [{ name: "n" data_type: TYPE_INT64 dims: [1] }]'
    )
    with pytest.raises(ModelConfigError, match=r"model\.onnx provides ONNX sequence_type"):
        validate_model_file(config, path)


def test_a_plan_this_machine_cannot_read_is_skipped_not_failed(tmp_path: Path) -> None:
    """Without TensorRT (a CPU CI runner checking a GPU repository) `ferry check` says SKIPPED."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the plan is read (tests/.../test_gpu_validation)")
    model_dir = tmp_path / "engine"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.plan").write_bytes(b"an engine for some GPU")
    (model_dir / "config.pbtxt").write_text(
        'platform: "tensorrt_plan" max_batch_size: 8 '
        'input [{ name: "x" data_type: TYPE_FP32 dims: [4] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]'
    )
    (row,) = check_repository(tmp_path)
    assert row.status == CheckStatus.SKIPPED and "tensorrt is not installed" in row.detail


def test_reshape_is_what_the_model_is_checked_against_and_what_it_gets(tmp_path: Path) -> None:
    """Triton's scalar-per-row idiom: the graph takes [batch], clients send [batch, 1]."""
    config_text = """max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP32 dims: [1] reshape: { shape: [] } }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [1] reshape: { shape: [] } }]"""
    model_dir = write_model(tmp_path, "scalar", identity_model([-1]), config_text)
    config = prepare("scalar", model_dir, None, 4).config
    assert validate_model_file(config, model_dir / "1") is not None
    runtime = OnnxRuntime(config, model_dir / "1", 0)
    x = np.array([[1.5], [2.5]], dtype=np.float32)
    assert runtime.infer({"x": x}, ["y"])["y"].tolist() == [[1.5], [2.5]]
    runtime.close()
    wrong = config_text.replace("reshape: { shape: [] } }]\n        output", "}]\n        output")
    model_dir = write_model(tmp_path, "no_reshape", identity_model([-1]), wrong)
    with pytest.raises(ModelConfigError, match=r"expects 1 dimensions \(shape \[-1\]\)"):
        validate_model_file(prepare("no_reshape", model_dir, None, 4).config, model_dir / "1")
