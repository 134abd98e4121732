"""`ferry check` on ensembles and Python models: an ensemble passes when its composing models are
there and its steps fit them, with the reason `ferry serve` gives when they do not; a Python
model is checked on its config (ferry reads no model file of it)."""

from __future__ import annotations

from pathlib import Path

from server.check import CheckStatus, check_repository
from tests.support.python_models import (
    write_classifier_step,
    write_classify_pipeline,
    write_ensemble,
    write_repeat,
)


def rows(root: Path) -> dict[str, tuple[CheckStatus, str]]:
    return {row.model: (row.status, row.detail) for row in check_repository(root)}


def test_a_pipeline_of_python_and_onnx_steps_passes(tmp_path: Path) -> None:
    write_classifier_step(tmp_path, "mlp")
    write_classify_pipeline(tmp_path, "classify")
    verdicts = rows(tmp_path)
    assert verdicts["classify"] == (CheckStatus.OK, "ensemble: scale -> mlp -> label")
    assert verdicts["scale"][0] == CheckStatus.OK
    assert "config only (python has no model file ferry reads)" in verdicts["scale"][1]


def test_an_ensemble_without_its_composing_model_fails_with_the_reason(tmp_path: Path) -> None:
    write_classify_pipeline(tmp_path, "classify")  # no mlp
    assert rows(tmp_path)["classify"] == (
        CheckStatus.FAILED,
        "ensemble classify contains models that are not available or ambiguous: mlp",
    )


def test_steps_that_do_not_fit_their_models_fail_with_the_reason(tmp_path: Path) -> None:
    write_classifier_step(tmp_path, "mlp")
    write_repeat(tmp_path)
    head = """max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [4] }]
"""
    write_ensemble(
        tmp_path,
        "wrong_input",
        head
        + """ensemble_scheduling { step [{ model_name: "mlp" model_version: -1
  input_map { key: "features" value: "X" } output_map { key: "output" value: "Y" } }] }""",
    )
    write_ensemble(
        tmp_path,
        "streaming",
        head
        + """ensemble_scheduling { step [{ model_name: "repeat" model_version: -1
  input_map { key: "N" value: "X" } output_map { key: "OUT" value: "Y" } }] }""",
    )
    verdicts = rows(tmp_path)
    assert verdicts["wrong_input"] == (
        CheckStatus.FAILED,
        "in ensemble wrong_input, ensemble tensor X is mapping to non-existing input features "
        "in model mlp",
    )
    assert verdicts["streaming"] == (
        CheckStatus.FAILED,
        "in ensemble streaming, model repeat is decoupled: ferry's ensemble steps take one "
        "response per request",
    )
