"""config.pbtxt parsing, auto-complete from ONNX, and Triton's config JSON."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from server.model_config import prepare, select_versions
from server.repository_format import (
    ModelConfigError,
    autocomplete_from_onnx,
    config_from_json,
    config_to_json,
    is_valid_model_name,
    next_version,
    parse_config,
    read_config,
    write_config,
)
from tests.support.onnx_models import mlp_model, two_io_model, write_model


def test_autocomplete_batching_model(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(two_io_model(), str(path))
    config = autocomplete_from_onnx(None, path, "two")
    assert config.name == "two" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("a", [3]), ("b", [3])]
    assert config_to_json(config)["input"][1]["data_type"] == "TYPE_INT64"


def test_autocomplete_fixed_batch_does_not_batch(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(batch_dim=2), str(path))
    config = autocomplete_from_onnx(None, path, "fixed")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 16]


def test_explicit_max_batch_size_needs_dynamic_first_dim(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(mlp_model(batch_dim=2), str(path))
    with pytest.raises(ModelConfigError, match="dynamic first"):
        autocomplete_from_onnx(parse_config("max_batch_size: 8"), path, "fixed")


def test_config_json_has_numbers_and_triton_defaults() -> None:
    config = parse_config("""
        name: "m" platform: "onnxruntime_onnx" max_batch_size: 8
        input [{ name: "x" data_type: TYPE_FP32 dims: [3, -1] }]
        output [{ name: "y" data_type: TYPE_STRING dims: [1] }]
        dynamic_batching { max_queue_delay_microseconds: 100
                           default_queue_policy { default_timeout_microseconds: 7 } }
        version_policy { specific { versions: [1, 3] } }
        instance_group [{ kind: KIND_CPU count: 2 }]""")
    data = config_to_json(config)
    assert data["input"][0]["dims"] == [3, -1]
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert data["dynamic_batching"]["preferred_batch_size"] == [8]
    assert data["dynamic_batching"]["default_queue_policy"]["default_timeout_microseconds"] == 7
    assert data["version_policy"]["specific"]["versions"] == [1, 3]
    assert data["instance_group"][0]["kind"] == "KIND_CPU"
    assert data["output"][0]["data_type"] == "TYPE_STRING"
    assert config_from_json(data).max_batch_size == 8


def test_write_read_round_trip_and_versions(tmp_path: Path) -> None:
    config = parse_config('name: "m" max_batch_size: 2')
    write_config(tmp_path / "m", config)
    assert read_config(tmp_path / "m") == config
    assert next_version(tmp_path / "m") == 1
    (tmp_path / "m" / "3").mkdir()
    (tmp_path / "m" / "notes").mkdir()
    assert next_version(tmp_path / "m") == 4


def test_version_policies() -> None:
    available = [1, 2, 5]
    assert select_versions(parse_config(""), available) == [5]
    assert select_versions(
        parse_config("version_policy { latest { num_versions: 2 } }"), available
    ) == [2, 5]
    assert select_versions(parse_config("version_policy { all {} }"), available) == available
    assert select_versions(
        parse_config("version_policy { specific { versions: [1, 4] } }"), available
    ) == [1]


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ('name: "other"', "does not match"),
        (
            "max_batch_size: 4\ndynamic_batching { preferred_batch_size: [8] }",
            "preferred_batch_size",
        ),
        ("max_batch_size: 4\ndynamic_batching { priority_levels: 2 }", "default_priority_level"),
        (
            'max_batch_size: 4\ninput [{ name: "input" data_type: TYPE_FP32 dims: [0] }]',
            "invalid dims",
        ),
        ("nonsense {", "does not parse"),
    ],
)
def test_invalid_configs_are_explained(tmp_path: Path, config_text: str, message: str) -> None:
    write_model(tmp_path, "m", mlp_model(), config_text)
    with pytest.raises(ModelConfigError, match=message):
        prepare("m", tmp_path / "m", None, 4)


def test_model_names() -> None:
    assert is_valid_model_name("resnet50_v1.5-int8")
    for bad in ("..", ".", "a/b", "../x", ".hidden", "", "a b"):
        assert not is_valid_model_name(bad)
