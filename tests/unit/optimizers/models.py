"""Small repositories and .npz files for optimize tests (onnx.helper models, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.support.onnx_models import mlp_model, run_reference, write_model

CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {outputs} ] }} ]
dynamic_batching {{ }}
"""


@dataclass(frozen=True)
class Example:
    """A repository with one FP32 model and its eval / calibration data."""

    repository: Path
    name: str
    eval_data: Path
    calibration_data: Path

    @property
    def model_dir(self) -> Path:
        return self.repository / self.name


def write_example(
    root: Path,
    name: str = "mlp",
    *,
    regression: bool = False,
    seed: int = 0,
    features: int = 32,
    samples: int = 256,
) -> Example:
    """An MLP classifier (5 classes) or regressor with labels from the FP32 model itself."""
    outputs = 1 if regression else 5
    repository = root / "repo"
    model_dir = write_model(
        repository,
        name,
        mlp_model(features, 64, outputs, seed=seed),
        CONFIG.format(name=name, features=features, outputs=outputs),
    )
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((samples * 2, features)).astype(np.float32)
    y = run_reference(model_dir / "1" / "model.onnx", {"input": x})["output"]
    labels = (
        (y[:, 0] + rng.normal(0, 0.1, len(y))).astype(np.float32)
        if regression
        else y.argmax(axis=1).astype(np.int64)
    )
    eval_path, calibration_path = root / "eval.npz", root / "calibration.npz"
    np.savez(eval_path, input=x[:samples], labels=labels[:samples])
    np.savez(calibration_path, input=x[samples:])
    return Example(repository, name, eval_path, calibration_path)


def perturbed(model_path: Path, out_path: Path, scale: float = 3.0, seed: int = 7) -> Path:
    """A copy of an ONNX model whose weights are drowned in noise (its accuracy collapses)."""
    model = onnx.load(str(model_path))
    rng = np.random.default_rng(seed)
    for index, initializer in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(initializer)
        noisy = array + rng.standard_normal(array.shape).astype(array.dtype) * scale
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, str(out_path))
    return out_path


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to prove a failed run changed nothing)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


ENCODER_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "tokens" data_type: TYPE_INT64 dims: [ 64 ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
"""


def encoder_onnx(path: Path, layers: int = 2, d_model: int = 64) -> Path:
    """A small `examples.encoder` model (nn.TransformerEncoder) exported the way `ferry export`
    does it (torch.onnx dynamo, opset 20, dynamic batch): the graph the attention fusion targets."""
    import torch

    from examples.encoder import EncoderClassifier
    from exporters.onnx_export import quiet_exporter

    torch.manual_seed(0)
    model = EncoderClassifier(layers=layers, d_model=d_model).eval()
    tokens = torch.randint(0, 32, (2, 64))
    with quiet_exporter():
        program = torch.onnx.export(
            model,
            (tokens,),
            None,
            dynamo=True,
            input_names=["tokens"],
            output_names=["output"],
            opset_version=20,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=False)
    return path


def write_encoder_example(root: Path, name: str = "encoder", samples: int = 64) -> Example:
    """A repository holding a small encoder, labels from the FP32 model itself."""
    from examples.encoder import make_dataset

    repository = root / "repo"
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(ENCODER_CONFIG.format(name=name))
    onnx_path = encoder_onnx(repository / name / "1" / "model.onnx")
    tokens, _ = make_dataset(rows=samples * 2, seed=3)
    labels = run_reference(onnx_path, {"tokens": tokens})["output"].argmax(axis=1)
    eval_path, calibration_path = root / "eval.npz", root / "calibration.npz"
    np.savez(eval_path, tokens=tokens[:samples], labels=labels[:samples])
    np.savez(calibration_path, tokens=tokens[samples:])
    return Example(repository, name, eval_path, calibration_path)
