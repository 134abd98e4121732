"""Building reference.npz: contents, bad input (clear error, nothing written), the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ferry.cli import app
from monitoring.reference import load_reference, signal_tensors, write_reference
from monitoring.tensors import ReferenceDataError
from tests.support.onnx_models import mlp_model, two_io_model, write_model
from tests.unit.monitoring.conftest import Classifier


def test_reference_contents(classifier: Classifier) -> None:
    ref = load_reference(classifier.version_dir / "reference.npz")
    assert ref.spec.names[:4] == ("output.p0", "output.p1", "output.p2", "output.p3")
    assert ref.spec.names[4:] == tuple(f"input.x{i}" for i in range(16))  # small tabular input
    assert set(ref.spec.scopes) == {"outputs", "inputs"}
    assert ref.rows == 3000 and ref.window == 200 and ref.alpha == 0.05
    assert 0.05 / 20 <= ref.alpha_signal <= 0.05
    assert ref.spec.class_output == "output"
    probs = ref.samples[:, :4]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # logits went through softmax


def test_wide_input_gets_moments_and_projections(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "wide", mlp_model(in_features=64, out_features=30))
    data = {"input": np.random.default_rng(1).standard_normal((100, 64)).astype(np.float32)}
    ref = load_reference(
        write_reference(
            model_dir / "1", model_dir / "1" / "model.onnx", data, window=50, simulations=20
        )
    )
    assert ref.spec.names == (
        "output.max_prob",
        "output.entropy",
        "output.margin",
        "input.mean",
        "input.std",
        *(f"input.rp{i}" for i in range(8)),
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inputs": np.zeros((50, 16), np.float32)}, "model expects ['input']"),
        ({"input": np.zeros((50, 15), np.float32)}, "expected rows of shape (16)"),
        ({"input": np.zeros((50, 4, 4), np.float32)}, "expected rows of shape (16)"),
        ({"input": np.zeros((50, 16), np.int64)}, "expected float32 data, got int64"),
        ({"input": np.zeros((5, 16), np.float32)}, "at least 20 rows"),
        ({"input": np.full((50, 16), np.nan, np.float32)}, "finite signals"),
    ],
)
def test_bad_reference_data_is_refused_and_nothing_written(
    tmp_path: Path,
    data: dict[str, np.ndarray],
    message: str,
) -> None:
    model_dir = write_model(tmp_path, "m", mlp_model())
    with pytest.raises(
        ReferenceDataError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        write_reference(model_dir / "1", model_dir / "1" / "model.onnx", data)
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx"]


def test_two_inputs_with_different_row_counts(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "two", two_io_model())
    data = {"a": np.zeros((30, 3), np.float32), "b": np.zeros((31, 3), np.int64)}
    with pytest.raises(ReferenceDataError, match="different row counts"):
        write_reference(model_dir / "1", model_dir / "1" / "model.onnx", data)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing-key"])
def test_corrupt_reference_is_reported(classifier: Classifier, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "reference.npz"
    shutil.copy(classifier.version_dir / "reference.npz", path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"not an npz at all")
    else:
        with np.load(path) as npz:
            kept = {k: npz[k] for k in npz.files if k != "thresholds"}
        np.savez(path, **kept)
    with pytest.raises(ReferenceDataError):
        load_reference(path)


def test_cli_builds_reference(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp_model(), version=1)
    write_model(tmp_path, "m", mlp_model(seed=1), version=3)
    data = tmp_path / "ref.npz"
    np.savez(
        data,
        input=np.random.default_rng(2).standard_normal((80, 16)).astype(np.float32),
        labels=np.zeros(80),
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "drift",
            "reference",
            "m",
            "--model-repository",
            str(tmp_path),
            "--data",
            str(data),
            "--window",
            "40",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "80 rows, 20 signals, window 40" in result.output
    assert (tmp_path / "m" / "3" / "reference.npz").is_file()  # highest version by default
    assert not (tmp_path / "m" / "1" / "reference.npz").exists()


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp_model())
    data = tmp_path / "ref.npz"
    np.savez(data, x=np.zeros((80, 16), np.float32))
    runner = CliRunner()
    bad_version = runner.invoke(
        app,
        [
            "drift",
            "reference",
            "m",
            "--model-repository",
            str(tmp_path),
            "--data",
            str(data),
            "--version",
            "7",
        ],
    )
    assert bad_version.exit_code == 2 and "has no version 7" in bad_version.output
    bad_names = runner.invoke(
        app, ["drift", "reference", "m", "--model-repository", str(tmp_path), "--data", str(data)]
    )
    assert bad_names.exit_code == 2
    assert "model expects ['input']" in bad_names.output
    assert not (tmp_path / "m" / "1" / "reference.npz").exists()


def test_the_signals_tensors_are_read_from_the_spec_alone(
    classifier: Classifier, tmp_path: Path
) -> None:
    reference = load_reference(classifier.version_dir / "reference.npz")
    tensors = signal_tensors(classifier.version_dir / "reference.npz")
    assert tensors == reference.spec.tensors == (("outputs", "output"), ("inputs", "input"))
    assert signal_tensors(tmp_path / "missing.npz") is None
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    assert signal_tensors(tmp_path / "garbage.npz") is None
