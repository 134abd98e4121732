"""TensorRT engines (`model.plan`) built with the TensorRT Python API, timing and engine caches.

TensorRT 10/11 networks are strongly typed: the precision comes from the ONNX (an FP16 graph or a
Q/DQ INT8 graph), not from builder flags (BuilderFlag.FP16/INT8 are gone in TensorRT 11).
Engines are not portable across GPUs or TensorRT versions, so they are cached under a key made of
the ONNX hash, TensorRT version, GPU compute capability, precision and profile shapes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizers.source import OptimizeError

WORKSPACE_BYTES = 4 << 30
BUILDER_OPTIMIZATION_LEVEL = 3


@dataclass(frozen=True)
class GpuInfo:
    """The GPU a build or benchmark runs on."""

    name: str
    compute_capability: str


def gpu_info(device: int = 0) -> GpuInfo | None:
    """Name and compute capability of a CUDA device, or None when there is none."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count <= device:
            return None
        err, props = cudart.cudaGetDeviceProperties(device)
    except Exception:  # no driver: the bindings raise instead of returning an error code
        return None
    if int(err) != 0:
        return None
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return GpuInfo(str(name).rstrip("\x00"), f"{props.major}.{props.minor}")


def tensorrt_version() -> str | None:
    """The installed TensorRT Python package's version, or None."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def require_target(target: str) -> None:
    """Fail with what is missing when a GPU target cannot run here."""
    missing = []
    if gpu_info() is None:
        missing.append("an NVIDIA GPU with a working CUDA driver (cuda-python found none)")
    if target == "tensorrt" and tensorrt_version() is None:
        missing.append("the TensorRT Python package (pip install 'ferry[gpu]' or tensorrt)")
    if target in ("cuda", "tensorrt"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append("onnxruntime-gpu (the CUDA execution provider is not available)")
    if missing:
        raise OptimizeError(f"--target {target} needs " + "; ".join(missing))


def engine_cache_key(
    onnx_path: Path,
    precision: str,
    shapes: dict[str, list[tuple[int, ...]]],
    trt_version: str,
    gpu: GpuInfo,
) -> str:
    """Engines are valid only for the same model, TensorRT, GPU, precision and shapes."""
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    material = json.dumps(
        {
            "onnx": digest,
            "trt": trt_version,
            "cc": gpu.compute_capability,
            "gpu": gpu.name,
            "precision": precision,
            "shapes": shapes,
            "opt_level": BUILDER_OPTIMIZATION_LEVEL,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def profile_shapes(
    sample_shapes: dict[str, tuple[int, ...]], max_batch_size: int
) -> dict[str, list[tuple[int, ...]]]:
    """min/opt/max per input: batch 1, max/2 and max; other dims as in the data."""
    opt = max(1, max_batch_size // 2)
    return {
        name: [(b, *shape) for b in (1, opt, max_batch_size)]
        for name, shape in sample_shapes.items()
    }


def build_engine(
    onnx_path: Path,
    output: Path,
    precision: str,
    sample_shapes: dict[str, tuple[int, ...]],
    max_batch_size: int,
    cache_dir: Path,
) -> dict[str, Any]:
    """Build (or reuse from the engine cache) a serialized engine at `output`."""
    import tensorrt as trt

    gpu = gpu_info()
    if gpu is None:
        raise OptimizeError("building a TensorRT engine needs an NVIDIA GPU")
    shapes = profile_shapes(sample_shapes, max(1, max_batch_size))
    key = engine_cache_key(onnx_path, precision, shapes, trt.__version__, gpu)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"engine-{key}.plan"
    details: dict[str, Any] = {
        "tensorrt": trt.__version__,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "profile": {n: [list(s) for s in v] for n, v in shapes.items()},
        "engine_cache_key": key,
    }
    if cached.is_file():
        shutil.copyfile(cached, output)
        return details | {"engine_cache": "hit"}
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:  # TRT 11: always strongly typed, flag ignored
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OptimizeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.builder_optimization_level = BUILDER_OPTIMIZATION_LEVEL
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    timing_path = cache_dir / f"timing-{trt.__version__}-sm{gpu.compute_capability}.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise OptimizeError(f"TensorRT failed to build a {precision} engine (see its log)")
    output.write_bytes(bytes(plan))
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    shutil.copyfile(output, cached)
    return details | {"engine_cache": "miss", "timing_cache": str(timing_path)}
