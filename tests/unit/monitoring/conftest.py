"""A tiny classifier with a drift reference, for the drift tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from monitoring.reference import write_reference
from tests.support.onnx_models import mlp_model, write_model


@dataclass
class Classifier:
    version_dir: Path
    model_path: Path

    def run(self, x: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        session = getattr(self, "_session", None)
        if session is None:
            session = ort.InferenceSession(str(self.model_path), providers=["CPUExecutionProvider"])
            self._session = session
        return np.asarray(session.run(None, {"input": x.astype(np.float32)})[0])


def draw(rng: np.random.Generator, rows: int, shift: float = 0.0) -> np.ndarray:
    """Inputs of the reference distribution (shift moves every feature)."""
    return (rng.standard_normal((rows, 16)) + shift).astype(np.float32)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    repo = tmp_path_factory.mktemp("repo")
    model_dir = write_model(repo, "clf", mlp_model(in_features=16, out_features=4))
    version_dir = model_dir / "1"
    write_reference(
        version_dir,
        version_dir / "model.onnx",
        {"input": draw(np.random.default_rng(0), 3000)},
        window=200,
        alpha=0.05,
        simulations=100,
    )
    return Classifier(version_dir, version_dir / "model.onnx")
