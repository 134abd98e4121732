"""`make bench`: ferry's serving throughput and latency against in-process ONNX Runtime.

Measured in one run on this machine: the in-process ceiling (best batch size), `ferry serve`
over HTTP-binary, HTTP-JSON and gRPC at concurrency 1, 8 and 64 (wrk for HTTP, h2load for
gRPC: compiled load generators in their own processes), the mean batch the dynamic batcher
formed, a hand-written FastAPI + ONNX Runtime endpoint without batching, and the transport
floor (bench/transport_floor.py: the same HTTP and gRPC stacks answering a canned response).
The ceiling is the best of one 2-thread session and two 1-thread sessions side by side, over
batch sizes.
Prints ratios; writes bench/artifacts/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import MLP_FEATURES, build_repository
from bench.triton_reference import running_triton, unavailable_reason
from server.workers.count import auto_workers

ARTIFACTS = Path(__file__).parent / "artifacts"
TRITON_MLP_REQS = 15_900  # Triton 2.51, KServe v2 JSON, c=64, same kind of machine (issue #2)
TRITON_ENCODER_RATIO = 0.76
PROBE_SECONDS = 1.0  # each re-measurement of the in-process reference around a server run
SAMPLE = {"mlp": ("x", "FP32", (1, MLP_FEATURES)), "encoder": ("tokens", "INT64", (1, 64))}


def sample_input(model: str, rows: int = 1) -> np.ndarray:
    _, datatype, shape = SAMPLE[model]
    rng = np.random.default_rng(0)
    if datatype == "INT64":
        return rng.integers(0, 32, size=(rows, *shape[1:])).astype(np.int64)
    return rng.standard_normal((rows, *shape[1:])).astype(np.float32)


class InProcessReference:
    """In-process ONNX Runtime on the same model: the ceiling and the batch-1 latency.

    `sweep` finds the best configuration once (one 2-thread session over batch sizes, and two
    1-thread sessions side by side, as `instance_group { count: 2 }` runs); `probe` re-measures
    only that configuration and the batch-1 latency, right before and after each server
    measurement, because this shared machine's speed drifts by tens of percent within minutes.
    """

    def __init__(self, model_path: Path, model: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        single = ort.SessionOptions()
        single.intra_op_num_threads = 1
        self.parallel = [
            ort.InferenceSession(str(model_path), single, providers=["CPUExecutionProvider"])
            for _ in range(2)
        ]
        self.model = model
        self.best: tuple[str, int] = ("single", 1)

    def _feed(self, batch: int) -> dict[str, np.ndarray]:
        return {SAMPLE[self.model][0]: sample_input(self.model, batch)}

    def _single(self, batch: int, seconds: float) -> tuple[float, list[float]]:
        feed = self._feed(batch)
        for _ in range(3):
            self.session.run(None, feed)
        times, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - start)
        return batch * len(times) / sum(times), times

    def _side_by_side(self, batch: int, seconds: float) -> float:
        import threading

        feed = self._feed(batch)
        counts = [0] * len(self.parallel)
        deadline = time.perf_counter() + seconds

        def work(index: int) -> None:
            self.parallel[index].run(None, feed)
            start = time.perf_counter()
            while time.perf_counter() < deadline:
                self.parallel[index].run(None, feed)
                counts[index] += 1
            counts[index] = int(counts[index] * seconds / max(time.perf_counter() - start, 1e-9))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(self.parallel))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return batch * sum(counts) / seconds

    def sweep(self, seconds: float) -> dict[str, Any]:
        """Every configuration; remembers the best for `probe`."""
        single = {batch: self._single(batch, seconds)[0] for batch in (1, 8, 16, 32, 64)}
        parallel = {batch: self._side_by_side(batch, seconds) for batch in (8, 32, 64)}
        candidates = {("single", b): v for b, v in single.items()}
        candidates.update({("parallel", b): v for b, v in parallel.items()})
        self.best = max(candidates, key=lambda key: candidates[key])
        return {
            "rows_per_s": single,
            "parallel_rows_per_s": parallel,
            "best": f"{self.best[0]} batch {self.best[1]}",
            "ceiling_rows_per_s": candidates[self.best],
            **self.probe(seconds / 2),
        }

    def probe(self, seconds: float) -> dict[str, float]:
        """The best configuration's rows/s and the batch-1 p50 (2 threads), measured now."""
        kind, batch = self.best
        rate = (
            self._single(batch, seconds)[0]
            if kind == "single"
            else self._side_by_side(batch, seconds)
        )
        _, times = self._single(1, seconds)
        return {
            "ceiling_rows_per_s": rate,
            "p50_ms": float(np.percentile(np.array(times) * 1000, 50)),
        }


def write_payloads(model: str, folder: Path) -> dict[str, Path]:
    """Request bodies for one single-row request: HTTP binary, HTTP JSON, gRPC message."""
    from tritonclient.grpc import service_pb2

    name, datatype, shape = SAMPLE[model]
    x = sample_input(model)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    paths = {
        "http-binary": folder / f"{model}.bin",
        "http-json": folder / f"{model}.json",
        "grpc": folder / f"{model}.grpc",
    }
    paths["http-binary"].write_bytes(header + x.tobytes())
    (folder / f"{model}.bin.len").write_text(str(len(header)))
    paths["http-json"].write_bytes(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": list(shape),
                        "datatype": datatype,
                        "data": x.reshape(-1).tolist(),
                    }
                ]
            }
        ).encode()
    )
    message = service_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=list(shape))
    message.raw_input_contents.append(x.tobytes())
    paths["grpc"].write_bytes(message.SerializeToString())
    return paths


WRK_SCRIPT = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
{headers}
done = function(summary, latency, requests)
  for _, p in pairs({{50, 90, 99, 99.9}}) do
    io.write(string.format("PERCENTILE %g %d\\n", p, latency:percentile(p)))
  end
end
"""
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


def percentiles_ms(latencies_ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/p99.9 of per-request latencies (NaN when there are none)."""
    if not len(latencies_ms):
        return dict.fromkeys(PERCENTILES, float("nan"))
    return {key: float(np.percentile(latencies_ms, q)) for key, q in PERCENTILES.items()}


def wrk(
    url: str,
    body: Path,
    concurrency: int,
    seconds: float,
    headers: dict[str, str],
    timeout_s: float = 2.0,
) -> dict[str, float]:
    """Run wrk against one URL; parse requests/s, p50/p99 latency and non-2xx responses
    (a request slower than `timeout_s` counts as a timeout, not in the latencies)."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(body=body, headers=lines))
    subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", "-d1s", "-s", script.name, url],
        capture_output=True,
        check=True,
    )  # warm-up
    duration = f"-d{max(int(seconds), 1)}s"
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            duration,
            "--latency",
            "--timeout",
            f"{max(int(timeout_s), 1)}s",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)

    reported = {
        float(q): int(us) / 1000.0 for q, us in re.findall(r"^PERCENTILE (\S+) (\d+)$", out, re.M)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        **{key: reported.get(q, float("nan")) for key, q in PERCENTILES.items()},
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def grpc_load(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """gRPC load with h2load (compiled, HTTP/2): `concurrency` streams over up to 8
    connections, each request the length-prefixed ModelInferRequest; falls back to the lean
    Python client when h2load is missing. gRPC errors are counted from server statistics."""
    if shutil.which("h2load") is None:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.grpc_load",
                "--url",
                url,
                "--request-file",
                str(body),
                "--concurrency",
                str(concurrency),
                "--duration",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(out)
        return {
            "req_per_s": result["requests"] / result["seconds"],
            **{key: result[key] for key in PERCENTILES},
            "errors": float(result["errors"]),
        }
    message = body.read_bytes()
    framed = body.with_suffix(".h2")
    framed.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    clients = min(concurrency, 8)
    streams = max(concurrency // clients, 1)
    command = [
        "h2load",
        "-t1",
        f"-c{clients}",
        f"-m{streams}",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        str(framed),
        f"http://{url}/inference.GRPCInferenceService/ModelInfer",
    ]
    subprocess.run([*command, "-D", "1"], capture_output=True, check=True)  # warm-up
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        out = subprocess.run(
            [*command, "-D", str(max(int(seconds), 1)), "--log-file", log.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [line.split("\t") for line in Path(log.name).read_text().splitlines()]
    latencies = np.array([int(row[2]) for row in rows if len(row) >= 3]) / 1000.0
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    return {
        "req_per_s": float(rate.group(1)) if rate else float("nan"),  # type: ignore[union-attr]
        **percentiles_ms(latencies),
        "errors": float(sum(1 for row in rows if len(row) >= 2 and row[1] != "200")),
    }


def model_stats(http_url: str, model: str) -> tuple[int, int, int]:
    """(rows inferred, executions, failed requests) so far."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats") as response:
        stats = json.loads(response.read())["model_stats"][0]
    return (
        int(stats["inference_count"]),
        int(stats["execution_count"]),
        int(stats["inference_stats"]["fail"]["count"]),
    )


def loopback_arguments(repo: Path, ports: list[int]) -> list[str]:
    """`ferry serve` flags for `repo` on loopback: HTTP, gRPC and metrics on `ports`."""
    return [
        "--model-repository",
        str(repo),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(ports[0]),
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port",
        str(ports[1]),
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        str(ports[2]),
    ]


def serve(
    repo: Path,
    extra: list[str],
    source: Path | None = None,
    log_name: str = "serve.log",
    module: str = "ferry",
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """`ferry serve` (`python -m MODULE serve`) on free ports; from the source tree `source` when
    given (its packages first on sys.path), else from this one; one process (`--workers 1`)
    unless `extra` names --workers, so A/B runs of two trees compare the same mode. Returns the
    process and the HTTP, gRPC and metrics addresses."""
    from tests.support.server_process import ServerProcess, free_port, wait_until_live

    ports = [free_port() for _ in range(3)]
    log = open(ARTIFACTS / log_name, "wb")  # noqa: SIM115 - lives as long as the server
    env = None if source is None else dict(os.environ, PYTHONPATH=str(source))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            "serve",
            *loopback_arguments(repo, ports),
            *([] if "--workers" in extra else ["--workers", "1"]),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=source,
        env=env,
    )
    wait_until_live(ServerProcess(process, *ports, Path(log.name)), ready=True)
    return process, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"


def rss_mb(pid: int) -> dict[str, Any]:
    """Resident memory of the server process and of its children (the workers of `--workers N`,
    Python-model processes), in MB, and their total."""

    def one(process: int) -> float:
        for line in Path(f"/proc/{process}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(c) for c in children_file.read_text().split()] if children_file.exists() else []
    sizes = {"server": one(pid), "children": [one(child) for child in children]}
    sizes["total"] = round(sizes["server"] + sum(sizes["children"]), 1)
    return sizes


def fastapi_baseline(model_path: Path, body: Path, seconds: float) -> dict[str, float]:
    from tests.support.server_process import free_port

    port = free_port()
    env = dict(os.environ, FERRY_BASELINE_MODEL=str(model_path), OMP_NUM_THREADS="2")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.fastapi_baseline:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        return wrk(
            f"http://127.0.0.1:{port}/predict",
            body,
            64,
            seconds,
            {"Content-Type": "application/json"},
        )
    finally:
        process.terminate()
        process.wait()


def transport_floor(
    payloads: dict[str, Path], header_length: str, seconds: float
) -> dict[str, dict[str, float]]:
    """c=64 against the bare stacks (canned responses): the most ferry could reach on them."""
    from tests.support.server_process import free_port

    floors: dict[str, dict[str, float]] = {}
    for kind in ("http", "grpc"):
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "bench.transport_floor", kind, str(port)])
        try:
            _wait_for_port(port)
            if kind == "grpc":
                floors["grpc"] = grpc_load(f"127.0.0.1:{port}", payloads["grpc"], 64, seconds)
            else:
                floors["http-binary"] = wrk(
                    f"http://127.0.0.1:{port}/v2/models/mlp/infer",
                    payloads["http-binary"],
                    64,
                    seconds,
                    {"Inference-Header-Content-Length": header_length},
                )
        finally:
            process.terminate()
            process.wait()
    return floors


def _wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def prepare_artifacts() -> tuple[Path, Path]:
    """bench/artifacts/: the exported model repository and the payload folder."""
    ARTIFACTS.mkdir(exist_ok=True)
    repo = ARTIFACTS / "repository"
    build_repository(repo)
    payload_dir = ARTIFACTS / "payloads"
    payload_dir.mkdir(exist_ok=True)
    return repo, payload_dir


def without_thread_counts(repo: Path) -> Path:
    """A copy of the repository whose configs name no intra_op_thread_count."""
    copy = ARTIFACTS / "repository-thread-share"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repo, copy)
    for config in copy.glob("*/config.pbtxt"):
        lines = config.read_text().splitlines(keepends=True)
        config.write_text("".join(line for line in lines if "intra_op_thread_count" not in line))
    return copy


def load(
    http_url: str,
    grpc_url: str,
    model: str,
    protocol: str,
    concurrency: int,
    seconds: float,
    payloads: dict[str, Path],
    header_length: str,
) -> dict[str, float]:
    """One measurement: `concurrency` clients of one protocol against one server."""
    if protocol == "grpc":
        return grpc_load(grpc_url, payloads[protocol], concurrency, seconds)
    headers = (
        {"Inference-Header-Content-Length": header_length} if protocol == "http-binary" else {}
    )
    return wrk(
        f"http://{http_url}/v2/models/{model}/infer",
        payloads[protocol],
        concurrency,
        seconds,
        headers,
    )


def loop_lag_counts(metrics_url: str) -> dict[float, float]:
    """Cumulative `ferry_event_loop_lag_seconds` bucket counts by upper bound (--loop-lag-probe)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics") as response:
        text = response.read().decode()
    pattern = r'^ferry_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$'
    return {float(le): float(count) for le, count in re.findall(pattern, text, re.M)}


def stalls(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Loop stalls during one run: how many lasted over 10 ms, and the longest one's bucket."""
    bounds = sorted(after)
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in bounds}
    total = delta[bounds[-1]] if bounds else 0.0
    longest_le = next((b for b in bounds if delta[b] >= total), float("nan")) if total else 0.0
    return {
        "loop_gaps_over_10ms": total - delta.get(0.01, total),
        "longest_loop_gap_le_ms": longest_le * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--models", nargs="+", default=["mlp", "encoder"])
    parser.add_argument(
        "--triton",
        choices=["auto", "on", "off"],
        default="auto",
        help="also measure the real tritonserver of the nvidia-pytriton wheel (auto: if installed)",
    )
    parser.add_argument("--serve-args", default="", help="extra `ferry serve` flags")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="`ferry serve --workers N`: serving processes sharing the ports (rows 'ferryxN'); "
        "0, the server's default: one per CPU (on one CPU, or with 1: one process, rows 'ferry')",
    )
    parser.add_argument(
        "--worker-threads",
        choices=["config", "share"],
        default="config",
        help="config: the models' tuned intra_op_thread_count (for one process); share: none, "
        "so each of N workers takes CPUs / N threads (ferry's default for such configs)",
    )
    args = parser.parse_args()
    workers = args.workers or auto_workers()
    repo, payload_dir = prepare_artifacts()
    served_repo = repo if args.worker_threads == "config" else without_thread_counts(repo)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": os.getloadavg()[0]},
        "workers": workers,
        "models": {},
    }
    protocols = ("http-binary", "http-json", "grpc")
    label = "ferry" if workers == 1 else f"ferryx{workers}"
    process, http_url, grpc_url, metrics_url = serve(
        served_repo,
        [
            "--no-drift",
            "--loop-lag-probe",
            "--workers",
            str(workers),
            *args.serve_args.split(),
        ],
    )
    try:
        for model in args.models:
            model_path = repo / model / "1" / "model.onnx"
            reference = InProcessReference(model_path, model)
            sweep = reference.sweep(seconds=2.0)
            payloads = write_payloads(model, payload_dir)
            header_length = (payload_dir / f"{model}.bin.len").read_text()
            runs: dict[str, Any] = {}
            for protocol in protocols:
                for concurrency in args.concurrency:
                    probes = [reference.probe(PROBE_SECONDS)]
                    before, lag_before = model_stats(http_url, model), loop_lag_counts(metrics_url)
                    result = load(
                        http_url,
                        grpc_url,
                        model,
                        protocol,
                        concurrency,
                        args.seconds,
                        payloads,
                        header_length,
                    )
                    after, lag_after = model_stats(http_url, model), loop_lag_counts(metrics_url)
                    result.update(stalls(lag_before, lag_after))
                    probes.append(reference.probe(PROBE_SECONDS))
                    result["reference"] = {
                        key: float(np.mean([probe[key] for probe in probes]))
                        for key in ("ceiling_rows_per_s", "p50_ms")
                    }
                    result["reference_spread"] = {
                        key: abs(probes[0][key] - probes[1][key]) / result["reference"][key]
                        for key in ("ceiling_rows_per_s", "p50_ms")
                    }
                    executions = max(after[1] - before[1], 1)
                    result["mean_batch"] = (after[0] - before[0]) / executions
                    # gRPC requests still in flight when the load generator stops are cancelled
                    # and counted as failures by the server: report them, don't call them errors
                    result["server_failures"] = after[2] - before[2]
                    runs[f"{protocol}@{concurrency}"] = result
                    print_row(label, model, protocol, concurrency, result)
            report["models"][model] = {"in_process": sweep, "server": runs}
        report["rss_mb"] = rss_mb(process.pid)
        print(f"{label} resident memory (MB): {report['rss_mb']}", flush=True)
    finally:
        process.terminate()
        process.wait()
    triton_missing = None if args.triton == "off" else unavailable_reason()
    if args.triton == "on" and triton_missing:
        raise SystemExit(f"--triton on: {triton_missing}")
    if args.triton != "off" and not triton_missing:
        measure_triton(repo, args, payload_dir, report)
    elif args.triton == "auto":
        print(f"(no Triton rows: {triton_missing})")
    if "mlp" in args.models:
        body = payload_dir / "mlp.baseline.json"
        body.write_bytes(json.dumps({"inputs": sample_input("mlp").tolist()}).encode())
        report["models"]["mlp"]["fastapi_baseline"] = fastapi_baseline(
            repo / "mlp" / "1" / "model.onnx", body, args.seconds
        )
        report["models"]["mlp"]["transport_floor"] = transport_floor(
            write_payloads("mlp", payload_dir),
            (payload_dir / "mlp.bin.len").read_text(),
            args.seconds,
        )
    report["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
    (ARTIFACTS / "serving.json").write_text(json.dumps(report, indent=2))
    print_ratios(report, max(args.concurrency))


def measure_triton(
    repo: Path, args: argparse.Namespace, payload_dir: Path, report: dict[str, Any]
) -> None:
    """The same rows against the real tritonserver (same machine, same run)."""
    with running_triton(repo, args.models) as triton:
        http_url = f"127.0.0.1:{triton.http_port}"
        grpc_url = f"127.0.0.1:{triton.grpc_port}"
        for model in args.models:
            payloads = write_payloads(model, payload_dir)
            header_length = (payload_dir / f"{model}.bin.len").read_text()
            runs: dict[str, Any] = {}
            for protocol in ("http-binary", "http-json", "grpc"):
                for concurrency in args.concurrency:
                    before = model_stats(http_url, model)
                    result = load(
                        http_url,
                        grpc_url,
                        model,
                        protocol,
                        concurrency,
                        args.seconds,
                        payloads,
                        header_length,
                    )
                    after = model_stats(http_url, model)
                    result["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    runs[f"{protocol}@{concurrency}"] = result
                    print_row("triton", model, protocol, concurrency, result)
            report["models"][model]["triton"] = runs


def print_row(
    server: str, model: str, protocol: str, concurrency: int, result: dict[str, Any]
) -> None:
    line = (
        f"{server:7s} {model:8s} {protocol:12s} c={concurrency:<3d} "
        f"{result['req_per_s']:9.0f} req/s  p50 {result['p50_ms']:6.2f}"
        f"  p90 {result['p90_ms']:6.2f}  p99 {result['p99_ms']:6.2f}"
        f"  p99.9 {result['p999_ms']:6.2f} ms"
        f"  batch {result['mean_batch']:5.1f}  errors {result['errors']:.0f}"
    )
    if "longest_loop_gap_le_ms" in result:
        line += (
            f"  stalls: {result['loop_gaps_over_10ms']:.0f} over 10 ms, longest <= "
            f"{result['longest_loop_gap_le_ms']:.0f} ms"
        )
    print(line, flush=True)


def print_ratios(report: dict[str, Any], top: int) -> None:
    print("\n=== ratios (same machine, same run) ===")
    for model, data in report["models"].items():
        sweep = data["in_process"]
        print(
            f"{model}: in-process ceiling {sweep['ceiling_rows_per_s']:.0f} rows/s "
            f"({sweep['best']}), batch-1 p50 {sweep['p50_ms']:.2f} ms; each ratio below uses "
            "the reference re-measured just before and after that run (drift in brackets)"
        )
        for protocol in ("grpc", "http-binary", "http-json"):
            run = data["server"].get(f"{protocol}@{top}")
            if run:
                ceiling = run["reference"]["ceiling_rows_per_s"]
                drift = run["reference_spread"]["ceiling_rows_per_s"]
                print(
                    f"  {protocol:12s} c={top}: {run['req_per_s'] / ceiling:5.2f} x ceiling "
                    f"{ceiling:.0f} rows/s (drift {drift:.0%}), "
                    f"mean batch {run['mean_batch']:.1f}"
                )
            single = data["server"].get(f"{protocol}@1")
            if single:
                base = single["reference"]["p50_ms"]
                print(
                    f"  {protocol:12s} c=1: p50 {single['p50_ms']:.2f} ms = in-process "
                    f"{base:.2f} + {single['p50_ms'] - base:.2f} ms "
                    f"(drift {single['reference_spread']['p50_ms']:.0%})"
                )
        triton = data.get("triton", {})
        for protocol in ("http-json", "http-binary", "grpc"):
            for concurrency in sorted({1, top}):
                ours, theirs = (
                    data["server"].get(f"{protocol}@{concurrency}"),
                    triton.get(f"{protocol}@{concurrency}"),
                )
                if ours and theirs:
                    speed = ours["req_per_s"] / theirs["req_per_s"]
                    print(
                        f"  {protocol:12s} c={concurrency}: {speed:5.2f}"
                        f" x Triton's req/s ({theirs['req_per_s']:.0f}); p50 "
                        f"{ours['p50_ms']:.2f} vs {theirs['p50_ms']:.2f} ms, p99 "
                        f"{ours['p99_ms']:.2f} vs {theirs['p99_ms']:.2f} ms "
                        f"({ours['p99_ms'] / theirs['p99_ms']:.2f} x Triton's p99, "
                        f"{ours['p99_ms'] / ours['p50_ms']:.2f} x ferry's own p50)"
                    )
        if model == "encoder" and not triton:
            print(f"  (Triton 2.51 python backend, JSON c=64: {TRITON_ENCODER_RATIO} x ceiling)")
        if "fastapi_baseline" in data:
            base = data["fastapi_baseline"]["req_per_s"]
            for protocol in ("http-json", "http-binary", "grpc"):
                run = data["server"].get(f"{protocol}@{top}")
                if run:
                    print(
                        f"  {protocol:12s} c={top}: {run['req_per_s'] / base:5.2f} x "
                        f"hand-written FastAPI ({base:.0f} req/s)"
                        + (
                            ""
                            if triton
                            else f"; {run['req_per_s'] / TRITON_MLP_REQS:4.2f} x the "
                            f"{TRITON_MLP_REQS} req/s a Triton 2.51 ONNX backend served in issue #2"
                        )
                    )
        for protocol, floor in data.get("transport_floor", {}).items():
            run = data["server"].get(f"{protocol}@64")
            if run:
                print(
                    f"  {protocol:12s} c=64: {run['req_per_s'] / floor['req_per_s']:5.2f} x "
                    f"the bare transport answering a canned response "
                    f"({floor['req_per_s']:.0f} req/s)"
                )


if __name__ == "__main__":
    main()
