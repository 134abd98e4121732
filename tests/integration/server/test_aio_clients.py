"""The asyncio flavours of tritonclient (http.aio, grpc.aio) against a real `ferry serve`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio

from tests.support.onnx_models import run_reference
from tests.support.server_process import ServerProcess


async def infer_concurrently(
    xs: list[np.ndarray], infer: Callable[[np.ndarray], Awaitable[np.ndarray]], repository: Path
) -> None:
    """Send every x at once; each answer must be that x's own result."""
    outputs = await asyncio.gather(*(infer(x) for x in xs))
    model = repository / "mlp" / "1" / "model.onnx"
    for x, out in zip(xs, outputs, strict=True):
        np.testing.assert_allclose(out, run_reference(model, {"input": x})["output"], rtol=1e-5)


def random_inputs(count: int, rows: int, seed: int) -> list[np.ndarray]:
    return [
        np.random.default_rng(seed + i).standard_normal((rows, 16)).astype(np.float32)
        for i in range(count)
    ]


def test_http_aio(server: ServerProcess, repository: Path) -> None:
    async def scenario() -> None:
        client = httpaio.InferenceServerClient(server.http_url)

        async def infer(x: np.ndarray) -> np.ndarray:
            infer_input = httpaio.InferInput("input", list(x.shape), "FP32")
            infer_input.set_data_from_numpy(x)
            return (await client.infer("mlp", [infer_input])).as_numpy("output")

        try:
            assert await client.is_server_ready()
            assert (await client.get_model_metadata("mlp"))["name"] == "mlp"
            assert (await client.get_model_config("mlp"))["max_batch_size"] == 4
            await infer_concurrently(random_inputs(16, 1, seed=0), infer, repository)
        finally:
            await client.close()

    asyncio.run(scenario())


def test_grpc_aio(server: ServerProcess, repository: Path) -> None:
    async def scenario() -> None:
        client = grpcaio.InferenceServerClient(server.grpc_url)

        async def infer(x: np.ndarray) -> np.ndarray:
            infer_input = grpcaio.InferInput("input", list(x.shape), "FP32")
            infer_input.set_data_from_numpy(x)
            return (await client.infer("mlp", [infer_input])).as_numpy("output")

        try:
            assert await client.is_server_live()
            metadata = await client.get_model_metadata("mlp", as_json=True)
            assert metadata["platform"] == "onnxruntime_onnx"
            await infer_concurrently(random_inputs(12, 2, seed=50), infer, repository)
        finally:
            await client.close()

    asyncio.run(scenario())
