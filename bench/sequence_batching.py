"""`make bench-sequence`: a GRU step model with 64 concurrent sequences served by ferry's
sequence batcher (implicit state kept by the server) against in-process ONNX Runtime running the
same steps batched 64 at a time with the state carried by hand (the physical limit).

The load: wrk (compiled, its own process) with a Lua script that keeps 64 sequences going, one
request per connection at a time: a sequence's next step is sent only after its previous answer
came back (any connection may carry it), each sequence is SEQUENCE_STEPS long and then a new one
starts. HTTP with the binary tensor extension. Alternating rounds: the in-process reference is
measured right before and after each server round (this shared machine's speed drifts) and the
ratio uses their mean (`--baseline TREE` measures a second server, from another source tree, in
the same rounds). The real Triton (nvidia-pytriton's `tritonserver`, `--triton auto|on|off`)
serves the same GRU step through its sequence batcher, in the same rounds with the same wrk load:
a Python-backend model running the same model.onnx with onnxruntime, keeping each sequence's state
itself by correlation id (bench/triton_sequence.py). Every server's answers are checked against
in-process ONNX Runtime before timing. Target: steps/s >= 0.8 x in-process. Writes
bench/artifacts/sequence_batching.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.serving import ARTIFACTS, model_stats, serve
from bench.triton_reference import unavailable_reason
from bench.triton_sequence import write_repository as write_triton_repository
from tests.support.triton_server import running_tritonserver

CONCURRENCY = 64
INPUT_SIZE = 64
OUTPUT_SIZE = 16
SEQUENCE_STEPS = 200
IDLE_US = 1_000_000  # max_sequence_idle_microseconds of both servers
TARGET = 0.8
# ONNX Runtime's intra-op threads spin between runs by default: on a machine with few cores they
# take the CPU the server's event loop needs to answer the other half of the sequences
DEFAULT_PARAMETERS = ("session.intra_op.allow_spinning=0",)


def gru_step_model(hidden: int, seed: int = 0) -> onnx.ModelProto:
    """One GRU step, batch-first: (INPUT [B, I], STATE_IN [B, H]) -> (OUTPUT [B, O], STATE_OUT)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((INPUT_SIZE, 3 * hidden)) / np.sqrt(INPUT_SIZE)).astype(np.float32)
    u = (rng.standard_normal((hidden, 3 * hidden)) / np.sqrt(hidden)).astype(np.float32)
    b = np.zeros(3 * hidden, np.float32)
    v = (rng.standard_normal((hidden, OUTPUT_SIZE)) / np.sqrt(hidden)).astype(np.float32)
    split = np.array([hidden, hidden, hidden], np.int64)
    nodes = [
        helper.make_node("MatMul", ["INPUT", "w"], ["xw0"]),
        helper.make_node("Add", ["xw0", "b"], ["xw"]),
        helper.make_node("MatMul", ["STATE_IN", "u"], ["hu"]),
        helper.make_node("Split", ["xw", "split"], ["xz", "xr", "xn"], axis=1),
        helper.make_node("Split", ["hu", "split"], ["hz", "hr", "hn"], axis=1),
        helper.make_node("Add", ["xz", "hz"], ["z0"]),
        helper.make_node("Sigmoid", ["z0"], ["z"]),
        helper.make_node("Add", ["xr", "hr"], ["r0"]),
        helper.make_node("Sigmoid", ["r0"], ["r"]),
        helper.make_node("Mul", ["r", "hn"], ["rhn"]),
        helper.make_node("Add", ["xn", "rhn"], ["n0"]),
        helper.make_node("Tanh", ["n0"], ["n"]),
        helper.make_node("Sub", ["STATE_IN", "n"], ["hmn"]),
        helper.make_node("Mul", ["z", "hmn"], ["zhmn"]),
        helper.make_node("Add", ["n", "zhmn"], ["STATE_OUT"]),  # (1 - z) n + z h
        helper.make_node("MatMul", ["STATE_OUT", "v"], ["OUTPUT"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gru_step",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", INPUT_SIZE]),
            helper.make_tensor_value_info("STATE_IN", TensorProto.FLOAT, ["batch", hidden]),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", OUTPUT_SIZE]),
            helper.make_tensor_value_info("STATE_OUT", TensorProto.FLOAT, ["batch", hidden]),
        ],
        initializer=[
            numpy_helper.from_array(array, name)
            for array, name in ((w, "w"), (u, "u"), (b, "b"), (v, "v"), (split, "split"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_repository(
    root: Path, hidden: int, parameters: dict[str, str] | None = None, direct: str = ""
) -> Path:
    model_dir = root / "gru"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(gru_step_model(hidden), str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(
        f"""max_batch_size: {CONCURRENCY}
input [{{ name: "INPUT" data_type: TYPE_FP32 dims: [{INPUT_SIZE}] }}]
output [{{ name: "OUTPUT" data_type: TYPE_FP32 dims: [{OUTPUT_SIZE}] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
{_parameters(parameters or {})}
sequence_batching {{
  max_sequence_idle_microseconds: {IDLE_US}
  direct {{ {direct} }}
  state [{{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32
            dims: [{hidden}] initial_state {{ name: "zeros" data_type: TYPE_FP32
            dims: [{hidden}] zero_data: true }} }}]
}}
"""
    )
    return root


def _parameters(parameters: dict[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
        for k, v in parameters.items()
    )


def check_answers(
    http_url: str, model_path: Path, hidden: int, sequences: int = 8, steps: int = 12
) -> None:
    """Before timing: `sequences` sequences of random steps, sent concurrently (one thread each,
    so the batcher mixes them), must each answer what ONNX Runtime gives stepping that sequence
    alone with the state carried by hand; raises otherwise."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort
    import tritonclient.http as httpclient

    rng = np.random.default_rng(3)
    inputs = rng.standard_normal((sequences, steps, 1, INPUT_SIZE)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    expected = np.empty((sequences, steps, 1, OUTPUT_SIZE), np.float32)
    for s in range(sequences):
        state = np.zeros((1, hidden), np.float32)
        for t in range(steps):
            expected[s, t], state = session.run(
                ["OUTPUT", "STATE_OUT"], {"INPUT": inputs[s, t], "STATE_IN": state}
            )

    def run(s: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(http_url)
        answers = []
        try:
            for t in range(steps):
                tensor = httpclient.InferInput("INPUT", [1, INPUT_SIZE], "FP32")
                tensor.set_data_from_numpy(inputs[s, t])
                result = client.infer(
                    "gru",
                    [tensor],
                    sequence_id=900_000_000 + s,
                    sequence_start=t == 0,
                    sequence_end=t == steps - 1,
                )
                answers.append(result.as_numpy("OUTPUT"))
        finally:
            client.close()
        return np.stack(answers)

    with ThreadPoolExecutor(sequences) as pool:
        got = np.stack(list(pool.map(run, range(sequences))))
    worst = float(np.max(np.abs(got - expected)))
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise SystemExit(f"{http_url}: wrong answers (max abs difference {worst:.2e})")
    print(f"{http_url}: {sequences} sequences x {steps} steps right (max abs diff {worst:.1e})")


def in_process_steps_per_s(model_path: Path, hidden: int, seconds: float) -> float:
    """ONNX Runtime (default session options, as the server's) stepping 64 sequences at once,
    the state carried by hand."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((CONCURRENCY, INPUT_SIZE)).astype(np.float32)
    state = np.zeros((CONCURRENCY, hidden), np.float32)
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        _, state = session.run(["OUTPUT", "STATE_OUT"], {"INPUT": x, "STATE_IN": state})
        runs += 1
    return runs * CONCURRENCY / (time.perf_counter() - started)


LUA = """
local payload
local counter = 0
local ready, head, tail = {}, 1, 0
local steps = {}
local next_sid = 0
local errors = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  local f = io.open("%(payload)s", "rb")
  payload = f:read("*all")
  f:close()
  next_sid = tonumber(args[1]) + tid * 10000000
end

local function new_sequence()
  next_sid = next_sid + 1
  steps[next_sid] = 0
  return next_sid
end

function request()
  local sid
  if head <= tail then
    sid = ready[head]
    ready[head] = nil
    head = head + 1
  else
    sid = new_sequence()
  end
  local t = steps[sid]
  local header = string.format(
    '{"id":"%%d","parameters":{"sequence_id":%%d,"sequence_start":%%s,"sequence_end":%%s,'
    .. '"binary_data_output":true},"inputs":[{"name":"INPUT","shape":[1,%(width)d],'
    .. '"datatype":"FP32","parameters":{"binary_data_size":%%d}}]}',
    sid, sid, tostring(t == 0), tostring(t == %(steps)d - 1), #payload)
  return wrk.format("POST", "/v2/models/gru/infer",
    {["Inference-Header-Content-Length"] = #header,
     ["Content-Type"] = "application/octet-stream"}, header .. payload)
end

function response(status, headers, body)
  local sid = tonumber(body:match('"id":"(%%d+)"'))
  if status ~= 200 or sid == nil or steps[sid] == nil then
    errors = errors + 1
    return
  end
  local t = steps[sid] + 1
  if t >= %(steps)d then
    steps[sid] = nil
    sid = new_sequence()
  else
    steps[sid] = t
  end
  tail = tail + 1
  ready[tail] = sid
end
"""


def wrk_sequences(http_url: str, seconds: float, base: int) -> dict[str, float]:
    """Run the sequence load; steps/s and non-2xx answers."""
    payload = np.random.default_rng(2).standard_normal((1, INPUT_SIZE)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        payload_path = Path(folder) / "payload.bin"
        payload_path.write_bytes(payload.tobytes())
        script = Path(folder) / "sequences.lua"
        script.write_text(
            LUA % {"payload": payload_path, "width": INPUT_SIZE, "steps": SEQUENCE_STEPS}
        )
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{CONCURRENCY}",
                f"-d{max(int(seconds), 1)}s",
                "--timeout",
                "5s",
                "-s",
                str(script),
                f"http://{http_url}",
                "--",
                str(base),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "steps_per_s": float(rate.group(1)) if rate else float("nan"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (>= 3)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=1024, help="GRU hidden size")
    parser.add_argument(
        "--parameter",
        action="append",
        default=list(DEFAULT_PARAMETERS),
        metavar="KEY=VALUE",
        help="a config.pbtxt parameter of the served model (e.g. intra_op_thread_count=1)",
    )
    parser.add_argument(
        "--direct",
        default="",
        metavar="FIELDS",
        help="the served model's `direct { }` strategy fields, e.g. 'max_queue_delay_microseconds:"
        " 10000 minimum_slot_utilization: 1.0' (Triton's tuning: wait for full batches)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`ferry serve --workers N` (every sequence in the model's owner, one sequence "
        "batcher; the other workers submit their steps there)",
    )
    parser.add_argument(
        "--serve-args",
        default="",
        help="extra `ferry serve` flags, e.g. --serve-args=--no-shared-batching (with --workers "
        "N: each worker loads the model and runs the sequences whose correlation IDs it owns)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also serve from the source tree TREE (e.g. a `git worktree` of main) and measure it "
        "in the same rounds, in alternating order",
    )
    parser.add_argument(
        "--triton",
        choices=["auto", "on", "off"],
        default="auto",
        help="also measure the real tritonserver of the nvidia-pytriton wheel serving the same GRU "
        "step through its sequence batcher (auto: if installed)",
    )
    args = parser.parse_args()
    args.seconds = max(args.seconds, 3.0)
    ARTIFACTS.mkdir(exist_ok=True)
    parameters = dict(item.split("=", 1) for item in args.parameter)
    repo = write_repository(ARTIFACTS / "sequence_repository", args.hidden, parameters, args.direct)
    model_path = repo / "gru" / "1" / "model.onnx"
    triton_missing = None if args.triton == "off" else unavailable_reason()
    if args.triton == "on" and triton_missing:
        raise SystemExit(f"--triton on: {triton_missing}")
    if args.triton == "auto" and triton_missing:
        print(f"(no Triton row: {triton_missing})")
    with contextlib.ExitStack() as stack:
        servers = {"served": _ferry(stack, repo, args.workers, args.serve_args, None, "serve.log")}
        if args.baseline is not None:
            servers["baseline"] = _ferry(
                stack,
                repo,
                args.workers,
                args.serve_args,
                args.baseline.resolve(),
                "serve-baseline.log",
            )
        if args.triton != "off" and not triton_missing:
            triton_repo = write_triton_repository(
                ARTIFACTS / "triton_sequence_repository",
                model_path,
                max_batch_size=CONCURRENCY,
                input_size=INPUT_SIZE,
                output_size=OUTPUT_SIZE,
                parameters=parameters,
                direct=args.direct,
                idle_us=IDLE_US,
            )
            servers["triton"] = stack.enter_context(running_tritonserver(triton_repo)).http_url
        rounds = measure_rounds(servers, model_path, args)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "model": {"hidden": args.hidden, "input": INPUT_SIZE, "output": OUTPUT_SIZE},
        "parameters": parameters,
        "concurrency": CONCURRENCY,
        "sequence_steps": SEQUENCE_STEPS,
        "rounds": rounds,
        "median_ratio": float(np.median([r["ratio"] for r in rounds])),
        "target": TARGET,
    }
    for label in ("baseline", "triton"):
        if label in servers:
            report[label] = {
                "median_ratio": float(np.median([r[label]["ratio"] for r in rounds])),
                "median_served_over": float(np.median([r[label]["served_over"] for r in rounds])),
            }
    if args.baseline is not None:
        report["baseline"]["tree"] = str(args.baseline)
    (ARTIFACTS / "sequence_batching.json").write_text(json.dumps(report, indent=2))
    ratio = report["median_ratio"]
    verdict = "meets" if ratio >= TARGET else "below"
    print(
        f"GRU step (hidden {args.hidden}), {CONCURRENCY} sequences: served / in-process = "
        f"{ratio:.2f} (median of {len(rounds)} rounds; target >= {TARGET}: {verdict})"
    )
    if "baseline" in report:
        base = report["baseline"]
        print(
            f"baseline {args.baseline}: {base['median_ratio']:.2f} of in-process; served / "
            f"baseline = {base['median_served_over']:.2f}"
        )
    if "triton" in report:
        triton = report["triton"]
        print(
            f"Triton (Python backend, state kept by model.py): {triton['median_ratio']:.2f} of "
            f"in-process; served / Triton = {triton['median_served_over']:.2f}"
        )


def _ferry(
    stack: contextlib.ExitStack,
    repo: Path,
    workers: int,
    serve_args: str,
    source: Path | None,
    log_name: str,
) -> str:
    """`ferry serve` of `repo`, stopped when `stack` closes; its HTTP address."""
    flags = ["--no-drift", "--workers", str(workers), *serve_args.split()]
    process, http_url, *_ = serve(repo, flags, source=source, log_name=log_name)

    def stop() -> None:
        process.terminate()
        process.wait()

    stack.callback(stop)
    return http_url


def measure_rounds(
    servers: dict[str, str], model_path: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Each round: in-process, every server (alternating order), in-process again; each
    server's answers are checked first. `servers`: label -> HTTP address, "served" first."""
    for http_url in servers.values():
        check_answers(http_url, model_path, args.hidden)
    # sequences a load run leaves open hold their slots until the idle time (1 s) passes:
    # each run is followed by an in-process measurement longer than that
    for http_url in servers.values():
        wrk_sequences(http_url, 1.0, base=0)  # warm-up
    time.sleep(1.5)
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        before = in_process_steps_per_s(model_path, args.hidden, args.seconds / 2)
        measured: dict[str, dict[str, float]] = {}
        order = list(servers) if index % 2 == 0 else list(servers)[::-1]
        for position, label in enumerate(order):
            if position:
                time.sleep(1.5)  # the previous server's open sequences go idle
            http_url = servers[label]
            stats_before = model_stats(http_url, "gru")
            served = wrk_sequences(http_url, args.seconds, base=(index + 1) * 100_000_000)
            stats_after = model_stats(http_url, "gru")
            executions = max(stats_after[1] - stats_before[1], 1)
            measured[label] = {
                **served,
                "mean_batch": (stats_after[0] - stats_before[0]) / executions,
                "server_failures": stats_after[2] - stats_before[2],
            }
        after = in_process_steps_per_s(model_path, args.hidden, args.seconds / 2)
        reference = (before + after) / 2
        row: dict[str, Any] = {
            **measured["served"],
            "in_process_steps_per_s": reference,
            "reference_drift": abs(before - after) / reference,
            "ratio": measured["served"]["steps_per_s"] / reference,
        }
        for label in ("baseline", "triton"):
            if label in measured:
                row[label] = {
                    **measured[label],
                    "ratio": measured[label]["steps_per_s"] / reference,
                    "served_over": measured["served"]["steps_per_s"]
                    / measured[label]["steps_per_s"],
                }
        rounds.append(row)
        print(
            f"round {index + 1}: served {row['steps_per_s']:8.0f} steps/s  in-process "
            f"{reference:8.0f} steps/s (drift {row['reference_drift']:.0%})  ratio "
            f"{row['ratio']:.2f}  mean batch {row['mean_batch']:.1f}  errors "
            f"{row['errors']:.0f}",
            flush=True,
        )
        for label in ("baseline", "triton"):
            if label in row:
                other = row[label]
                print(
                    f"         {label:8s} {other['steps_per_s']:8.0f} steps/s  ratio "
                    f"{other['ratio']:.2f}  mean batch {other['mean_batch']:.1f}  errors "
                    f"{other['errors']:.0f}  served / {label} {other['served_over']:.2f}",
                    flush=True,
                )
    return rounds


if __name__ == "__main__":
    main()
