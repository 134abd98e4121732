"""`--shared-memory system`: inputs written once into POSIX shared memory, outputs into a region.

Regions are created with Python's `multiprocessing.shared_memory` (shm_open under /dev/shm, key
`/NAME`) and registered through Triton's system shared memory extension over the protocol being
measured; `close` unregisters and unlinks them. Every request of a level reads the same input
regions and writes the same output region (its contents are not read back), as perf_analyzer does.
"""

from __future__ import annotations

import json
import uuid
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from measure.inputs import NUMPY_TYPES, InputSet
from measure.model_info import BenchError, ModelInfo, ModelSource
from measure.requests import SharedMemoryRefs, tensor_bytes

DEFAULT_OUTPUT_BYTES = 100 * 1024  # perf_analyzer's --output-shared-memory-size default


class SharedMemoryRegions:
    """The regions of one run, registered with the server."""

    def __init__(self, source: ModelSource, protocol: str) -> None:
        self.source, self.protocol = source, protocol
        self.prefix = f"ferry_bench_{uuid.uuid4().hex[:8]}"
        self._segments: dict[str, shared_memory.SharedMemory] = {}

    async def setup(
        self, model: ModelInfo, inputs: InputSet, output_bytes: int | None
    ) -> SharedMemoryRefs:
        refs = []
        for index, tensors in enumerate(inputs.requests):
            placed: dict[str, tuple[str, int, int]] = {}
            for name, blob in tensor_bytes(tensors).items():
                region = f"{self.prefix}_in{index}_{name}"
                await self._create(region, blob)
                placed[name] = (region, 0, len(blob))
            refs.append(placed)
        outputs = {}
        for tensor in model.outputs:
            size = output_bytes or _output_bytes(model, tensor.datatype, tensor.dims, inputs)
            region = f"{self.prefix}_out_{tensor.name}"
            await self._create(region, b"\x00" * size)
            outputs[tensor.name] = (region, size)
        return SharedMemoryRefs(tuple(refs), outputs)

    async def _create(self, region: str, contents: bytes) -> None:
        segment = shared_memory.SharedMemory(name=region, create=True, size=max(len(contents), 1))
        assert segment.buf is not None
        segment.buf[: len(contents)] = contents
        self._segments[region] = segment
        await self._register(region, f"/{region}", len(contents))

    async def _register(self, region: str, key: str, size: int) -> None:
        if self.protocol == "grpc":
            from tritonclient.grpc import service_pb2 as pb

            request = pb.SystemSharedMemoryRegisterRequest(
                name=region, key=key, offset=0, byte_size=size
            )
            status, body = await self.source.exchange.call(  # type: ignore[attr-defined]
                "SystemSharedMemoryRegister", request.SerializeToString()
            )
            ok = status == 0
        else:
            status, body = await self.source.post_json(
                f"/v2/systemsharedmemory/region/{region}/register",
                {"key": key, "offset": 0, "byte_size": size},
            )
            ok = status == 200
        if not ok:
            detail = _error_text(body)
            raise BenchError(
                f"the server refused to register shared memory region '{region}' "
                f"(status {status}: {detail}); ferry serve needs --allow-client-shm"
            )

    async def close(self) -> None:
        """Unregister every region (best effort) and unlink them."""
        for region in list(self._segments):
            try:
                if self.protocol == "grpc":
                    from tritonclient.grpc import service_pb2 as pb

                    await self.source.exchange.call(  # type: ignore[attr-defined]
                        "SystemSharedMemoryUnregister",
                        pb.SystemSharedMemoryUnregisterRequest(name=region).SerializeToString(),
                    )
                else:
                    await self.source.post_json(
                        f"/v2/systemsharedmemory/region/{region}/unregister", {}
                    )
            except (OSError, BenchError):
                pass
            segment = self._segments.pop(region)
            segment.close()
            segment.unlink()


def _output_bytes(model: ModelInfo, datatype: str, dims: tuple[int, ...], inputs: InputSet) -> int:
    if datatype == "BYTES" or any(d < 0 for d in dims):
        return DEFAULT_OUTPUT_BYTES
    rows = inputs.batch_size if model.max_batch_size != 0 else 1
    itemsize = np.dtype(NUMPY_TYPES.get(datatype, np.float32)).itemsize
    return max(1, rows * int(np.prod(dims)) * itemsize)


def _error_text(body: bytes) -> str:
    try:
        parsed: Any = json.loads(body)
        return str(parsed.get("error", parsed)) if isinstance(parsed, dict) else str(parsed)
    except ValueError:
        return body.decode(errors="replace")
