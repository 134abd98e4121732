"""Chaos under load (`make chaos`; skipped unless FERRY_CHAOS_SECONDS is set): clients on fresh
connections (an ONNX model with dynamic batching, a Python-step ensemble, a BLS model, a sequence
model over HTTP and gRPC streams, the ONNX model over gRPC, clients that hang up mid-request)
while worker processes and Python instance processes are killed and models are reloaded and
unloaded. Run for each mode: one process, `--workers 2`,
`--workers 2 --shared-batching`.

What must hold: no request hangs, no answer is wrong, every error is one a client can expect
while something restarts or unloads (and a sequence fails only after its owner or instance went
away), and once the chaos stops the server is ready with every model answering on every
worker, nothing pending and no traceback in its log.

    FERRY_CHAOS_SECONDS=120 python -m pytest tests/integration/server/test_chaos.py
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.onnx_models import run_reference
from tests.support.python_models import write_bls, write_classifier_step, write_classify_pipeline
from tests.support.sequence_models import write_accumulator
from tests.support.server_process import ServerProcess, running_server
from tests.support.workers import fresh, metric_value, worker_pids

SECONDS = float(os.environ.get("FERRY_CHAOS_SECONDS", "0"))
pytestmark = pytest.mark.skipif(
    not SECONDS, reason="chaos runs on demand: FERRY_CHAOS_SECONDS=N (make chaos)"
)
MODELS = ("mlp", "scale", "label", "classify", "bls", "acc")
HANG_S = 25.0  # no request may take longer, whatever is being killed
WORKER_MIN_AGE_S = 15.0  # a worker is killed only once both have run this long (no crash loop)
# what a client may be answered while a process restarts or a model is unloaded
EXPECTED_ERRORS = (
    b"not running (it restarts)",
    b"model process is not running",
    b"stopped before it answered",
    b"is not ready",
    b"not ready",
    b"unavailable",
    b"UNAVAILABLE",
    b"unknown model",
    b"not found",
    b"was killed",
    b"exited",
)
# what a gRPC client is told when its connection's worker was killed
STREAM_ENDED = (
    b"StatusCode.UNAVAILABLE",
    b"Socket closed",
    b"Connection reset",
    # tritonclient, asked to send on a stream whose connection has just died
    b"stream is no longer in valid state",
    b"failed to connect",
)
Answer = tuple[int, bytes, float]  # status (0: connection failed or timed out), body, seconds


def post(port: int, path: str, body: dict[str, Any] | None, timeout_s: float = 30.0) -> Answer:
    """`fresh` (a new connection: any worker) to this server, with the time it took."""
    started = time.monotonic()
    status, answer = fresh(f"http://127.0.0.1:{port}{path}", body, timeout_s)
    return status, answer, time.monotonic() - started


def fp32(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": "FP32", "data": array.tolist()}


class Chaos:
    """The clients, the chaos and what they saw."""

    def __init__(self, server: ServerProcess, repository: Path, workers: bool) -> None:
        self.server, self.port, self.workers = server, server.http_port, workers
        self.mlp_path = repository / "mlp" / "1" / "model.onnx"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.actions: list[str] = []
        self.sequences_broken_at = 0.0  # when a sequence's owner or state last went away

    def note(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.counts[kind] += 1
            if kind.startswith("BAD"):
                self.problems.append(f"{time.strftime('%H:%M:%S')} {kind}: {detail[:400]}")

    def judge(self, name: str, answer: Answer, check: Callable[[Any], None] | None) -> None:
        status, body, elapsed = answer
        if elapsed > HANG_S:
            self.note("BAD hang", f"{name} took {elapsed:.1f} s: {body[:200]!r}")
        elif status == 0:
            self.note("connection failed")  # the worker holding it was killed, or restarts
        elif status == 200:
            try:
                if check is not None:
                    check(json.loads(body))
                self.note("ok")
            except (AssertionError, KeyError, ValueError) as exc:
                self.note("BAD wrong answer", f"{name}: {exc!r} {body[:200]!r}")
        elif status in (400, 404, 500, 503) and any(text in body for text in EXPECTED_ERRORS):
            self.note(f"expected {status}")
        else:
            self.note("BAD status", f"{name} {status} {body[:300]!r}")

    # --- clients -------------------------------------------------------------------------------

    def mlp_client(self, model: str, input_name: str, seed: int) -> None:
        """The MLP's answers, directly (`mlp`) or through a Python model's BLS call (`bls`),
        checked against onnxruntime."""
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            x = rng.standard_normal((int(rng.integers(1, 5)), 16)).astype(np.float32)
            want = run_reference(self.mlp_path, {"input": x})["output"]

            def check(answer: Any, want: np.ndarray = want) -> None:
                got = np.array(answer["outputs"][0]["data"], np.float32).reshape(want.shape)
                assert np.allclose(got, want, atol=1e-4), (got, want)

            body = {"inputs": [fp32(input_name, x)]}
            self.judge(model, post(self.port, f"/v2/models/{model}/infer", body), check)

    def keep_alive_client(self, seed: int) -> None:
        """The MLP over one kept-alive HTTP connection at a time (under --shared-batching it may
        move to the model's owner: server/workers/handoff.py), a new one when it is lost."""
        rng = np.random.default_rng(seed)
        connection: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            x = rng.standard_normal((1, 16)).astype(np.float32)
            want = run_reference(self.mlp_path, {"input": x})["output"]
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HANG_S)
            started = time.monotonic()
            try:
                body = json.dumps({"inputs": [fp32("input", x)]}).encode()
                connection.request("POST", "/v2/models/mlp/infer", body)
                response = connection.getresponse()
                answer: Answer = (response.status, response.read(), time.monotonic() - started)
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = None
                answer = (0, b"", time.monotonic() - started)

            def check(answer: Any, want: np.ndarray = want) -> None:
                got = np.array(answer["outputs"][0]["data"], np.float32).reshape(want.shape)
                assert np.allclose(got, want, atol=1e-4), (got, want)

            self.judge("mlp (kept alive)", answer, check)
        if connection is not None:
            connection.close()

    def classify_client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            raw = rng.integers(0, 255, (1, 16)).tolist()
            body = {"inputs": [{"name": "RAW", "shape": [1, 16], "datatype": "UINT8", "data": raw}]}

            def check(answer: Any) -> None:
                assert {o["name"] for o in answer["outputs"]} == {"LABEL", "PROBABILITY"}

            self.judge("classify", post(self.port, "/v2/models/classify/infer", body), check)

    def sequence_client(self, base: int) -> None:
        """Sequences of 2-6 steps of the accumulator; a running sum that does not match, or a
        sequence that fails, is expected only after its owner or its state went away."""
        rng = random.Random(base)
        for number in range(1, 1 << 30):
            if self.stop.is_set():
                return
            sequence_id, total, broken, began = (
                base * 1_000_000 + number,
                0,
                False,
                time.monotonic(),
            )
            steps = rng.randint(2, 6)
            for step in range(steps):
                value = rng.randint(0, 9)
                total += value
                body = {
                    "inputs": [
                        {"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [value]}
                    ],
                    "parameters": {
                        "sequence_id": sequence_id,
                        "sequence_start": step == 0,
                        "sequence_end": step == steps - 1,
                    },
                }
                status, answer, elapsed = post(self.port, "/v2/models/acc/infer", body)
                lost = broken or self.sequences_broken_at > began - 1.0
                if status == 200:
                    outputs = {o["name"]: o["data"] for o in json.loads(answer)["outputs"]}
                    if outputs["OUTPUT"][0] == total or lost:
                        self.note("ok")
                    else:
                        self.note("BAD wrong answer", f"sequence {sequence_id} step {step}")
                elif b"START flag" in answer and (lost or step > 0):
                    self.note("sequence lost")
                    broken = True
                else:
                    broken = True
                    self.judge("acc", (status, answer, elapsed), None)

    def grpc_stream_client(self, base: int) -> None:
        """Sequences of the accumulator over gRPC ModelStreamInfer, one stream per sequence (a
        fresh connection each: any worker); each response is awaited at most HANG_S. The
        stream's errors come as the callback's error: expected ones, or a lost sequence."""
        import queue

        import tritonclient.grpc as grpcclient

        rng = random.Random(base)
        for number in range(1, 1 << 30):
            if self.stop.is_set():
                return
            sequence_id, total, began = base * 1_000_000 + number, 0, time.monotonic()
            answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
            client = grpcclient.InferenceServerClient(self.server.grpc_url)
            try:
                client.start_stream(callback=functools.partial(_put_pair, answers))
                steps = rng.randint(2, 6)
                for step in range(steps):
                    value = rng.randint(0, 9)
                    total += value
                    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
                    tensor.set_data_from_numpy(np.array([[value]], np.int32))
                    client.async_stream_infer(
                        "acc",
                        [tensor],
                        sequence_id=sequence_id,
                        sequence_start=step == 0,
                        sequence_end=step == steps - 1,
                    )
                    try:
                        result, error = answers.get(timeout=HANG_S)
                    except queue.Empty:
                        self.note("BAD hang", f"stream sequence {sequence_id} step {step}")
                        break
                    lost = self.sequences_broken_at > began - 1.0
                    if error is None:
                        got = int(result.as_numpy("OUTPUT").reshape(-1)[0])
                        if got == total or lost:
                            self.note("ok")
                        else:
                            self.note("BAD wrong answer", f"stream {sequence_id}: {got} != {total}")
                        continue
                    text = str(error).encode()
                    if lost or any(t in text for t in EXPECTED_ERRORS + STREAM_ENDED):
                        self.note("stream error expected")
                    else:
                        self.note("BAD stream error", f"sequence {sequence_id}: {error}")
                    break
            except Exception as exc:  # the connection to a killed worker
                text = str(exc).encode()
                if any(t in text for t in EXPECTED_ERRORS + STREAM_ENDED):
                    self.note("stream error expected")
                else:
                    self.note("BAD stream exception", repr(exc))
            finally:
                with contextlib.suppress(Exception):
                    client.stop_stream(cancel_requests=True)
                client.close()

    def grpc_client(self, seed: int) -> None:
        """The MLP over gRPC ModelInfer, a fresh client (connection) every 20 requests."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            client = grpcclient.InferenceServerClient(self.server.grpc_url)
            for _ in range(20):
                x = rng.standard_normal((1, 16)).astype(np.float32)
                want = run_reference(self.mlp_path, {"input": x})["output"]
                tensor = grpcclient.InferInput("input", [1, 16], "FP32")
                tensor.set_data_from_numpy(x)
                started = time.monotonic()
                try:
                    result = client.infer("mlp", [tensor], client_timeout=HANG_S + 5)
                except InferenceServerException as exc:
                    elapsed, text = time.monotonic() - started, str(exc).encode()
                    if elapsed > HANG_S or b"Deadline" in text:
                        self.note("BAD hang", f"grpc mlp {elapsed:.1f} s: {exc}")
                    elif any(t in text for t in EXPECTED_ERRORS + STREAM_ENDED):
                        self.note("grpc error expected")
                    else:
                        self.note("BAD grpc error", str(exc))
                    break
                got = result.as_numpy("output")
                if got is not None and np.allclose(got, want, atol=1e-4):
                    self.note("ok")
                else:
                    self.note("BAD wrong answer", f"grpc mlp {got} != {want}")
            client.close()

    def hang_up_client(self) -> None:
        """Clients that close their connection mid-header, mid-body or before the answer."""
        body = json.dumps({"inputs": [fp32("input", np.ones((1, 16), np.float32))]}).encode()
        rng = random.Random(7)
        while not self.stop.is_set():
            path = rng.choice(["/v2/models/mlp/infer", "/v2/models/bls/infer"])
            head = (
                f"POST {path} HTTP/1.1\r\nHost: chaos\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            cut = rng.choice([len(head) // 2, len(head) + len(body) // 2, len(head) + len(body)])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall((head + body)[:cut])
                    time.sleep(rng.random() * 0.01)
            except OSError:
                pass  # every worker restarting at once: nothing listens
            self.note("hung up")
            time.sleep(0.02)

    # --- chaos ---------------------------------------------------------------------------------

    def chaos(self) -> None:
        rng = random.Random(11)
        choices = ["kill instance", "reload", "unload and load"] + ["kill worker"] * self.workers
        while not self.stop.wait(rng.uniform(0.5, 2.0)):
            action, model = rng.choice(choices), rng.choice(MODELS)
            if action == "kill worker":
                pids = worker_pids(self.server.process.pid)
                if len(pids) < 2 or min(map(process_age_s, pids)) < WORKER_MIN_AGE_S:
                    continue
                self.sequences_broken_at = time.monotonic()
                os.kill(rng.choice(pids), signal.SIGKILL)
            elif action == "kill instance":
                instances = python_instances(self.server.process.pid)
                if not instances:
                    continue
                self.sequences_broken_at = time.monotonic()
                os.kill(rng.choice(instances), signal.SIGKILL)
            else:
                if model == "acc":
                    self.sequences_broken_at = time.monotonic()
                calls = ["unload", "load"] if action == "unload and load" else ["load"]
                for call in calls:
                    status, body, _ = post(
                        self.port, f"/v2/repository/models/{model}/{call}", {}, timeout_s=120
                    )
                    self.actions.append(f"{call} {model}: {status} {body[:120]!r}")
                continue
            self.actions.append(action)

    def run(self, seconds: float) -> None:
        threads = [
            threading.Thread(target=self.mlp_client, args=("mlp", "input", 1)),
            threading.Thread(target=self.mlp_client, args=("mlp", "input", 2)),
            threading.Thread(target=self.keep_alive_client, args=(6,)),
            threading.Thread(target=self.classify_client, args=(3,)),
            threading.Thread(target=self.mlp_client, args=("bls", "INPUT", 4)),
            threading.Thread(target=self.hang_up_client),
            threading.Thread(target=self.grpc_client, args=(5,)),
            threading.Thread(target=self.grpc_stream_client, args=(4,)),
            threading.Thread(target=self.chaos),
            *(threading.Thread(target=self.sequence_client, args=(b,)) for b in (1, 2, 3)),
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=150)
        assert not [t for t in threads if t.is_alive()], "a client never returned"


def _put_pair(answers: Any, result: Any, error: Any) -> None:
    answers.put((result, error))


def process_age_s(pid: int) -> float:
    """How long process `pid` has run (0 when it is gone)."""
    try:
        started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    return uptime_s - started / os.sysconf("SC_CLK_TCK")


def python_instances(supervisor_pid: int) -> list[int]:
    """The server's Python model instance processes (children or grandchildren)."""
    found, pending = [], [supervisor_pid]
    while pending:
        pid = pending.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            pending.append(child)
            try:
                if b"server.runtimes.python.stub" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    "mode",
    [(), ("--workers", "2", "--no-shared-batching"), ("--workers", "2", "--shared-batching")],
    ids=["one-process", "workers", "shared-batching"],
)
def test_the_server_survives_chaos_under_load(tmp_path: Path, mode: tuple[str, ...]) -> None:
    write_classifier_step(tmp_path, "mlp")
    config = tmp_path / "mlp" / "config.pbtxt"
    config.write_text(
        config.read_text() + "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
    )
    write_classify_pipeline(tmp_path, "classify")
    write_bls(tmp_path, "bls", "mlp", "input", "output")
    write_accumulator(tmp_path, "acc")
    flags = ("--model-control-mode", "explicit", *(f"--load-model={m}" for m in MODELS))
    with running_server(tmp_path, *flags, "--no-drift", *mode, timeout=180) as server:
        chaos = Chaos(server, tmp_path, workers="--workers" in mode)
        chaos.run(SECONDS)
        summary = f"{dict(chaos.counts)}\nactions: {chaos.actions}"
        print(f"chaos {mode}: {dict(chaos.counts)}")  # (make chaos shows it with -s)
        assert not chaos.problems, "\n".join(chaos.problems[:40]) + "\n" + summary
        assert chaos.counts["ok"] > 100, summary
        # recovery: every worker back, every model loaded, every model answering on every worker
        deadline = time.monotonic() + 120
        while chaos.workers and len(worker_pids(server.process.pid)) < 2:
            assert time.monotonic() < deadline, "a killed worker did not come back"
            time.sleep(0.5)
        for model in MODELS:
            status, answer, _ = post(
                server.http_port, f"/v2/repository/models/{model}/load", {}, 180
            )
            assert status == 200, (model, answer)
        x = {"inputs": [fp32("input", np.ones((1, 16), np.float32))]}
        raw = {"inputs": [{"name": "RAW", "shape": [1, 16], "datatype": "UINT8", "data": [1] * 16}]}
        bls = {"inputs": [fp32("INPUT", np.ones((1, 16), np.float32))]}
        requests: list[tuple[str, dict[str, Any]]] = [("mlp", x), ("classify", raw), ("bls", bls)]
        deadline = time.monotonic() + 60
        for _ in range(30):  # fresh connections: every worker
            for model, body in requests:
                url = f"/v2/models/{model}/infer"
                while (answered := post(server.http_port, url, body))[0] != 200:
                    assert time.monotonic() < deadline, (model, answered)
                    time.sleep(0.5)
        time.sleep(1.5)  # the supervisor gathers the workers' gauges once a second
        for model in MODELS:
            series = f'nv_inference_pending_request_count{{model="{model}",version="1"}}'
            assert metric_value(server.metrics_url, series) == 0, series
        log = server.log()
    assert server.process.returncode == 0, log[-3000:]
    for marker in ("Traceback", "never retrieved", "CRITICAL"):
        assert marker not in log, log[log.index(marker) - 2000 : log.index(marker) + 2000]
