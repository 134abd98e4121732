"""Writing a repository entry: versions, config.pbtxt, atomic publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.errors import ExportError
from exporters.repository import (
    STAGING_PREFIX,
    build_config,
    check_model_name,
    publish,
    resolve_version,
)
from exporters.specs import IOSpec
from server.repository_format import parse_config, read_config, write_config

INPUTS = [IOSpec("x", "FP32", (3, 8, 8)), IOSpec("ids", "INT64", (4,))]
OUTPUTS = [IOSpec("probabilities", "FP32", (10,))]


def _version_files(tmp_path: Path, text: str = "onnx") -> Path:
    folder = tmp_path / "staged" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_text(text)
    (folder / "export_report.json").write_text("{}")
    return folder


def test_build_config_is_triton_shaped() -> None:
    config = parse_config(str(build_config("m", INPUTS, OUTPUTS, 32)))
    assert config.name == "m" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3, 8, 8]), ("ids", [4])]
    assert config.input[1].data_type == 9  # TYPE_INT64
    assert config.output[0].name == "probabilities" and config.output[0].data_type == 11


def test_build_config_keeps_serving_settings_of_an_existing_config() -> None:
    existing = parse_config(
        'name: "m" platform: "tensorrt_plan" max_batch_size: 8 '
        "instance_group { count: 2 kind: KIND_CPU } "
        "dynamic_batching { max_queue_delay_microseconds: 500 } "
        'input { name: "old" data_type: TYPE_FP32 dims: 1 }'
    )
    config = build_config("m", INPUTS, OUTPUTS, 16, existing)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [t.name for t in config.input] == ["x", "ids"]


def test_model_names() -> None:
    check_model_name("digits_v2.1-a")
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ExportError, match="not a valid model name"):
            check_model_name(bad)


def test_resolve_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    assert resolve_version(model_dir, None, False) == 1
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "3").mkdir()
    assert resolve_version(model_dir, None, False) == 4
    assert resolve_version(model_dir, 2, False) == 2
    with pytest.raises(ExportError, match="already exists: pass --overwrite"):
        resolve_version(model_dir, 3, False)
    assert resolve_version(model_dir, 3, True) == 3
    with pytest.raises(ExportError, match="start at 1"):
        resolve_version(model_dir, 0, False)


def test_publish_new_model_then_new_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = build_config("m", INPUTS, OUTPUTS, 8)
    target = publish(repo, "m", 1, _version_files(tmp_path), config, overwrite=False)
    assert target == repo / "m" / "1" and (target / "model.onnx").read_text() == "onnx"
    assert read_config(repo / "m") == config
    target2 = publish(repo, "m", 2, _version_files(tmp_path, "v2"), config, overwrite=False)
    assert (target2 / "model.onnx").read_text() == "v2"
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging folder left


def test_publish_refuses_or_overwrites_an_existing_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = build_config("m", INPUTS, OUTPUTS, 8)
    publish(repo, "m", 1, _version_files(tmp_path, "old"), config, overwrite=False)
    with pytest.raises(ExportError, match="already exists"):
        publish(repo, "m", 1, _version_files(tmp_path, "new"), config, overwrite=False)
    assert (repo / "m" / "1" / "model.onnx").read_text() == "old"
    publish(repo, "m", 1, _version_files(tmp_path, "new"), config, overwrite=True)
    assert (repo / "m" / "1" / "model.onnx").read_text() == "new"
    assert not [p for p in repo.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_publish_failure_leaves_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="writing"):
        publish(
            repo,
            "m",
            1,
            tmp_path / "does-not-exist",
            build_config("m", INPUTS, OUTPUTS, 8),
            overwrite=False,
        )
    assert list(repo.iterdir()) == []


def test_config_written_by_build_config_round_trips(tmp_path: Path) -> None:
    write_config(tmp_path, build_config("m", INPUTS, OUTPUTS, 4))
    assert read_config(tmp_path) is not None
