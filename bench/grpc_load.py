"""A lean gRPC load generator: pre-serialized ModelInferRequest bytes, N concurrent calls on one
grpc.aio channel, in its own process. Prints JSON: requests, errors, seconds, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def run(
    url: str, payload: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> dict[str, float]:
    options = [
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
    ]
    async with grpc.aio.insecure_channel(url, options=options) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = time.perf_counter() + warmup_s + duration_s

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    await call(payload)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - start)

        async def clock() -> None:
            nonlocal measuring
            await asyncio.sleep(warmup_s)
            measuring = True

        started = time.perf_counter()
        await asyncio.gather(clock(), *(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started - warmup_s
    values = np.array(latencies) * 1000
    quantiles = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        **{
            key: float(np.percentile(values, q)) if len(values) else 0.0
            for key, q in quantiles.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--request-file", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    with open(args.request_file, "rb") as handle:
        payload = handle.read()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(
        json.dumps(
            asyncio.run(run(args.url, payload, args.concurrency, args.duration, args.warmup))
        )
    )


if __name__ == "__main__":
    main()
