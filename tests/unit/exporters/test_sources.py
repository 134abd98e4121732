"""SOURCE classification and the static checks on an exported graph (no torch export here)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from exporters.errors import ExportError
from exporters.onnx_export import check_dynamic_dims, model_opset
from exporters.sources import classify_source
from exporters.specs import IOSpec
from tests.support.onnx_models import mlp_model


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("examples.digits:DigitsCNN", "module"),
        ("pkg.mod:factory.attr", "module"),
        ("models/net.py:Net", "file"),
        ("net.py:make", "file"),
        ("model.pt2", "exported_program"),
        ("dir/model.pt", "serialized"),
        ("model.ts", "serialized"),
    ],
)
def test_classify_source(source: str, kind: str) -> None:
    assert classify_source(source) == kind


def test_classify_source_rejects_nonsense() -> None:
    with pytest.raises(ExportError, match="none of"):
        classify_source("just-a-word")


IN = IOSpec("input", "FP32", (16,))
OUT = IOSpec("output", "FP32", (4,))


def test_check_dynamic_dims_accepts_a_named_batch(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(batch_dim="batch"), str(path))
    check_dynamic_dims(path, [IN], [OUT])
    assert model_opset(path) == 17


def test_check_dynamic_dims_rejects_a_static_batch(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(batch_dim=2), str(path))
    with pytest.raises(ExportError, match="static first dim"):
        check_dynamic_dims(path, [IN], [OUT])


def test_check_dynamic_dims_checks_names(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(), str(path))
    with pytest.raises(ExportError, match="inputs are"):
        check_dynamic_dims(path, [IOSpec("x", "FP32", (16,))], [OUT])


def test_check_dynamic_dims_rejects_external_data(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(), str(path))
    (tmp_path / "model.onnx.data").write_bytes(b"0")
    with pytest.raises(ExportError, match="external data"):
        check_dynamic_dims(path, [IN], [OUT])


def test_check_dynamic_dims_rejects_a_variable_dim_the_export_fixed(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(), str(path))
    with pytest.raises(ExportError, match="fixed the variable dim 'features' of 'input'"):
        check_dynamic_dims(path, [IOSpec("input", "FP32", ("features",))], [OUT])
