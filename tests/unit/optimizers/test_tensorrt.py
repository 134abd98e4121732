"""TensorRT: clear message without a GPU, cache keys; real build and serve under `gpu`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optimizers.source import OptimizeError, locate_source
from optimizers.tensorrt_build import (
    GpuInfo,
    build_engine,
    engine_cache_key,
    gpu_info,
    profile_shapes,
    require_target,
)
from tests.unit.optimizers.models import write_example


@pytest.mark.skipif(gpu_info() is not None, reason="this machine has a GPU")
def test_tensorrt_target_without_gpu_names_what_is_missing() -> None:
    with pytest.raises(OptimizeError) as error:
        require_target("tensorrt")
    message = str(error.value)
    assert message.startswith("--target tensorrt needs")
    assert "NVIDIA GPU" in message and "onnxruntime-gpu" in message


def test_profile_spans_batch_one_to_max() -> None:
    assert profile_shapes({"x": (64, 16)}, 32) == {"x": [(1, 64, 16), (16, 64, 16), (32, 64, 16)]}


def test_engine_cache_key_changes_with_what_invalidates_an_engine(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    h100 = GpuInfo("NVIDIA H100", "9.0")
    shapes = profile_shapes({"x": (4,)}, 8)
    key = engine_cache_key(onnx_path, "fp16", shapes, "11.4.0", h100)
    assert key == engine_cache_key(onnx_path, "fp16", shapes, "11.4.0", h100)
    others = {
        engine_cache_key(onnx_path, "int8", shapes, "11.4.0", h100),
        engine_cache_key(onnx_path, "fp16", profile_shapes({"x": (4,)}, 16), "11.4.0", h100),
        engine_cache_key(onnx_path, "fp16", shapes, "10.9.0", h100),
        engine_cache_key(onnx_path, "fp16", shapes, "11.4.0", GpuInfo("A100", "8.0")),
    }
    assert key not in others and len(others) == 4


@pytest.mark.gpu
def test_fp16_engine_builds_caches_and_serves(tmp_path: Path) -> None:
    from optimizers.onnx_variants import build_fp16
    from server.runtimes.tensorrt import TensorRTRuntime
    from tests.support.onnx_models import run_reference

    example = write_example(tmp_path)
    source = locate_source(example.repository, example.name, None)
    fp16 = build_fp16(source.onnx_path, tmp_path / "fp16.onnx")
    assert fp16["keep_io_types"]
    version = tmp_path / "engine"
    version.mkdir()
    first = build_engine(
        tmp_path / "fp16.onnx",
        version / "model.plan",
        "fp16",
        {"input": (32,)},
        8,
        tmp_path / "cache",
    )
    again = build_engine(
        tmp_path / "fp16.onnx",
        tmp_path / "again.plan",
        "fp16",
        {"input": (32,)},
        8,
        tmp_path / "cache",
    )
    assert (first["engine_cache"], again["engine_cache"]) == ("miss", "hit")
    config = source.config
    config.platform, config.default_model_filename = "tensorrt_plan", "model.plan"
    runtime = TensorRTRuntime(config, version, 0)
    x = np.load(example.eval_data)["input"][:8]
    try:
        got = runtime.infer({"input": x}, ["output"])["output"]
        one = runtime.infer({"input": x[:1]}, ["output"])["output"]
    finally:
        runtime.close()
    want = run_reference(source.onnx_path, {"input": x})["output"]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert one.shape == (1, 5)
