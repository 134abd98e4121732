"""The variant table: what each candidate is, on which targets it runs, and how it is built."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimizers import onnx_variants as ov
from optimizers.runners import PROVIDERS_BY_TARGET, OrtRunner
from optimizers.source import Dataset, OptimizeError, SourceModel
from server.repository_format import ONNX_PLATFORM, TENSORRT_PLATFORM
from server.runtimes import Runtime

TARGETS = ("cpu", "cuda", "tensorrt")
DEFAULT_VARIANTS = {
    "cpu": ("ort-fp32", "int8-dynamic", "int8-static", "fp16"),
    "cuda": ("ort-fp32", "fp16"),
    "tensorrt": ("tensorrt-fp16", "tensorrt-int8", "ort-tensorrt-ep"),
}


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder may use."""

    source: SourceModel
    work_dir: Path
    target: str
    calibration: Dataset | None
    calibration_method: str
    excluded_ops: tuple[str, ...]
    sample_shapes: dict[str, tuple[int, ...]]
    cache_dir: Path
    # A few real inputs (one batch): graph rewrites are checked against the source on them.
    samples: Mapping[str, np.ndarray] | None = None


@dataclass
class Artifact:
    """A built candidate: its model file and how it is served."""

    variant: str
    precision: str
    path: Path
    platform: str = ONNX_PLATFORM
    details: dict[str, Any] = field(default_factory=dict)
    providers: list[Any] | None = None
    accelerator: dict[str, str] | None = None  # Triton gpu_execution_accelerator parameters

    def open(self, target: str, threads: int, source: SourceModel) -> Runtime:
        """Load the candidate in-process the way it will be served."""
        if self.platform == TENSORRT_PLATFORM:
            from server.runtimes.tensorrt import TensorRTRuntime

            config = type(source.config)()
            config.CopyFrom(source.config)
            config.platform, config.default_model_filename = TENSORRT_PLATFORM, self.path.name
            return TensorRTRuntime(config, self.path.parent, 0)
        return OrtRunner(self.path, self.providers or PROVIDERS_BY_TARGET[target], threads)


@dataclass(frozen=True)
class VariantSpec:
    """A row of the variant table; `rank` orders simplicity (ties go to the lower rank)."""

    name: str
    precision: str
    rank: int
    targets: tuple[str, ...]
    build: Callable[[BuildContext, Path], Artifact]
    needs_calibration: bool = False
    benchmarked_on: tuple[str, ...] = TARGETS


def _ort_fp32(ctx: BuildContext, out: Path) -> Artifact:
    details = ov.build_ort_fp32(
        ctx.source.onnx_path, out, PROVIDERS_BY_TARGET[ctx.target], samples=ctx.samples
    )
    return Artifact("ort-fp32", "fp32", out, details=details)


def _int8_dynamic(ctx: BuildContext, out: Path) -> Artifact:
    return Artifact(
        "int8-dynamic",
        "int8",
        out,
        details=ov.build_int8_dynamic(
            ctx.source.onnx_path, out, per_channel=False, samples=ctx.samples
        ),
    )


def _static(ctx: BuildContext, out: Path, symmetric: bool) -> dict[str, Any]:
    if ctx.calibration is None:
        raise OptimizeError("int8-static needs --calibration-data")
    return ov.build_int8_static(
        ctx.source.onnx_path,
        out,
        ctx.calibration,
        batching=ctx.source.max_batch_size > 0,
        method=ctx.calibration_method,
        excluded_ops=ctx.excluded_ops,
        symmetric=symmetric,
    )


def _int8_static(ctx: BuildContext, out: Path) -> Artifact:
    return Artifact("int8-static", "int8", out, details=_static(ctx, out, symmetric=False))


def _fp16(ctx: BuildContext, out: Path) -> Artifact:
    return Artifact("fp16", "fp16", out, details=ov.build_fp16(ctx.source.onnx_path, out))


def _tensorrt(ctx: BuildContext, out: Path, precision: str) -> Artifact:
    from optimizers.tensorrt_build import build_engine

    onnx_path = out.with_name(f"{precision}.onnx")
    details = (
        ov.build_fp16(ctx.source.onnx_path, onnx_path)
        if precision == "fp16"
        else _static(ctx, onnx_path, symmetric=True)
    )
    plan = out.with_name("model.plan")
    details |= build_engine(
        onnx_path, plan, precision, ctx.sample_shapes, ctx.source.max_batch_size, ctx.cache_dir
    )
    return Artifact(f"tensorrt-{precision}", precision, plan, TENSORRT_PLATFORM, details)


def _ort_tensorrt_ep(ctx: BuildContext, out: Path) -> Artifact:
    """The FP16 ONNX served by ONNX Runtime's TensorRT execution provider (config only)."""
    details = ov.build_fp16(ctx.source.onnx_path, out)
    cache = ctx.cache_dir / "ort-trt"
    cache.mkdir(parents=True, exist_ok=True)
    shapes = {
        "min": 1,
        "opt": max(1, ctx.source.max_batch_size // 2),
        "max": max(1, ctx.source.max_batch_size),
    }
    profile = {
        key: ",".join(
            f"{name}:{'x'.join(str(d) for d in (batch, *shape))}"
            for name, shape in ctx.sample_shapes.items()
        )
        for key, batch in shapes.items()
    }
    options = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_profile_min_shapes": profile["min"],
        "trt_profile_opt_shapes": profile["opt"],
        "trt_profile_max_shapes": profile["max"],
    }
    accelerator = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/ferry-trt",
    }
    providers = [
        ("TensorrtExecutionProvider", options),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    return Artifact(
        "ort-tensorrt-ep",
        "fp16",
        out,
        details=details | {"ort_trt_options": options},
        providers=providers,
        accelerator=accelerator,
    )


VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("ort-fp32", "fp32", 1, TARGETS, _ort_fp32),
        VariantSpec("int8-dynamic", "int8", 2, ("cpu",), _int8_dynamic),
        VariantSpec(
            "int8-static", "int8", 3, ("cpu", "cuda"), _int8_static, needs_calibration=True
        ),
        VariantSpec("fp16", "fp16", 4, TARGETS, _fp16, benchmarked_on=("cuda", "tensorrt")),
        VariantSpec("ort-tensorrt-ep", "fp16", 5, ("tensorrt",), _ort_tensorrt_ep),
        VariantSpec(
            "tensorrt-fp16", "fp16", 6, ("tensorrt",), lambda ctx, out: _tensorrt(ctx, out, "fp16")
        ),
        VariantSpec(
            "tensorrt-int8",
            "int8",
            7,
            ("tensorrt",),
            lambda ctx, out: _tensorrt(ctx, out, "int8"),
            needs_calibration=True,
        ),
    )
}


def build(spec: VariantSpec, ctx: BuildContext) -> Artifact:
    """Build one variant in its own folder under the work dir."""
    folder = ctx.work_dir / spec.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return spec.build(ctx, folder / "model.onnx")
