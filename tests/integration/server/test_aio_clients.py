"""The asyncio flavours of tritonclient (http.aio, grpc.aio) against a real `ferry serve`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio

from tests.support.onnx_models import run_reference
from tests.support.server_process import ServerProcess


def test_http_aio(server: ServerProcess, repository: Path) -> None:
    async def scenario() -> None:
        client = httpaio.InferenceServerClient(server.http_url)
        try:
            assert await client.is_server_ready()
            assert (await client.get_model_metadata("mlp"))["name"] == "mlp"
            assert (await client.get_model_config("mlp"))["max_batch_size"] == 4
            xs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)
                  for i in range(16)]

            async def one(x: np.ndarray) -> np.ndarray:
                infer_input = httpaio.InferInput("input", [1, 16], "FP32")
                infer_input.set_data_from_numpy(x)
                return (await client.infer("mlp", [infer_input])).as_numpy("output")

            outputs = await asyncio.gather(*(one(x) for x in xs))
        finally:
            await client.close()
        model = repository / "mlp" / "1" / "model.onnx"
        for x, out in zip(xs, outputs, strict=True):
            np.testing.assert_allclose(out, run_reference(model, {"input": x})["output"],
                                       rtol=1e-5)

    asyncio.run(scenario())


def test_grpc_aio(server: ServerProcess, repository: Path) -> None:
    async def scenario() -> None:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            assert await client.is_server_live()
            metadata = await client.get_model_metadata("mlp", as_json=True)
            assert metadata["platform"] == "onnxruntime_onnx"
            xs = [np.random.default_rng(50 + i).standard_normal((2, 16)).astype(np.float32)
                  for i in range(12)]

            async def one(x: np.ndarray) -> np.ndarray:
                infer_input = grpcaio.InferInput("input", [2, 16], "FP32")
                infer_input.set_data_from_numpy(x)
                return (await client.infer("mlp", [infer_input])).as_numpy("output")

            outputs = await asyncio.gather(*(one(x) for x in xs))
        finally:
            await client.close()
        model = repository / "mlp" / "1" / "model.onnx"
        for x, out in zip(xs, outputs, strict=True):
            np.testing.assert_allclose(out, run_reference(model, {"input": x})["output"],
                                       rtol=1e-5)

    asyncio.run(scenario())
