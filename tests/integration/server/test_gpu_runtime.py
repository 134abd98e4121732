"""GPU paths of the ONNX Runtime runtime: CUDA for KIND_GPU, the TensorRT execution provider with
FP16. Marked `gpu`: skipped cleanly on machines without an NVIDIA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.server_process import running_server

pytestmark = pytest.mark.gpu

GPU_CONFIG = "max_batch_size: 8\ndynamic_batching {}\ninstance_group [{ kind: KIND_GPU }]\n"
TENSORRT_CONFIG = (
    GPU_CONFIG
    + """
optimization { execution_accelerators { gpu_execution_accelerator [{
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "trt_engine_cache_path" value: "%s" } }] } }
"""
)


@pytest.mark.parametrize("accelerator", ["cuda", "tensorrt"])
def test_gpu_model_serves_and_matches_cpu(tmp_path: Path, accelerator: str) -> None:
    config = GPU_CONFIG if accelerator == "cuda" else TENSORRT_CONFIG % (tmp_path / "cache")
    write_model(tmp_path / "repo", "mlp", mlp_model(), config)
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    expected = run_reference(tmp_path / "repo" / "mlp" / "1" / "model.onnx", {"input": x})
    with running_server(tmp_path / "repo", timeout=600) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        infer_input = grpcclient.InferInput("input", [8, 16], "FP32")
        infer_input.set_data_from_numpy(x)
        got = client.infer("mlp", [infer_input]).as_numpy("output")
    tolerance = 1e-4 if accelerator == "cuda" else 2e-2
    np.testing.assert_allclose(got, expected["output"], rtol=tolerance, atol=tolerance)
