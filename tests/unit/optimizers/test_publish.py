"""Publishing: atomic next version, FP32 kept, config rules for ONNX / TensorRT / TRT-EP winners."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizers.publish import publish, served_versions
from optimizers.source import locate_source
from optimizers.variants import Artifact
from server.repository_format import ModelConfig, parse_config, read_config
from tests.unit.optimizers.models import Example, write_example


@pytest.fixture
def example(tmp_path: Path) -> Example:
    return write_example(tmp_path)


def artifact(tmp_path: Path, name: str, **kwargs: object) -> Artifact:
    path = tmp_path / name
    path.write_bytes(b"candidate-bytes")
    return Artifact(variant="x", precision="int8", path=path, **kwargs)  # type: ignore[arg-type]


def test_onnx_winner_becomes_next_version(example: Example, tmp_path: Path) -> None:
    before = (example.model_dir / "config.pbtxt").read_text()
    source = locate_source(example.repository, example.name, None)
    report: dict[str, object] = {"candidates": []}
    version = publish(source, artifact(tmp_path, "model.onnx"), report)
    assert version == 2
    assert (example.model_dir / "2" / "model.onnx").read_bytes() == b"candidate-bytes"
    assert (example.model_dir / "1" / "model.onnx").is_file()
    written = json.loads((example.model_dir / "2" / "optimize_report.json").read_text())
    assert written["published"] == {"variant": "x", "version": 2}
    assert (example.model_dir / "config.pbtxt").read_text() == before
    assert [p.name for p in example.model_dir.iterdir() if p.name.startswith(".")] == []
    assert publish(source, artifact(tmp_path, "model.onnx"), report) == 3


def test_tensorrt_winner_switches_platform_and_pins_version(
    example: Example, tmp_path: Path
) -> None:
    source = locate_source(example.repository, example.name, None)
    report: dict[str, object] = {}
    plan = artifact(tmp_path, "model.plan", platform="tensorrt_plan")
    assert publish(source, plan, report) == 2
    config = read_config(example.model_dir)
    assert config is not None
    assert (config.platform, config.default_model_filename) == ("tensorrt_plan", "model.plan")
    assert list(config.version_policy.specific.versions) == [2]
    assert config.max_batch_size == 8 and [i.name for i in config.input] == ["input"]
    assert (example.model_dir / "2" / "model.plan").is_file()
    assert parse_config(str(report["previous_config"])).platform == "onnxruntime_onnx"


def test_tensorrt_ep_winner_adds_the_accelerator(example: Example, tmp_path: Path) -> None:
    source = locate_source(example.repository, example.name, None)
    onnx = artifact(tmp_path, "model.onnx", accelerator={"precision_mode": "FP16"})
    publish(source, onnx, {})
    config = read_config(example.model_dir)
    assert config is not None and config.platform == "onnxruntime_onnx"
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {"precision_mode": "FP16"}


def test_served_versions_follow_the_policy() -> None:
    config = ModelConfig()
    assert served_versions(config, [1, 2, 3]) == [3]
    config.version_policy.latest.num_versions = 2
    assert served_versions(config, [1, 2, 3]) == [2, 3]
    config.version_policy.all.SetInParent()
    assert served_versions(config, [1, 2, 3]) == [1, 2, 3]
    config.version_policy.specific.versions.append(1)
    assert served_versions(config, [1, 2, 3]) == [1]
