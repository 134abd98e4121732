"""The transport floor: the same HTTP and gRPC stacks as `ferry serve` (uvicorn + httptools +
uvloop; ferry's HTTP/2 gRPC layer + uvloop) with handlers that ignore the request and return a
canned MLP-sized response. No model, no tensor decoding, no batching: the most any server on
these stacks can reach on this machine, so `make bench` can say how much of it ferry keeps.

    python -m bench.transport_floor http PORT
    python -m bench.transport_floor grpc PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np

OUTPUT_WIDTH = 10  # the bench MLP's output: [1, 10] FP32


def canned_grpc_response() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    message = pb.ModelInferResponse(model_name="mlp", model_version="1")
    output = message.outputs.add()
    output.name, output.datatype = "output", "FP32"
    output.shape.extend([1, OUTPUT_WIDTH])
    message.raw_output_contents.append(np.zeros((1, OUTPUT_WIDTH), np.float32).tobytes())
    return bytes(message.SerializeToString())


# Model metadata and config for `ferry bench` (bench/loadgen_ceiling.py): an MLP-shaped model.
METADATA = {
    "name": "mlp",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, OUTPUT_WIDTH]}],
}
CONFIG = {
    "name": "mlp",
    "max_batch_size": 32,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}],
    "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [OUTPUT_WIDTH]}],
}


def canned_http_response() -> bytes:
    return json.dumps(
        {
            "model_name": "mlp",
            "model_version": "1",
            "outputs": [
                {
                    "name": "output",
                    "datatype": "FP32",
                    "shape": [1, OUTPUT_WIDTH],
                    "data": [0.0] * OUTPUT_WIDTH,
                }
            ],
        }
    ).encode()


async def serve_grpc(port: int) -> None:
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    from server.protocol.grpc_wire.rpc import routes_for
    from server.protocol.grpc_wire.server import GrpcWireServer

    reply = pb.ModelInferResponse.FromString(canned_grpc_response())
    metadata = json_format.ParseDict(METADATA, pb.ModelMetadataResponse())
    config = pb.ModelConfigResponse()
    json_format.ParseDict(CONFIG, config.config)

    class Canned(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return reply

        async def ModelMetadata(self, request: Any, context: Any) -> Any:
            return metadata

        async def ModelConfig(self, request: Any, context: Any) -> Any:
            return config

    server = GrpcWireServer(
        routes_for(
            Canned(),
            pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            service_pb2_grpc.GRPCInferenceServiceServicer,
        ),
        "127.0.0.1",
        port,
    )
    await server.start()
    await asyncio.Event().wait()


def http_app() -> Any:
    infer = canned_http_response()
    described = {"config": json.dumps(CONFIG).encode(), "metadata": json.dumps(METADATA).encode()}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        body = infer
        if scope["method"] == "GET":  # `ferry bench` reads metadata and config first
            body = described["config" if scope["path"].endswith("/config") else "metadata"]
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvloop

    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "grpc":
        uvloop.run(serve_grpc(port))
        return
    import uvicorn

    uvicorn.run(
        http_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
