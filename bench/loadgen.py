"""Load with a mix of request bodies: wrk choosing one body per request (throughput), and an
asyncio closed loop that knows which request got which answer (correctness under load).

Bodies are KServe v2 binary-extension requests (JSON header + raw tensor bytes), so every request
costs the server the same decoding work it costs in production.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.types import datatype_of


@dataclass(frozen=True)
class Body:
    """One request body, its Inference-Header-Content-Length, and a label for the counts."""

    data: bytes
    header_length: int
    label: str = ""


def binary_request(inputs: Mapping[str, np.ndarray], label: str = "") -> Body:
    """A binary-extension request with `inputs`, asking for binary outputs."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype_of(array),
                    "parameters": {"binary_data_size": array.nbytes},
                }
                for name, array in inputs.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    data = header + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    return Body(data, len(header), label)


WRK_SCRIPT = """
local bodies, lengths = {{}}, {{}}
for i, name in ipairs({{{files}}}) do
  local f = io.open(name, "rb")
  bodies[i] = f:read("*all")
  f:close()
end
lengths = {{{lengths}}}
math.randomseed({seed})
request = function()
  local i = math.random(#bodies)
  return wrk.format("POST", nil, {{
    ["Content-Type"] = "application/octet-stream",
    ["Inference-Header-Content-Length"] = lengths[i],
  }}, bodies[i])
end
"""


def wrk_mixed(
    url: str, bodies: Sequence[Body], concurrency: int, seconds: float, seed: int = 7
) -> dict[str, float]:
    """wrk at `concurrency` connections, each request one of `bodies` at random: requests/s,
    p50/p99 latency (ms), non-2xx responses. A 1 s warm-up run comes first."""
    with tempfile.TemporaryDirectory(prefix="ferry-wrk-") as folder:
        files = []
        for index, body in enumerate(bodies):
            path = Path(folder) / f"{index}.bin"
            path.write_bytes(body.data)
            files.append(f'"{path}"')
        script = Path(folder) / "mixed.lua"
        script.write_text(
            WRK_SCRIPT.format(
                files=", ".join(files),
                lengths=", ".join(f'"{b.header_length}"' for b in bodies),
                seed=seed,
            )
        )
        base = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script)]
        subprocess.run([*base, "-d1s", url], capture_output=True, check=True)
        out = subprocess.run(
            [*base, f"-d{max(int(seconds), 1)}s", "--latency", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def latency_ms(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": float(rate.group(1)) if rate else float("nan"),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


async def _closed_loop(
    url: str, bodies: Sequence[Body], concurrency: int, seconds: float, seed: int
) -> tuple[Counter[tuple[str, int]], float]:
    import aiohttp

    counts: Counter[tuple[str, int]] = Counter()
    rng = np.random.default_rng(seed)
    choices = rng.integers(0, len(bodies), size=1_000_000)
    position = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal position
            while time.perf_counter() < deadline:
                body = bodies[int(choices[position % len(choices)])]
                position += 1
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(body.header_length),
                }
                async with session.post(url, data=body.data, headers=headers) as response:
                    await response.read()
                    counts[(body.label, response.status)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts, time.perf_counter() - started


def closed_loop(
    url: str, bodies: Sequence[Body], concurrency: int, seconds: float, seed: int = 7
) -> tuple[Counter[tuple[str, int]], float]:
    """`concurrency` clients, each sending a random body after the previous answer, for
    `seconds`: answers counted by (body label, HTTP status), and the elapsed seconds."""
    return asyncio.run(_closed_loop(url, bodies, concurrency, seconds, seed))
