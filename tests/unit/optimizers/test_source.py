"""Bad input is rejected before any work: eval/calibration data and model versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optimizers.source import OptimizeError, load_dataset, locate_source
from tests.unit.optimizers.models import Example, write_example


@pytest.fixture
def example(tmp_path: Path) -> Example:
    return write_example(tmp_path)


def test_locates_newest_fp32_version(example: Example) -> None:
    source = locate_source(example.repository, example.name, None)
    assert source.version == 1 and source.max_batch_size == 8
    (example.model_dir / "2").mkdir()
    (example.model_dir / "2" / "model.onnx").write_bytes(b"x")
    (example.model_dir / "2" / "optimize_report.json").write_text("{}")
    assert locate_source(example.repository, example.name, None).version == 1


def test_missing_version_is_named(example: Example) -> None:
    with pytest.raises(OptimizeError, match=r"no version 7 \(versions: 1\)"):
        locate_source(example.repository, example.name, 7)


def test_unknown_model(example: Example) -> None:
    with pytest.raises(OptimizeError, match="no version folders"):
        locate_source(example.repository, "nope", None)


def test_loads_eval_data(example: Example) -> None:
    source = locate_source(example.repository, example.name, None)
    data = load_dataset(example.eval_data, source, role="eval", need_labels=True)
    assert data.count == 256 and data.labels is not None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": np.zeros((4, 32), np.float32)}, "no 'labels' array"),
        (
            {"x": np.zeros((4, 32), np.float32), "labels": np.zeros(4)},
            r"lacks input\(s\) \['input'\]",
        ),
        ({"input": np.zeros((4, 32)), "labels": np.zeros(4)}, "is float64; the model takes FP32"),
        (
            {"input": np.zeros((4, 31), np.float32), "labels": np.zeros(4)},
            r"the model takes \(N, 32\)",
        ),
        ({"input": np.zeros((4, 32, 1), np.float32), "labels": np.zeros(4)}, "has shape"),
        ({"input": np.zeros((4, 32), np.float32), "labels": np.zeros(5)}, "disagree"),
    ],
)
def test_bad_eval_data(
    example: Example, tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    source = locate_source(example.repository, example.name, None)
    with pytest.raises(OptimizeError, match=message):
        load_dataset(path, source, role="eval", need_labels=True)


def test_calibration_too_small(example: Example, tmp_path: Path) -> None:
    path = tmp_path / "small.npz"
    np.savez(path, input=np.zeros((3, 32), np.float32))
    source = locate_source(example.repository, example.name, None)
    with pytest.raises(OptimizeError, match="3 samples; at least 32"):
        load_dataset(path, source, role="calibration", need_labels=False, min_samples=32)


def test_unreadable_file(example: Example, tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_text("not an npz")
    source = locate_source(example.repository, example.name, None)
    with pytest.raises(OptimizeError, match="not a readable"):
        load_dataset(tmp_path / "junk.npz", source, role="eval", need_labels=True)
