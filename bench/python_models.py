"""Python models, ensembles and BLS: what the code around a model costs in ferry.

    python -m bench.python_models [--seconds S] [--parts identity ensemble bls] [--workers N]
        [--serve-args=...]

Every part serves with `ferry serve --workers N` (0, the server's default: one per CPU).

identity  A Python model that returns its input (FP32 [16], dynamic batching, one instance) at
          concurrency 64 over HTTP (wrk) and gRPC (h2load), served by ferry and by the real
          Triton of the nvidia-pytriton wheel from the same folder, in the same run.
          Target: ferry >= 1.0 x Triton.
ensemble  The encoder example behind its text pipeline (tokenizer step -> encoder -> label step,
          an ensemble) at concurrency 64 against the encoder alone fed pre-tokenized input, same
          server, alternating rounds (best kept), with the CPU per request of each and the rows
          per execution of each step. Target: >= 0.8 x.
bls       The cost of one BLS call: a Python model makes K sequential `exec()` calls to a tiny
          ONNX model per request; the per-call cost is the latency slope over K (c=1), printed
          beside a client's direct call to the same model.

Prints ratios; writes bench/artifacts/python_models.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import build_repository
from bench.serving import ARTIFACTS, grpc_load, model_stats, wrk

IDENTITY_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy())])
            for r in requests]
"""
IDENTITY_CONFIG = """backend: "python"
max_batch_size: 64
input [{ name: "INPUT" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "OUTPUT" data_type: TYPE_FP32 dims: [16] }]
dynamic_batching { }
instance_group [{ kind: KIND_CPU count: 1 }]
"""
BLS_LOOP_PY = """\
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            calls = int(json.loads(request.parameters()).get("calls", 0))
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            for _ in range(calls):
                answer = pb_utils.InferenceRequest(
                    model_name="mlp", requested_output_names=["output"],
                    inputs=[pb_utils.Tensor("x", x)]).exec()
                if answer.has_error():
                    raise pb_utils.TritonModelException(answer.error().message())
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", x)]))
        return responses
"""
BLS_LOOP_CONFIG = """backend: "python"
max_batch_size: 0
input [{ name: "INPUT" data_type: TYPE_FP32 dims: [1, 64] }]
output [{ name: "OUTPUT" data_type: TYPE_FP32 dims: [1, 64] }]
"""
# ONNX Runtime's intra-op threads spin between runs by default: beside the Python steps' processes
# and the event loop on 2 cores they take the CPU those need (bench/sequence_batching.py likewise)
NO_SPINNING = 'parameters { key: "session.intra_op.allow_spinning" value: { string_value: "0" } }\n'
TEXT = b"the sky is blue and the sea is blue but a red sun is red"


def write_python(repository: Path, name: str, source: str, config: str) -> None:
    (repository / name / "1").mkdir(parents=True, exist_ok=True)
    (repository / name / "1" / "model.py").write_text(source)
    (repository / name / "config.pbtxt").write_text(config)


def http_binary_body(folder: Path, name: str, array: np.ndarray, datatype: str) -> Path:
    """A single-request HTTP body with the binary extension; its header length beside it."""
    if datatype == "BYTES":  # each element: its 4-byte little-endian length, then its bytes
        data = b"".join(len(item).to_bytes(4, "little") + item for item in array.reshape(-1))
    else:
        data = array.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path = folder / f"{name}-{datatype}.bin"
    path.write_bytes(header + data)
    path.with_suffix(".len").write_text(str(len(header)))
    return path


def grpc_body(folder: Path, model: str, name: str, array: np.ndarray, datatype: str) -> Path:
    from tritonclient.grpc import service_pb2

    message = service_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
    message.raw_input_contents.append(array.tobytes())
    path = folder / f"{model}.grpc"
    path.write_bytes(message.SerializeToString())
    return path


def load(http_url: str, model: str, body: Path, seconds: float) -> dict[str, float]:
    header = body.with_suffix(".len").read_text()
    before = model_stats(http_url, model)
    result = wrk(
        f"http://{http_url}/v2/models/{model}/infer",
        body,
        64,
        seconds,
        {"Inference-Header-Content-Length": header},
        timeout_s=30.0,  # a compute-bound model on a busy machine: count slow answers too
    )
    after = model_stats(http_url, model)
    result["server_failures"] = after[2] - before[2]
    return result


def identity_part(
    folder: Path, seconds: float, rounds: int = 2, workers: int = 0, serve_args: str = ""
) -> dict[str, Any]:
    """ferry (`--workers workers`: the model's owner runs its one instance process, or with
    `serve_args` --no-shared-batching each worker its own) vs the real Triton
    on one Python identity model, c=64, HTTP and gRPC. Both servers run side by side and the
    measurements alternate between them (`rounds` each, best kept): this shared machine's speed
    drifts within minutes. ferry's transport floor is measured in the same rounds, to show how
    much of its stack the Python model path keeps."""
    from tests.support.server_process import running_server
    from tests.support.triton_server import missing_reason, running_tritonserver

    repository = folder / "identity_repository"
    shutil.rmtree(repository, ignore_errors=True)
    write_python(repository, "identity", IDENTITY_PY, IDENTITY_CONFIG)
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    http_body = http_binary_body(folder, "INPUT", x, "FP32")
    grpc = grpc_body(folder, "identity", "INPUT", x, "FP32")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    reason = missing_reason()
    if reason is not None:
        print(f"identity: no Triton to compare with ({reason})")
    with contextlib.ExitStack() as stack:
        servers = {
            "ferry": stack.enter_context(
                running_server(repository, "--workers", str(workers), *serve_args.split())
            )
        }
        if reason is None:
            servers["triton"] = stack.enter_context(running_tritonserver(repository))
        floors = {kind: stack.enter_context(transport_floor(kind)) for kind in ("http", "grpc")}
        for server in servers.values():
            load(server.http_url, "identity", http_body, 1.0)  # warm-up
        for _ in range(rounds):
            for name, server in servers.items():
                measured = runs.setdefault(name, {})
                measured.setdefault("http-binary@64", []).append(
                    with_cpu_cost(
                        server,
                        lambda s=server: load(s.http_url, "identity", http_body, seconds),
                    )
                )
                measured.setdefault("grpc@64", []).append(
                    with_cpu_cost(server, lambda s=server: grpc_load(s.grpc_url, grpc, 64, seconds))
                )
            measured = runs.setdefault("ferry transport floor", {})
            header = {"Inference-Header-Content-Length": http_body.with_suffix(".len").read_text()}
            measured.setdefault("http-binary@64", []).append(
                wrk(
                    f"http://{floors['http']}/v2/models/identity/infer",
                    http_body,
                    64,
                    seconds,
                    header,
                )
            )
            measured.setdefault("grpc@64", []).append(grpc_load(floors["grpc"], grpc, 64, seconds))
    results: dict[str, Any] = {}
    for name, measured in runs.items():
        results[name] = {}
        for kind, tries in measured.items():
            best = max(tries, key=lambda run: run["req_per_s"])
            best["all_req_per_s"] = [run["req_per_s"] for run in tries]
            results[name][kind] = best
            cost = min((run.get("cpu_ms_per_1000", math.inf) for run in tries), default=math.inf)
            best["best_cpu_ms_per_1000"] = cost
            print(
                f"identity {name:21s} {kind:15s} {best['req_per_s']:8.0f} req/s  "
                f"p50 {best['p50_ms']:6.2f} ms  p99 {best['p99_ms']:6.2f} ms  "
                f"(rounds: {', '.join(f'{r:.0f}' for r in best['all_req_per_s'])})"
                + (f"  CPU {cost:.0f} ms / 1000 requests" if math.isfinite(cost) else ""),
                flush=True,
            )
    if "triton" in results:
        for kind in ("http-binary@64", "grpc@64"):
            cost = (
                results["triton"][kind]["best_cpu_ms_per_1000"]
                / results["ferry"][kind]["best_cpu_ms_per_1000"]
            )
            results[f"cpu efficiency {kind}"] = cost
            print(
                f"identity {kind}: Triton's CPU per request / ferry's = {cost:.2f} x "
                "(above 1: ferry spends less CPU per request; robust to a busy machine)"
            )
            ratio = results["ferry"][kind]["req_per_s"] / max(
                results["triton"][kind]["req_per_s"], 1e-9
            )
            results[f"ratio {kind}"] = ratio
            print(f"identity {kind}: ferry / Triton = {ratio:.2f} x (target >= 1.0)")
    return results


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and all its descendants have used so far."""
    total, pending = 0.0, [pid]
    ticks = os.sysconf("SC_CLK_TCK")
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def with_cpu_cost(
    server: Any, measure: Callable[[], dict[str, float]], model: str = "identity"
) -> dict[str, float]:
    """Run one measurement and add the server's CPU cost per 1,000 answered requests of `model`
    (its own and its model processes'): on a shared machine this, unlike requests/s, does not
    depend on how much CPU the other tenants leave."""
    before_cpu = process_tree_cpu_s(server.process.pid)
    before = model_stats(server.http_url, model)
    result = measure()
    answered = model_stats(server.http_url, model)[0] - before[0]
    used = process_tree_cpu_s(server.process.pid) - before_cpu
    if answered > 0:
        result["cpu_ms_per_1000"] = used * 1e6 / answered
    return result


@contextlib.contextmanager
def transport_floor(kind: str) -> Iterator[str]:
    """ferry's HTTP or gRPC stack answering a canned response (bench/transport_floor.py): the
    most a model served on it could reach on this machine, measured in the same run."""
    from bench.serving import _wait_for_port
    from tests.support.server_process import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.transport_floor", kind, str(port)])
    try:
        _wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def pipeline_repository(folder: Path) -> Path:
    """The bench's encoder (as `make bench` serves it) plus the example text pipeline."""
    from examples.pipelines import write_pipelines

    shared = ARTIFACTS / "repository"
    build_repository(shared)
    repository = folder / "pipeline_repository"
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    shutil.copytree(shared / "encoder", repository / "encoder")
    encoder = repository / "encoder" / "config.pbtxt"  # it shares the 2 cores with the steps
    encoder.write_text(encoder.read_text() + NO_SPINNING)
    shutil.copytree(shared / "mlp", repository / "mlp")
    write_pipelines(repository, ["encoder"])
    ensemble = repository / "encoder_text" / "config.pbtxt"  # the bench export names it "output"
    ensemble.write_text(
        ensemble.read_text().replace(
            'output_map { key: "probabilities"', 'output_map { key: "output"'
        )
    )
    write_python(repository, "bls_loop", BLS_LOOP_PY, BLS_LOOP_CONFIG)
    return repository


def ensemble_part(
    repository: Path, folder: Path, seconds: float, flags: list[str], rounds: int = 3
) -> dict[str, Any]:
    """encoder_text (tokenizer -> encoder -> label) vs the encoder fed token ids, c=64, on
    `ferry serve` with `flags`. The two
    measurements alternate (`rounds` each, best kept): this shared machine's speed drifts within
    seconds, and one pair measured once can read anywhere from 0.6 to 1.3 x. Each round also
    records the server's CPU per 1,000 requests, and the run ends with how many rows each step's
    executions held (the Python steps batch the ensemble's requests through their own dynamic
    batchers)."""
    from tests.support.server_process import running_server

    tokens = np.random.default_rng(0).integers(5, 32, (1, 64)).astype(np.int64)
    bodies = {
        "encoder": http_binary_body(folder, "tokens", tokens, "INT64"),
        "encoder_text": http_binary_body(folder, "TEXT", np.array([[TEXT]], np.object_), "BYTES"),
    }
    steps = ("encoder_tokenize", "encoder", "encoder_label")
    tries: dict[str, list[dict[str, Any]]] = {model: [] for model in bodies}
    results: dict[str, Any] = {}
    with running_server(repository, "--no-drift", *flags) as server:
        for model, body in bodies.items():
            load(server.http_url, model, body, 1.0)  # warm-up
        step_rows = dict.fromkeys(steps, (0, 0))  # (rows, executions) in encoder_text's rounds
        for _ in range(rounds):
            for model, body in bodies.items():
                before = {step: model_stats(server.http_url, step) for step in steps}

                def measure(model: str = model, body: Path = body) -> dict[str, float]:
                    return load(server.http_url, model, body, seconds)

                tries[model].append(with_cpu_cost(server, measure, model))
                if model == "encoder_text":
                    for step in steps:
                        after = model_stats(server.http_url, step)
                        rows, executions = step_rows[step]
                        step_rows[step] = (
                            rows + after[0] - before[step][0],
                            executions + after[1] - before[step][1],
                        )
    for model, runs in tries.items():
        best = max(runs, key=lambda run: run["req_per_s"])
        best["all_req_per_s"] = [run["req_per_s"] for run in runs]
        best["best_cpu_ms_per_1000"] = min(
            (run.get("cpu_ms_per_1000", math.inf) for run in runs), default=math.inf
        )
        results[model] = best
        print(
            f"ensemble {model:13s} http-binary@64 {best['req_per_s']:7.0f} req/s  "
            f"p50 {best['p50_ms']:6.2f} ms  p99 {best['p99_ms']:6.2f} ms  "
            f"failures {sum(run['server_failures'] + run['errors'] for run in runs):.0f}  "
            f"(rounds: {', '.join(f'{r:.0f}' for r in best['all_req_per_s'])})  "
            f"CPU {best['best_cpu_ms_per_1000']:.0f} ms / 1000 requests",
            flush=True,
        )
    results["steps"] = {}
    for step, (rows, executions) in step_rows.items():
        results["steps"][step] = {"rows": rows, "executions": executions}
        print(
            f"ensemble step {step:17s} {rows:6d} rows in {executions:5d} executions "
            f"({rows / max(executions, 1):5.1f} rows per execution) in encoder_text's rounds"
        )
    ratio = results["encoder_text"]["req_per_s"] / max(results["encoder"]["req_per_s"], 1e-9)
    results["ratio"] = ratio
    cost = (
        results["encoder"]["best_cpu_ms_per_1000"] / results["encoder_text"]["best_cpu_ms_per_1000"]
    )
    results["cpu ratio"] = cost
    print(
        f"ensemble: encoder_text / encoder alone = {ratio:.2f} x (target >= 0.8); CPU per "
        f"request, encoder alone / encoder_text = {cost:.2f} x (robust to a busy machine)"
    )
    return results


def bls_part(repository: Path, flags: list[str], requests: int = 300) -> dict[str, Any]:
    """µs per BLS call (latency slope over K calls per request) and a direct client call, on
    `ferry serve` with `flags`."""
    import tritonclient.http as httpclient

    from tests.support.server_process import running_server

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)

    def p50_us(client: Any, model: str, name: str, parameters: dict[str, int] | None) -> float:
        tensor = httpclient.InferInput(name, [1, 64], "FP32")
        tensor.set_data_from_numpy(x)
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.infer(model, [tensor], parameters=parameters)
            times.append(time.perf_counter() - start)
        return float(np.percentile(np.array(times[requests // 10 :]) * 1e6, 50))

    results: dict[str, Any] = {}
    with running_server(repository, "--no-drift", *flags) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for calls in (0, 20, 0, 20):  # interleaved: the machine's speed drifts
            results.setdefault(f"bls_loop K={calls} p50_us", []).append(
                p50_us(client, "bls_loop", "INPUT", {"calls": calls})
            )
        results["direct mlp p50_us"] = p50_us(client, "mlp", "x", None)
    k0 = min(results["bls_loop K=0 p50_us"])
    k20 = min(results["bls_loop K=20 p50_us"])
    per_call = (k20 - k0) / 20
    results["bls_call_us"] = per_call
    print(
        f"bls: {per_call:.0f} us per exec() call from a Python model into the ONNX mlp "
        f"(through its scheduler); a client's direct HTTP call to mlp: "
        f"{results['direct mlp p50_us']:.0f} us p50 (c=1)"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="ferry serve --workers (0, the server's default: one per CPU; 1: one process)",
    )
    parser.add_argument(
        "--serve-args",
        default="",
        help="extra `ferry serve` flags, e.g. --serve-args=--no-shared-batching",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["identity", "ensemble", "bls"],
        choices=["identity", "ensemble", "bls"],
    )
    args = parser.parse_args()
    folder = ARTIFACTS / "python_models"
    folder.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    if "identity" in args.parts:
        report["identity"] = identity_part(
            folder, args.seconds, workers=args.workers, serve_args=args.serve_args
        )
    if "ensemble" in args.parts or "bls" in args.parts:
        repository = pipeline_repository(folder)
        flags = ["--workers", str(args.workers), *args.serve_args.split()]
        if "ensemble" in args.parts:
            report["ensemble"] = ensemble_part(repository, folder, args.seconds, flags)
        if "bls" in args.parts:
            report["bls"] = bls_part(repository, flags)
    (ARTIFACTS / "python_models.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
