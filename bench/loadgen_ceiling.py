"""How fast `ferry bench` can load a server, against the compiled generators `make bench` uses.

Against the transport floor (bench/transport_floor.py: canned answers, no model), at concurrency
64, one after the other in the same run: wrk vs `ferry bench` over HTTP, h2load vs `ferry bench`
over gRPC. Prints requests/s and the client's CPU time per request (user + system, from the
child's rusage): the generator's own cost, which bounds it on an idle core.

    PYTHONPATH=. .venv/bin/python -m bench.loadgen_ceiling [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.serving import _wait_for_port
from tests.support.server_process import free_port


def timed(command: list[str]) -> tuple[str, float]:
    """Run a child; its stdout and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ferry_bench(protocol: str, port: int, seconds: float, folder: Path) -> tuple[float, float]:
    report = folder / f"{protocol}.json"
    _, cpu = timed(
        [
            sys.executable, "-m", "ferry", "bench", "mlp", "--protocol", protocol,
            "--url", f"127.0.0.1:{port}", "--concurrency", "64", "--duration", str(seconds),
            "--warmup", "1", "--max-trials", "3", "--report", str(report),
        ]
    )  # fmt: skip
    level = json.loads(report.read_text())["levels"][0]
    return level["throughput_req_s"], cpu / max(level["totals"]["sent"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ferry-loadgen-"))
    body = folder / "body.json"
    body.write_text("{}")
    script = folder / "post.lua"
    script.write_text('wrk.method="POST"\nwrk.body="{}"\n')
    message = b"\x00\x00\x00\x00\x00"  # an empty ModelInferRequest: the floor ignores it
    framed = folder / "call.h2"
    framed.write_bytes(message)
    for kind in ("http", "grpc"):
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "bench.transport_floor", kind, str(port)])
        try:
            _wait_for_port(port)
            if kind == "http":
                out, cpu = timed(
                    ["wrk", "-t1", "-c64", f"-d{int(args.seconds)}s", "-s", str(script),
                     f"http://127.0.0.1:{port}/v2/models/mlp/infer"]
                )  # fmt: skip
                rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
                total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                name = "wrk"
            else:
                out, cpu = timed(
                    ["h2load", "-t1", "-c8", "-m8", "-D", str(int(args.seconds)),
                     "-H", "content-type: application/grpc", "-H", "te: trailers",
                     "-d", str(framed),
                     f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"]
                )  # fmt: skip
                rate = float(re.search(r"([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
                total = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
                name = "h2load"
            ours, ours_cpu = ferry_bench(kind, port, args.seconds, folder)
            print(
                f"{kind:5s} c=64: {name:7s} {rate:9.0f} req/s ({cpu / max(total, 1) * 1e6:5.1f} "
                f"us CPU/req) | ferry bench {ours:9.0f} req/s ({ours_cpu * 1e6:5.1f} us CPU/req, "
                f"incl. start-up) = {ours / rate:4.2f} x {name}",
                flush=True,
            )
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
