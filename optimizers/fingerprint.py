"""Machine fingerprint recorded with every benchmark: compare figures only within one."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# CPU flags that decide INT8 / FP16 speed on x86 and Arm.
RELEVANT_CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "fphp",
)


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, [flag for flag in RELEVANT_CPU_FLAGS if flag in flags]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def fingerprint(target: str, threads: int) -> dict[str, Any]:
    """CPU model and flags, cores, library versions, GPU name and compute capability."""
    from optimizers.tensorrt_build import gpu_info, tensorrt_version

    cpu_model, flags = _cpuinfo()
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    data: dict[str, Any] = {
        "target": target,
        "cpu": cpu_model,
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "os": platform.platform(),
        "onnxruntime": ort,
        "onnx": _version("onnx"),
        "numpy": _version("numpy"),
        "tensorrt": None,
        "gpu": None,
        "compute_capability": None,
    }
    if target != "cpu":
        gpu = gpu_info()
        data["tensorrt"] = tensorrt_version()
        if gpu is not None:
            data["gpu"], data["compute_capability"] = gpu.name, gpu.compute_capability
    return data
