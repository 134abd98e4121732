"""Load-time validation of TensorRT plans: the engine's tensors, datatypes, shapes, max batch and
profile bounds against config.pbtxt, in the runtime's reader and through `ferry check`. Marked
`gpu`: skipped cleanly on machines without an NVIDIA GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from server.model_config import prepare
from server.model_validation import validate_model_file
from server.repository_format import ModelConfigError
from server.runtimes.tensorrt import read_signature
from tests.support.onnx_models import mlp_model

pytestmark = pytest.mark.gpu

PLAN_CONFIG = """
platform: "tensorrt_plan"
max_batch_size: {max_batch_size}
input [{{ name: "input" data_type: {datatype} dims: [16] }}]
output [{{ name: "output" data_type: TYPE_FP32 dims: [4] }}]
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FP32 engine of the test MLP with one profile: batch 1 to 8."""
    from optimizers.tensorrt_build import build_engine

    folder = tmp_path_factory.mktemp("plan")
    onnx.save(mlp_model(), str(folder / "model.onnx"))
    build_engine(folder / "model.onnx", folder / "model.plan", "fp32", {"input": (16,)}, 8, folder)
    return folder / "model.plan"


def _model(repo: Path, name: str, plan: Path, max_batch_size: int, datatype: str) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.plan").write_bytes(plan.read_bytes())
    (model_dir / "config.pbtxt").write_text(
        PLAN_CONFIG.format(max_batch_size=max_batch_size, datatype=datatype)
    )
    return model_dir


def test_engine_signature_and_mismatches(tmp_path: Path, plan: Path) -> None:
    good = _model(tmp_path, "good", plan, 8, "TYPE_FP32")
    config = prepare("good", good, None, 4).config
    signature = read_signature(config, good / "1")
    assert signature.max_batch_size == 8 and signature.inputs[0].dims == (-1, 16)
    assert validate_model_file(config, good / "1") == signature

    too_big = _model(tmp_path, "too_big", plan, 16, "TYPE_FP32")
    with pytest.raises(
        ModelConfigError, match=r"max-batch 16 but model\.plan only supports max-batch 8"
    ):
        validate_model_file(prepare("too_big", too_big, None, 4).config, too_big / "1")
    fp16 = _model(tmp_path, "fp16", plan, 8, "TYPE_FP16")
    with pytest.raises(
        ModelConfigError, match=r"TYPE_FP16 for input .input., model\.plan provides TYPE_FP32"
    ):
        validate_model_file(prepare("fp16", fp16, None, 4).config, fp16 / "1")

    result = subprocess.run(
        [sys.executable, "-m", "ferry", "check", "--model-repository", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert '"status": "OK"' in result.stdout and result.stdout.count('"FAILED"') == 2
