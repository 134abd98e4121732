"""The real NVIDIA Triton on the benchmark models, for ratios measured in the same run.

The `tritonserver` of the nvidia-pytriton wheel (`make triton-server`) has only the Python
backend, so each model is a Python-backend model running the same `model.onnx` with onnxruntime
on the whole dynamic batch (tests/support/triton_onnx_model.py), with the same max_batch_size,
dynamic batching and ONNX Runtime thread count as ferry's config. Triton runs each Python-backend
instance in its own process, so the MLP gets two instances here: one per core, which was faster
than one for Triton on this 2-core machine.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from server.repository_format import format_config, parse_config
from tests.support.triton_onnx_model import write_triton_onnx_model
from tests.support.triton_server import (
    TRITON_VENV,
    TritonServer,
    missing_reason,
    running_tritonserver,
)

INSTANCES_BY_MODEL = {"mlp": 2, "encoder": 1}


def unavailable_reason() -> str | None:
    """Why the Triton rows cannot run here (None when they can)."""
    reason = missing_reason()
    if reason is not None:
        return reason
    check = subprocess.run(
        [str(TRITON_VENV / "bin" / "python"), "-c", "import onnxruntime"], capture_output=True
    )
    if check.returncode:
        return f"onnxruntime is not installed in {TRITON_VENV} (`make triton-server`)"
    return None


def write_repository(ferry_repository: Path, target: Path, models: Sequence[str]) -> Path:
    """Triton's repository: each ferry model's config as a Python-backend model."""
    for name in models:
        config = parse_config((ferry_repository / name / "config.pbtxt").read_text())
        config.platform = ""
        del config.instance_group[:]
        config.instance_group.add(kind="KIND_CPU", count=INSTANCES_BY_MODEL.get(name, 1))
        write_triton_onnx_model(
            target, name, ferry_repository / name / "1" / "model.onnx", format_config(config)
        )
    return target


@contextlib.contextmanager
def running_triton(ferry_repository: Path, models: Sequence[str]) -> Iterator[TritonServer]:
    """tritonserver serving `models` of the ferry benchmark repository."""
    with tempfile.TemporaryDirectory(prefix="ferry-bench-triton-") as folder:
        repository = write_repository(ferry_repository, Path(folder) / "repository", models)
        with running_tritonserver(repository) as server:
            yield server
