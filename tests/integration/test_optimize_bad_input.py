"""Bad input to `ferry optimize`: a clear message, exit code 2, and the repository untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optimizers.tensorrt_build import gpu_info
from tests.unit.optimizers.models import Example, tree_snapshot, write_example


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return write_example(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return write_example(tmp_path_factory.mktemp("regressor"), "reg", regression=True)


def npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def run(example: Example, *args: str, eval_data: str | None = None) -> tuple[int, str]:
    command = [
        sys.executable,
        "-m",
        "ferry",
        "optimize",
        example.name,
        "--model-repository",
        str(example.repository),
        "--eval-data",
        eval_data or str(example.eval_data),
        *args,
    ]
    before = tree_snapshot(example.repository)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert tree_snapshot(example.repository) == before, "a failed run changed the repository"
    return done.returncode, " ".join((done.stderr + done.stdout).split())


X = np.zeros((40, 32), np.float32)
Y = np.zeros(40, np.int64)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input": X}, "has no 'labels' array"),
        ({"features": X, "labels": Y}, "lacks input(s) ['input']"),
        ({"input": X.astype(np.float64), "labels": Y}, "is float64; the model takes FP32"),
        ({"input": X[:, :10], "labels": Y}, "has shape (40, 10); the model takes (N, 32)"),
    ],
)
def test_bad_eval_data(
    classifier: Example, tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    code, output = run(classifier, eval_data=npz(tmp_path / "bad.npz", **arrays))
    assert code == 2 and message in output


def test_auc_on_a_regressor(regressor: Example) -> None:
    code, output = run(regressor, "--metric", "auc")
    assert code == 2 and "metric 'auc' needs a classifier" in output


def test_calibration_data_too_small(classifier: Example, tmp_path: Path) -> None:
    small = npz(tmp_path / "small.npz", input=X[:5])
    code, output = run(classifier, "--calibration-data", small)
    assert code == 2 and "calibration data has 5 samples; at least 32" in output


def test_model_version_that_does_not_exist(classifier: Example) -> None:
    code, output = run(classifier, "--model-version", "9")
    assert code == 2 and "has no version 9 (versions: 1)" in output


@pytest.mark.skipif(gpu_info() is not None, reason="this machine has a GPU")
def test_tensorrt_target_without_gpu(classifier: Example) -> None:
    code, output = run(classifier, "--target", "tensorrt")
    assert code == 2 and "--target tensorrt needs an NVIDIA GPU" in output
    assert "TensorRT Python package" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--variants", "int8-magic"), "unknown variant 'int8-magic'"),
        (("--variants", "int8-static"), "variant 'int8-static' needs --calibration-data"),
        (("--variants", "tensorrt-fp16"), "does not run on target 'cpu'"),
        (("--objective", "cost"), "unknown objective"),
        (("--max-drop", "-1"), "--max-drop must be >= 0"),
    ],
)
def test_bad_options(classifier: Example, args: tuple[str, ...], message: str) -> None:
    code, output = run(classifier, *args)
    assert code == 2 and message in output


def test_missing_eval_file(classifier: Example, tmp_path: Path) -> None:
    code, output = run(classifier, eval_data=str(tmp_path / "nope.npz"))
    assert code == 2 and "does not exist" in output
