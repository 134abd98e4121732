"""Which objects does a request leave for Python's cyclic garbage collector?

Starts `ferry serve` on a small MLP with `gc.DEBUG_SAVEALL` (everything the collector frees is
kept in `gc.garbage` instead), sends N requests per protocol with the real tritonclient at a
given concurrency, then has the server collect and report the types it found in reference
cycles, per request. A request path without cycles leaves (close to) nothing here: its objects
are freed by reference counting the moment they are dropped, and the collector has nothing to
pause the event loop for.

    PYTHONPATH=. .venv/bin/python -m bench.gc_cycles --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Runs inside the server process: keep what the collector frees and dump it on SIGUSR1.
SERVER_BOOTSTRAP = """
import gc, json, os, signal, sys, collections
gc.set_debug(gc.DEBUG_SAVEALL)
dump_path = os.environ["FERRY_GC_DUMP"]
reported = 0  # gc.garbage is kept whole: cleared, its cycles would be found again next time

def dump(signum, frame):
    global reported
    gc.collect()
    new = gc.garbage[reported:]
    reported = len(gc.garbage)
    counts = collections.Counter(type(o).__module__ + "." + type(o).__qualname__ for o in new)
    with open(dump_path, "w") as out:
        json.dump({"objects": len(new), "types": counts.most_common(40)}, out)

signal.signal(signal.SIGUSR1, dump)
from ferry.cli import main
sys.argv = ["ferry", *sys.argv[1:]]
main()
"""


def _collect(process: subprocess.Popen[bytes], dump_path: Path) -> dict[str, Any]:
    dump_path.unlink(missing_ok=True)
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if dump_path.exists() and dump_path.stat().st_size:
            time.sleep(0.1)
            return dict(json.loads(dump_path.read_text()))
        time.sleep(0.05)
    raise RuntimeError("the server did not dump its garbage")


def _load(protocol: str, url: str, requests: int, concurrency: int) -> None:
    """`protocol`: http-json, http-binary or grpc; with `-error`, every request is refused (a
    wrong shape), so the error path is what gets measured."""
    failing = protocol.endswith("-error")
    protocol = protocol.removesuffix("-error")
    from tritonclient.utils import InferenceServerException

    x = np.random.default_rng(0).standard_normal((1, 64 + failing)).astype(np.float32)
    if protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module  # type: ignore[no-redef]

    def worker(count: int) -> None:
        client = client_module.InferenceServerClient(url)
        tensor = client_module.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(
            x, **({} if protocol != "http-binary" else {"binary_data": True})
        )
        if protocol == "http-json":
            tensor.set_data_from_numpy(x, binary_data=False)
        for _ in range(count):
            try:
                client.infer("mlp", [tensor])
            except InferenceServerException:
                if not failing:
                    raise
        client.close()

    per_worker = [requests // concurrency] * concurrency
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, per_worker))


def main() -> None:
    from bench.serving import loopback_arguments
    from tests.support.onnx_models import mlp_model, write_model
    from tests.support.server_process import ServerProcess, free_port, wait_until_live

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--protocols", default="http-json,http-binary,grpc,http-json-error,grpc-error"
    )
    parser.add_argument("--extra", default="", help="extra `ferry serve` flags")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ferry-gc-"))
    config = (
        "max_batch_size: 32\ndynamic_batching { }\n"
        'input [{ name: "x" data_type: TYPE_FP32 dims: [64] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [10] }]\n'
    )
    write_model(
        workdir / "repo",
        "mlp",
        mlp_model(in_features=64, hidden=128, out_features=10, input_name="x", output_name="y"),
        config,
    )
    ports = [free_port() for _ in range(3)]
    dump_path = workdir / "garbage.json"
    log = workdir / "serve.log"
    env = dict(os.environ, FERRY_GC_DUMP=str(dump_path))
    command = [
        sys.executable,
        "-c",
        SERVER_BOOTSTRAP,
        "serve",
        *loopback_arguments(workdir / "repo", ports),
        "--no-drift",
        *("--workers", "1"),  # the collector of the one serving process is what it watches
        *args.extra.split(),
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until_live(ServerProcess(process, *ports, log), ready=True)
        _load("http-json", f"127.0.0.1:{ports[0]}", 200, 4)  # warm-up
        baseline = _collect(process, dump_path)
        print(f"start-up and warm-up left {baseline['objects']} objects in cycles")
        for protocol in args.protocols.split(","):
            url = f"127.0.0.1:{ports[1] if protocol.startswith('grpc') else ports[0]}"
            _load(protocol, url, args.requests, args.concurrency)
            result = _collect(process, dump_path)
            per_request = result["objects"] / args.requests
            print(
                f"\n{protocol}: {result['objects']} objects in cycles, "
                f"{per_request:.2f} per request"
            )
            for name, count in result["types"][:25]:
                print(f"  {count / args.requests:8.3f}/request  {name}")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
