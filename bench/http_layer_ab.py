"""The HTTP layer's CPU cost per request, in process, for two ferry source trees in alternation:
uvicorn's protocol (ferry's, with its limits, where the tree has one), the infer path and ferry's
ASGI app, fed keep-alive infer requests through a stub transport, with a data plane that answers
at once. No sockets, no model, no batcher: only the HTTP layer, measured as process CPU time,
which a shared machine disturbs less than wrk's wall-clock figures, or with --instructions as
instructions counted by valgrind's callgrind, which it does not disturb.

    git archive main | tar -x -C /tmp/ferry-main
    python -m bench.http_layer_ab --baseline /tmp/ferry-main [--candidate .] [--rounds 9]
    python -m bench.http_layer_ab --baseline /tmp/ferry-main --instructions

Each measurement runs in a fresh interpreter whose sys.path starts with the tree it measures.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

MEASURE = r"""
import asyncio, json, sys, time
import numpy as np
tree, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, tree)
import uvicorn
from uvicorn.server import ServerState
import server.protocol.http as http
from server.types import InferenceResponse


class Repository:
    def get(self, name, version):
        return None  # the model exists: the handler only checks that get() does not raise


class Ops:
    request_context = False


class DataPlane:
    shared_memory = None
    repository = Repository()
    ops = Ops()

    async def infer(self, request):
        outputs = {"y": np.zeros((1, 4), np.float32)}
        return InferenceResponse(request.model_name, "1", outputs, id=request.id)


class Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.writes, self.closing, self.failures = 0, False, 0

    def write(self, data):
        self.writes += 1
        if data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 200"):
            self.failures += 1  # a stale stub measures the error path: refuse to report it

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(
            name, default
        )

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


x = np.zeros((1, 64), np.float32)
if kind == "binary":
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body, extra = header + x.tobytes(), b"Inference-Header-Content-Length: %d\r\n" % len(header)
else:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()
    extra = b""
request = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: localhost:8000\r\n"
           b"Content-Length: %d\r\n%s\r\n" % (len(body), extra)) + body


async def main():
    if "limits" in http.create_http_app.__code__.co_varnames:
        from server.protocol.http_connection import limited_protocol
        from server.protocol.http_limits import HttpLimits
        limits = HttpLimits()
        app, protocol_class = http.create_http_app(DataPlane(), limits), limited_protocol(limits)
    else:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol_class
        app = http.create_http_app(DataPlane(), 512 << 20)
    config = uvicorn.Config(
        app, http="httptools", lifespan="off", log_level="warning", interface="asgi3",
        # as server/app.py configures it
        proxy_headers=False, server_header=False, date_header=False, access_log=False,
    )
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)

    async def run(n):
        for _ in range(n):
            protocol.data_received(request)
            for _ in range(6):  # the app's task: start, read, decode, infer, encode, send
                await asyncio.sleep(0)

    await run(200)
    started = time.process_time()
    await run(count)
    elapsed = time.process_time() - started
    assert transport.writes >= count + 200, transport.writes  # one send per response, or two
    assert transport.failures == 0, f"{transport.failures} responses were not 200"
    print(elapsed / count * 1e6)
    protocol.connection_lost(None)


import uvloop
uvloop.run(main())
"""


def measure(tree: Path, kind: str, count: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tree), kind, str(count)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.split()[-1])


def instructions(tree: Path, kind: str, low: int = 500, high: int = 2500) -> float:
    """Instructions per request under callgrind: the difference between a run of `high` and
    one of `low` requests, so that imports and set-up cancel out. Slow (about two minutes a
    call) but exact to a fraction of a percent, where CPU time on a shared machine is not."""

    def collected(count: int) -> int:
        valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        err = subprocess.run(
            [*valgrind, sys.executable, "-c", MEASURE, str(tree), kind, str(count)],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        return int(re.search(r"Collected : (\d+)", err).group(1))  # type: ignore[union-attr]

    return (collected(high) - collected(low)) / (high - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="source tree to compare to")
    parser.add_argument("--candidate", type=Path, default=Path.cwd(), help="source tree to test")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=3000, help="per measurement")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind's callgrind instead (one round)",
    )
    args = parser.parse_args()
    trees = (args.baseline.resolve(), args.candidate.resolve())
    if args.instructions:
        for kind in ("binary", "json"):
            base, cand = (instructions(tree, kind) for tree in trees)
            print(
                f"{kind:6s} HTTP layer instructions per request: baseline {base:,.0f}, "
                f"candidate {cand:,.0f}, ratio {cand / base:.3f}"
            )
        return
    for kind in ("binary", "json"):
        pairs = [
            tuple(measure(tree, kind, args.requests) for tree in trees) for _ in range(args.rounds)
        ]
        base = statistics.median(p[0] for p in pairs)
        cand = statistics.median(p[1] for p in pairs)
        ratios = sorted(round(c / b, 3) for b, c in pairs)
        print(
            f"{kind:6s} HTTP layer CPU per request: baseline {base:.1f} us, candidate "
            f"{cand:.1f} us, ratio {cand / base:.3f} (per round: {ratios})"
        )


if __name__ == "__main__":
    main()
