"""`ferry serve --workers 2` behaves as one server: statistics and metrics add up (and keep what
a killed worker had counted), model control reaches every worker, a killed worker is replaced
while the server stays ready, and SIGTERM drains every worker. Requests open fresh
connections, so they reach both workers."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support.onnx_models import (
    mlp_model,
    run_reference,
    slow_model,
    two_io_model,
    write_model,
)
from tests.support.server_process import ServerProcess, running_server
from tests.support.workers import (
    fresh,
    metric_value,
    mlp_request,
    wait_for_log,
    wait_for_workers,
    worker_lines,
    worker_pids,
)

ATTEMPTS = 30  # fresh connections per "every worker" check: all on one worker has p = 2**-29
# `--workers N` runs each model in its owner (one batcher) unless told each worker batches its own
BATCHING_MODES = ["--shared-batching", "--no-shared-batching"]


def answers(server: ServerProcess, path: str) -> Counter[int]:
    """The statuses of ATTEMPTS fresh-connection GETs of `path`."""
    return Counter(fresh(f"http://{server.http_url}{path}")[0] for _ in range(ATTEMPTS))


@pytest.mark.parametrize("batching", BATCHING_MODES)
def test_statistics_and_metrics_add_up_across_workers(tmp_path: Path, batching: str) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, "--workers", "2", batching) as server:
        assert len(worker_pids(server.process.pid)) == 2
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        http_requests, rows = 40, 0
        for index in range(http_requests):
            status, _ = fresh(url, mlp_request(1 + index % 3))
            assert status == 200
            rows += 1 + index % 3
        grpc_requests = 12
        for _ in range(grpc_requests):
            client = grpcclient.InferenceServerClient(server.grpc_url)  # a new connection each
            infer_input = grpcclient.InferInput("input", [2, 16], "FP32")
            infer_input.set_data_from_numpy(np.ones((2, 16), dtype=np.float32))
            client.infer("mlp", [infer_input])
            client.close()
            rows += 2
        bad = 3
        for _ in range(bad):
            assert fresh(url, mlp_request(1, features=15))[0] == 400
        total = http_requests + grpc_requests

        # every fresh connection (either worker) answers the same, whole-server totals
        seen = {fresh(f"http://{server.http_url}/v2/models/mlp/stats")[1] for _ in range(8)}
        stats = [json.loads(body)["model_stats"][0] for body in seen]
        for entry in stats:
            assert entry["inference_count"] == rows
            assert entry["inference_stats"]["success"]["count"] == total
            assert entry["inference_stats"]["fail"]["count"] == bad
            batches = sum(b["compute_infer"]["count"] for b in entry["batch_stats"])
            assert batches == entry["execution_count"] > 0
        grpc_stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
            "mlp", as_json=True
        )["model_stats"][0]
        assert int(grpc_stats["inference_count"]) == rows
        assert int(grpc_stats["inference_stats"]["success"]["count"]) == total

        labels = '{model="mlp",version="1"}'
        metrics = server.metrics_url
        assert metric_value(metrics, f"nv_inference_request_success{labels}") == total
        assert metric_value(metrics, f"nv_inference_count{labels}") == rows
        assert metric_value(metrics, f"nv_inference_exec_count{labels}") == int(
            grpc_stats["execution_count"]
        )
        assert (
            metric_value(
                metrics, 'nv_inference_request_failure{model="mlp",version="1",reason="OTHER"}'
            )
            == bad
        )
        for protocol, count in (("http", http_requests), ("grpc", grpc_requests)):
            series = f'{{model="mlp",version="1",protocol="{protocol}"}}'
            assert metric_value(metrics, f"ferry_request_duration_seconds_count{series}") == count
        assert metric_value(metrics, f"ferry_model_ready{labels}") == 1


def test_a_killed_workers_counts_stay_in_the_totals(tmp_path: Path) -> None:
    """Both workers served some requests; both are killed in turn (each after a read of the
    statistics and of the metrics, which remembers what every worker counted): the totals
    still equal the requests answered, and never went down."""
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, "--workers", "2", "--no-shared-batching") as server:
        infer = f"http://{server.http_url}/v2/models/mlp/infer"
        stats_url = f"http://{server.http_url}/v2/models/mlp/stats"
        labels = '{model="mlp",version="1"}'
        http_series = '{model="mlp",version="1",protocol="http"}'
        sent, rows, bad = 0, 0, 0

        def send(count: int) -> None:
            nonlocal sent, rows, bad
            for index in range(count):
                assert fresh(infer, mlp_request(1 + index % 3))[0] == 200
                sent, rows = sent + 1, rows + 1 + index % 3
            assert fresh(infer, mlp_request(1, features=15))[0] == 400
            bad += 1

        def totals() -> tuple[int, int, int, float, float, float]:
            entry = json.loads(fresh(stats_url)[1])["model_stats"][0]
            metrics = server.metrics_url
            return (
                entry["inference_stats"]["success"]["count"],
                entry["inference_count"],
                entry["inference_stats"]["fail"]["count"],
                metric_value(metrics, f"nv_inference_request_success{labels}"),
                metric_value(metrics, f"nv_inference_count{labels}"),
                metric_value(metrics, f"ferry_request_duration_seconds_count{http_series}"),
            )

        send(30)
        seen = [totals()]
        assert seen[-1] == (sent, rows, bad, sent, rows, sent)
        for victim in worker_pids(server.process.pid):  # both of the first workers, in turn
            ready = server.log().count("models ready")
            os.kill(victim, signal.SIGKILL)
            wait_for_workers(server.process.pid, 2, {victim})
            wait_for_log(server, "models ready", ready + 1)
            seen.append(totals())
            send(10)
            seen.append(totals())
        assert server.log().count("exited with -9") == 2
        # every count equals what was answered, after each death
        assert seen[-1] == (sent, rows, bad, sent, rows, sent)
        assert [s[0] for s in seen] == [30, 30, 40, 40, 50]
        for earlier, later in itertools.pairwise(seen):
            assert all(b >= a for a, b in zip(earlier, later, strict=True))
        grpc_stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
            "mlp", as_json=True
        )["model_stats"][0]
        assert int(grpc_stats["inference_stats"]["success"]["count"]) == sent
        # gauges die with the worker: the model is ready, nothing is pending
        assert metric_value(server.metrics_url, f"ferry_model_ready{labels}") == 1
        assert metric_value(server.metrics_url, f"nv_inference_pending_request_count{labels}") == 0


def kill_each_worker(server: ServerProcess) -> None:
    """SIGKILL each of the workers in turn, each once the one before was replaced and ready."""
    for victim in worker_pids(server.process.pid):
        ready = server.log().count("models ready")
        os.kill(victim, signal.SIGKILL)
        wait_for_workers(server.process.pid, 2, {victim})
        wait_for_log(server, "models ready", ready + 1)


def test_control_calls_reset_a_killed_workers_counts_as_a_single_server_resets(
    tmp_path: Path,
) -> None:
    """A reload that keeps the version keeps its numbers; a changed version starts its
    statistics again (not its metric series); unload and load start both again: two workers
    whose first two were killed show what one process shows."""
    write_model(tmp_path, "mlp", mlp_model())
    changed = json.dumps({"max_batch_size": 2, "platform": "onnxruntime_onnx"})

    def scenario(workers: int) -> list[tuple[int, int, float]]:
        with running_server(
            tmp_path,
            "--workers",
            str(workers),
            "--no-shared-batching",
            "--model-control-mode",
            "explicit",
            "--load-model",
            "mlp",
        ) as server:
            url = f"http://{server.http_url}/v2/models/mlp/infer"
            grpc = grpcclient.InferenceServerClient(server.grpc_url)

            def send(count: int) -> tuple[int, int, float]:
                for _ in range(count):
                    assert fresh(url, mlp_request(2))[0] == 200
                entry = json.loads(fresh(f"http://{server.http_url}/v2/models/mlp/stats")[1])
                stats = entry["model_stats"][0]
                success = 'nv_inference_request_success{model="mlp",version="1"}'
                return (
                    stats["inference_stats"]["success"]["count"],
                    stats["inference_count"],
                    metric_value(server.metrics_url, success),
                )

            seen = [send(20)]
            if workers == 2:
                kill_each_worker(server)
            seen.append(send(1))
            grpc.load_model("mlp")  # unchanged: the same version keeps serving
            seen.append(send(1))
            grpc.load_model("mlp", config=changed)  # a new version 1: statistics from 0
            seen.append(send(1))
            grpc.unload_model("mlp")
            grpc.load_model("mlp")
            seen.append(send(1))
            return seen

    two = scenario(2)
    assert two == scenario(1)
    assert two == [(20, 40, 20), (21, 42, 21), (22, 44, 22), (1, 2, 23), (1, 2, 1)]


def test_model_control_reaches_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    write_model(tmp_path, "two_io", two_io_model())
    with running_server(
        tmp_path,
        "--workers",
        "2",
        "--no-shared-batching",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "mlp",
    ) as server:
        assert answers(server, "/v2/models/two_io/ready") == {400: ATTEMPTS}
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        grpc.load_model("two_io")  # answers once every worker has it
        assert answers(server, "/v2/models/two_io/ready") == {200: ATTEMPTS}
        grpc.unload_model("mlp")
        assert answers(server, "/v2/models/mlp/ready") == {400: ATTEMPTS}
        config = json.dumps({"max_batch_size": 2, "platform": "onnxruntime_onnx"})
        grpc.load_model("two_io", config=config)
        configs = {fresh(f"http://{server.http_url}/v2/models/two_io/config")[1] for _ in range(20)}
        assert {json.loads(body)["max_batch_size"] for body in configs} == {2}

        # a worker started later replays those calls: it has what the others have
        old = set(worker_pids(server.process.pid))
        os.kill(min(old), signal.SIGKILL)
        wait_for_workers(server.process.pid, 2, {min(old)})
        wait_for_log(server, "models ready", 3)
        assert answers(server, "/v2/models/two_io/ready") == {200: ATTEMPTS}
        assert answers(server, "/v2/models/mlp/ready") == {400: ATTEMPTS}
        configs = {fresh(f"http://{server.http_url}/v2/models/two_io/config")[1] for _ in range(20)}
        assert {json.loads(body)["max_batch_size"] for body in configs} == {2}


def test_poll_mode_reaches_every_worker(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(
        tmp_path,
        "--workers",
        "2",
        "--no-shared-batching",
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.5",
    ) as server:
        write_model(tmp_path, "two_io", two_io_model())
        deadline = time.monotonic() + 60
        while fresh(f"http://{server.http_url}/v2/models/two_io/ready")[0] != 200:
            assert time.monotonic() < deadline, "the new model never loaded"
            time.sleep(0.2)
        # one poll loads it on every worker at once
        assert answers(server, "/v2/models/two_io/ready") == {200: ATTEMPTS}


def test_killed_worker_is_replaced_under_load(tmp_path: Path) -> None:
    """Each worker runs its own copy of the model (--no-shared-batching), so the other worker
    serves every request while its peer restarts (with one owner per model, its requests answer
    503 meanwhile: test_chaos.py and the shared-batching tests below)."""
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, "--workers", "2", "--no-shared-batching") as server:
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        ready_url = f"http://{server.http_url}/v2/health/ready"
        outcomes: list[tuple[float, int]] = []
        probes: Counter[int] = Counter()
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                status, _ = fresh(url, mlp_request(1))
                outcomes.append((time.monotonic(), status))

        def probe() -> None:
            while not stop.is_set():
                probes[fresh(ready_url)[0]] += 1
                time.sleep(0.01)

        threads = [threading.Thread(target=load) for _ in range(4)]
        threads.append(threading.Thread(target=probe))
        for thread in threads:
            thread.start()
        try:
            while len(outcomes) < 100:
                time.sleep(0.01)
            victim = worker_pids(server.process.pid)[0]
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_for_workers(server.process.pid, 2, {victim})
            wait_for_log(server, "models ready", 3)
            replaced_at = time.monotonic()
            served = len(outcomes)
            while len(outcomes) < served + 200:
                time.sleep(0.01)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        statuses = Counter(status for _, status in outcomes)
        # in-flight requests of the killed worker lose their connection (status 0); every
        # request that was answered succeeded
        assert set(statuses) <= {200, 0}
        # the other worker kept serving while its peer restarted
        assert any(killed_at < t < replaced_at and s == 200 for t, s in outcomes)
        # after the replacement, everything succeeds
        assert all(s == 200 for t, s in outcomes if t > replaced_at + 1.0)
        # the server never said it was not ready
        assert probes[200] > 0 and set(probes) <= {200, 0}
        assert "exited with -9" in server.log()


DRAIN_MODES = {  # flags, config, the executions running at once
    "own batchers": (["--workers", "2", "--no-shared-batching"], "", 2),
    "shared batching": (["--workers", "2", "--shared-batching"], "", 1),
    "cached": (  # every request forwarded to the model's owner, which runs it whole
        ["--workers", "2", "--no-shared-batching", "--cache-config", "local,size=1000000"],
        "response_cache { enable: true }\n",
        1,
    ),
}


@pytest.mark.parametrize("mode", list(DRAIN_MODES))
def test_sigterm_drains_every_worker(tmp_path: Path, mode: str) -> None:
    """Sixteen slow requests accepted over both workers (with --shared-batching, all queued in
    the model's owner; for a cached model, all run there) all answer after SIGTERM, and every
    worker stops."""
    flags, config, running = DRAIN_MODES[mode]
    write_model(
        tmp_path,
        "slow",
        slow_model(layers=400),
        "max_batch_size: 1\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        "dynamic_batching {}\n" + config,
    )
    x = np.ones((1, 256), dtype=np.float32)
    expected = run_reference(tmp_path / "slow" / "1" / "model.onnx", {"input": x})["output"]
    body = {
        "inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [1.0] * 256}]
    }
    clients = 16
    with running_server(tmp_path, *flags) as server:
        url = f"http://{server.http_url}/v2/models/slow/infer"
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(fresh, url, body, 120.0) for _ in range(clients)]
            stats_url = f"http://{server.http_url}/v2/models/slow/stats"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until all are accepted: queued or executed
                stats = json.loads(fresh(stats_url)[1])["model_stats"][0]
                pending = metric_value(
                    server.metrics_url,
                    'nv_inference_pending_request_count{model="slow",version="1"}',
                )
                if pending + stats["execution_count"] + running >= clients:
                    break
                time.sleep(0.005)
            server.process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        for status, answer in results:
            assert status == 200
            output = json.loads(answer)["outputs"][0]["data"]
            np.testing.assert_allclose(np.array(output).reshape(1, -1), expected, rtol=1e-5)
        assert server.process.wait(timeout=60) == 0
        log = server.log()
        for slot in (0, 1):
            lines = worker_lines(log, slot)
            assert any(" ferry: shutting down" in line for line in lines), log
            assert any(" ferry: stopped" in line for line in lines), log


def test_one_drift_evaluator_counts_every_row_once(tmp_path: Path) -> None:
    from monitoring.reference import write_reference

    version = write_model(tmp_path, "clf", mlp_model(in_features=16, out_features=4)) / "1"
    rng = np.random.default_rng(0)
    write_reference(
        version,
        version / "model.onnx",
        {"input": rng.standard_normal((2000, 16)).astype(np.float32)},
        window=100,
        alpha=0.05,
        simulations=50,
    )
    window, requests, rows_each = 100, 75, 4  # 4 rows: the default max batch size
    with running_server(
        tmp_path,
        "--workers",
        "2",
        "--no-shared-batching",
        "--drift-window",
        str(window),
        "--log-requests",
    ) as server:
        for _ in range(requests):
            status, _ = fresh(
                f"http://{server.http_url}/v2/models/clf/infer", mlp_request(rows_each)
            )
            assert status == 200
        for slot in (0, 1):  # both workers served some of the rows
            assert any(" ferry.requests: " in x for x in worker_lines(server.log(), slot))
        deadline = time.monotonic() + 30
        series = 'ferry_drift_windows_total{model="clf",version="1"}'
        while metric_value(server.metrics_url, series) < requests * rows_each // window:
            assert time.monotonic() < deadline, "the drift windows did not fill"
            time.sleep(0.2)
        time.sleep(0.5)  # one more feeder pass on each worker: nothing more comes
        assert metric_value(server.metrics_url, series) == requests * rows_each // window
        for _ in range(8):  # any worker answers the one evaluator's figures
            status, body = fresh(f"http://{server.http_url}/v2/models/clf/drift")
            detail = json.loads(body)
            assert status == 200 and detail["state"] == "active"
            assert detail["rows_seen"] == requests * rows_each
            assert detail["windows_total"] == requests * rows_each // window
        statistics = json.loads(fresh(f"http://{server.http_url}/v2/models/clf/stats")[1])
        assert statistics["model_stats"][0]["inference_count"] == requests * rows_each


def test_a_sequence_runs_on_one_worker_whichever_worker_its_requests_reach(
    tmp_path: Path,
) -> None:
    """Each step on a fresh connection (the kernel spreads them over both workers): the
    worker that owns the sequence runs every step, the other forwards to it."""
    import tritonclient.http as httpclient

    from server.workers.sequences import owner_of
    from tests.support.sequence_models import INPUT_SIZE, run_alone_in_onnxruntime, write_rnn_cell

    write_rnn_cell(tmp_path, "rnn", max_batch_size=4)
    rng = np.random.default_rng(3)
    steps = 6
    sequences = {
        sid: rng.standard_normal((steps, INPUT_SIZE)).astype(np.float32)
        for sid in (1, 2, 3, 4, 5, 6)
    }
    assert {owner_of(sid, 2) for sid in sequences} == {0, 1}  # both workers own some
    with running_server(
        tmp_path, "--workers", "2", "--no-shared-batching", "--log-requests"
    ) as server:
        got: dict[int, list[np.ndarray]] = {sid: [] for sid in sequences}
        for t in range(steps):
            for sid, xs in sequences.items():
                use_grpc = (sid + t) % 2 == 0
                module: Any = grpcclient if use_grpc else httpclient
                client = module.InferenceServerClient(
                    server.grpc_url if use_grpc else server.http_url
                )
                tensor = module.InferInput("INPUT", [1, INPUT_SIZE], "FP32")
                tensor.set_data_from_numpy(xs[t].reshape(1, INPUT_SIZE))
                result = client.infer(
                    "rnn",
                    [tensor],
                    sequence_id=sid,
                    sequence_start=t == 0,
                    sequence_end=t == steps - 1,
                )
                got[sid].append(result.as_numpy("OUTPUT")[0])
                client.close()
        for sid, xs in sequences.items():
            alone = run_alone_in_onnxruntime(tmp_path / "rnn" / "1" / "model.onnx", xs, sid)
            np.testing.assert_allclose(np.stack(got[sid]), alone, rtol=1e-5, atol=1e-6)
        # counted once, by the owners: the whole server's statistics equal the requests sent
        stats = json.loads(fresh(f"http://{server.http_url}/v2/models/rnn/stats")[1])
        entry = stats["model_stats"][0]
        assert entry["inference_stats"]["success"]["count"] == len(sequences) * steps
        log = server.log()
        for slot in (0, 1):
            assert any(" ferry.requests: " in line for line in worker_lines(log, slot)), log
        # an error of the owner comes back unchanged: a step of an ended sequence without START
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("INPUT", [1, INPUT_SIZE], "FP32")
        tensor.set_data_from_numpy(sequences[1][0].reshape(1, INPUT_SIZE))
        for sid in sequences:
            try:
                client.infer("rnn", [tensor], sequence_id=sid)
            except Exception as exc:  # tritonclient's InferenceServerException
                assert "must specify the START flag" in str(exc)
            else:
                raise AssertionError("a step without START of an ended sequence was accepted")


def test_shared_batching_runs_every_sequence_of_a_model_in_one_sequence_batcher(
    tmp_path: Path,
) -> None:
    """Eight sequences that the two workers would each own some of without the flag start at
    once, each on a fresh connection: the model's owner alone runs them (loaded there only), in
    one batch at once. Per-worker sequence batchers would each hold fewer than the preferred 8
    for 60 s."""
    from server.workers.sequences import owner_of
    from tests.support.sequence_models import INPUT_SIZE, run_alone_in_onnxruntime, write_rnn_cell

    held = (
        "oldest { max_candidate_sequences: 8 preferred_batch_size: [8] "
        "max_queue_delay_microseconds: 60000000 }"
    )
    write_rnn_cell(tmp_path, "rnn", strategy=held, max_batch_size=8)
    ids = list(range(1, 9))
    assert {owner_of(sid, 2) for sid in ids} == {0, 1}
    xs = np.random.default_rng(5).standard_normal((len(ids), INPUT_SIZE)).astype(np.float32)
    with running_server(tmp_path, "--workers", "2", "--shared-batching") as server:
        url = f"http://{server.http_url}/v2/models/rnn/infer"

        def first_step(index: int) -> tuple[int, bytes]:
            body = {
                "parameters": {"sequence_id": ids[index], "sequence_start": True},
                "inputs": [
                    {
                        "name": "INPUT",
                        "shape": [1, INPUT_SIZE],
                        "datatype": "FP32",
                        "data": xs[index].tolist(),
                    }
                ],
            }
            return fresh(url, body, timeout_s=30.0)

        with ThreadPoolExecutor(len(ids)) as pool:
            answers = list(pool.map(first_step, range(len(ids))))
        model_path = tmp_path / "rnn" / "1" / "model.onnx"
        for index, (status, answer) in enumerate(answers):
            assert status == 200, answer
            output = json.loads(answer)["outputs"][0]
            alone = run_alone_in_onnxruntime(model_path, xs[index : index + 1], ids[index])
            np.testing.assert_allclose(
                np.array(output["data"], np.float32).reshape(alone.shape), alone, rtol=1e-5
            )
        stats = json.loads(fresh(f"http://{server.http_url}/v2/models/rnn/stats")[1])
        entry = stats["model_stats"][0]
        assert entry["execution_count"] == 1 and entry["inference_count"] == len(ids)


# a batch runs when 8 rows are queued, or after 60 s: requests spread over two workers' batchers
# would wait out the delay; one shared batcher runs them at once
HELD_FOR_EIGHT = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 60000000 }
"""


def test_shared_batching_runs_a_models_requests_in_one_batcher_whichever_worker_they_reach(
    tmp_path: Path,
) -> None:
    """Eight 1-row requests on fresh connections (the kernel spreads them over both workers)
    form one batch of 8 in the model's owner; each request is counted by the worker it reached
    and the batch by the owner, so the totals are one server's."""
    from tests.support.workers import served_by

    write_model(tmp_path, "mlp", mlp_model(), config=HELD_FOR_EIGHT)
    args = ("--workers", "2", "--shared-batching", "--log-requests")
    with running_server(tmp_path, *args) as server:
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        bodies = [mlp_request(1) | {"id": f"held-{i}"} for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda body: fresh(url, body, timeout_s=30.0), bodies))
        assert [status for status, _ in answers] == [200] * 8, answers
        x = np.asarray(mlp_request(1)["inputs"][0]["data"], np.float32).reshape(1, 16)
        model_path = tmp_path / "mlp" / "1" / "model.onnx"
        expected = run_reference(model_path, {"input": x})["output"]
        for _, body in answers:
            output = json.loads(body)["outputs"][0]
            np.testing.assert_allclose(output["data"], expected.reshape(-1), rtol=1e-5)
        stats = json.loads(fresh(f"http://{server.http_url}/v2/models/mlp/stats")[1])
        entry = stats["model_stats"][0]
        assert entry["execution_count"] == 1 and entry["inference_count"] == 8
        assert entry["inference_stats"]["success"]["count"] == 8
        assert entry["batch_stats"][0]["batch_size"] == 8
        lines = served_by(server, [f"held-{i}" for i in range(8)])
        assert {slot for slot, _ in lines.values()} == {0, 1}  # taken by both workers
        client = grpcclient.InferenceServerClient(server.grpc_url)
        infer_input = grpcclient.InferInput("input", [8, 16], "FP32")
        infer_input.set_data_from_numpy(np.ones((8, 16), dtype=np.float32))
        assert client.infer("mlp", [infer_input]).as_numpy("output").shape[0] == 8


INSTANCE_COUNTING_PY = """\
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "instances.txt"), "a") as log:
            log.write(f"{os.getpid()}\\n")

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "PID", np.full((len(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()), 1),
                               os.getpid(), np.int64))])
            for r in requests
        ]
"""


def test_shared_batching_loads_a_model_in_its_owner_only(tmp_path: Path) -> None:
    """A Python model's instance starts once, in the owner, and serves every worker's
    requests; without --shared-batching each worker starts its own."""
    from tests.support.python_models import write_python_model

    config = """max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "PID" data_type: TYPE_INT64 dims: [1] }]
"""
    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    for shared, instances in ((True, 1), (False, 2)):
        repo = tmp_path / f"shared-{shared}"
        model_dir = write_python_model(repo, "whoami", INSTANCE_COUNTING_PY, config)
        flags = ("--workers", "2", "--shared-batching" if shared else "--no-shared-batching")
        with running_server(repo, *flags) as server:
            url = f"http://{server.http_url}/v2/models/whoami/infer"
            pids = set()
            for _ in range(ATTEMPTS):
                status, answer = fresh(url, body)
                assert status == 200, answer
                pids.add(json.loads(answer)["outputs"][0]["data"][0])
            started = (model_dir / "1" / "instances.txt").read_text().split()
            assert len(started) == instances
            assert len(pids) == instances  # every request ran on an instance that started


SLOW_START_PY = """\
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(30)

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")])
            for r in requests
        ]
"""


def test_shared_batching_a_worker_lost_at_start_stops_the_server_at_once(tmp_path: Path) -> None:
    """Worker 1 has loaded the model it owns and waits for worker 0's load (30 s). Worker 0 is
    killed: the supervisor stops the server, which was never ready. Worker 1 stops at once; it
    used to go on asking the gone owner for up to two minutes, so the server took that long."""
    from measure.sweep import serve_command
    from server.workers.sequences import model_owner_of
    from tests.support.python_models import write_python_model
    from tests.support.server_process import free_port

    config = """max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
"""
    slow = next(f"slow{i}" for i in range(100) if model_owner_of(f"slow{i}", 2) == 0)
    fast = next(f"fast{i}" for i in range(100) if model_owner_of(f"fast{i}", 2) == 1)
    write_python_model(tmp_path, slow, SLOW_START_PY, config)
    write_model(tmp_path, fast, mlp_model(), "max_batch_size: 8\n")
    ports = (free_port(), free_port(), free_port())
    command = serve_command(tmp_path, *ports, "--workers", "2", "--shared-batching")
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while f"model '{fast}' version 1 is READY" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        slots = {
            int(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2]): pid
            for pid in worker_pids(process.pid)
        }
        os.kill(slots[0], signal.SIGKILL)
        killed_at = time.monotonic()
        assert process.wait(timeout=60) != 0
        stopped_after = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "worker 0 exited with -9 before it was ready" in log_path.read_text()
    assert stopped_after < 20, log_path.read_text()


def test_shared_batching_starts_in_poll_mode_with_polls_before_every_worker_joined(
    tmp_path: Path,
) -> None:
    """A poll the supervisor sends before the second worker has joined must not hold up its
    joining: the first worker's start-up load waits for the models the second one owns (it
    hung until its wait for the owner ran out, 120 s)."""
    from tests.support.python_models import write_batch_probe

    names = [f"probe{i}" for i in range(6)]  # owned by both workers
    for name in names:
        write_batch_probe(tmp_path, name, queue_delay_us=0)
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    for _ in range(2):  # the order the workers join in varies: each start hung 2 times in 3
        with running_server(
            tmp_path, "--workers", "2", "--shared-batching", *flags, timeout=60
        ) as server:
            for name in names:
                status, answer = fresh(f"http://{server.http_url}/v2/models/{name}/infer", body)
                assert status == 200, answer


# Python models with one FP32 input X and output Y of one element per row
XY_CONFIG = """max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]
"""
IDENTITY_PY = """\
import time

import triton_python_backend_utils as pb_utils

INITIALIZE_S = 0


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(INITIALIZE_S)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())]) for r in requests]
"""
SLOW_INIT_PY = IDENTITY_PY.replace("INITIALIZE_S = 0", "INITIALIZE_S = 4")


def test_shared_batching_a_broken_model_fixed_in_poll_mode_is_ready_on_every_worker(
    tmp_path: Path,
) -> None:
    """The workers that do not load the model ask its owner how its load of the fixed files
    ended; the owner answers for that poll, not with the failure its entry still holds from the
    last one (else those workers would keep it unavailable until its files change again)."""
    from tests.support.python_models import (
        INIT_RAISES_PY,
        write_batch_probe,
        write_python_model,
    )

    model_dir = write_python_model(tmp_path, "broken", INIT_RAISES_PY, XY_CONFIG)
    for i in range(4):  # models owned by both workers, loaded first by their owners
        write_batch_probe(tmp_path, f"probe{i}", queue_delay_us=0)
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    with running_server(
        tmp_path, "--workers", "2", "--shared-batching", "--no-strict-readiness", *flags
    ) as server:
        ready_url = f"http://{server.http_url}/v2/models/broken/ready"
        assert {fresh(ready_url)[0] for _ in range(ATTEMPTS)} == {400}
        (model_dir / "1" / "model.py").write_text(IDENTITY_PY)
        deadline = time.monotonic() + 30
        while {fresh(ready_url)[0] for _ in range(ATTEMPTS)} != {200}:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.3)
        body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]}
        url = f"http://{server.http_url}/v2/models/broken/infer"
        for _ in range(ATTEMPTS):
            status, answer = fresh(url, body)
            assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [2.0], answer


def test_shared_batching_a_model_its_owner_cannot_load_is_unavailable_on_every_worker(
    tmp_path: Path,
) -> None:
    """The workers that do not load a model report what its owner's load gave: a model whose
    initialize raises is not ready, with the owner's reason, whichever worker is asked."""
    from tests.support.python_models import INIT_RAISES_PY, write_python_model

    write_python_model(tmp_path, "broken", INIT_RAISES_PY, XY_CONFIG)
    write_model(tmp_path, "mlp", mlp_model())
    with running_server(
        tmp_path, "--workers", "2", "--shared-batching", "--no-strict-readiness"
    ) as server:
        assert answers(server, "/v2/models/broken/ready") == Counter({400: ATTEMPTS})
        assert answers(server, "/v2/models/mlp/ready") == Counter({200: ATTEMPTS})
        for _ in range(8):
            status, body = fresh(f"http://{server.http_url}/v2/repository/index", {})
            assert status == 200
            (row,) = [r for r in json.loads(body) if r["name"] == "broken"]
            assert row["state"] == "UNAVAILABLE" and "cannot load the weights" in row["reason"], row


def worker_in_slot(supervisor_pid: int, slot: int) -> int:
    """The pid of the worker in `slot` (`python -m server.workers.worker SETTINGS SLOT`)."""
    for pid in worker_pids(supervisor_pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if str(slot).encode() in argv[-2:]:
            return pid
    raise AssertionError(f"no worker in slot {slot}")


def test_shared_batching_answers_unavailable_while_the_owner_restarts(tmp_path: Path) -> None:
    """With the model's owner killed, the other worker (which has no instance of the model)
    answers its requests 503 with the reason, stays ready, and serves them again once the owner
    is back."""
    from server.workers.sequences import model_owner_of

    write_model(tmp_path, "mlp", mlp_model())
    with running_server(tmp_path, "--workers", "2", "--shared-batching") as server:
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        assert fresh(url, mlp_request(1))[0] == 200
        owner = worker_in_slot(server.process.pid, model_owner_of("mlp", 2))
        os.kill(owner, signal.SIGKILL)
        while owner in worker_pids(server.process.pid):  # reaped: its port is closed
            time.sleep(0.01)
        status, answer = fresh(url, mlp_request(1))
        assert status == 503 and b"is not running (it restarts)" in answer, answer
        assert fresh(f"http://{server.http_url}/v2/health/ready")[0] == 200
        wait_for_workers(server.process.pid, 2, other_than={owner})
        deadline = time.monotonic() + 60
        while fresh(url, mlp_request(1))[0] != 200:
            assert time.monotonic() < deadline, "the model did not come back"
            time.sleep(0.1)


def test_shared_batching_an_owner_killed_during_a_load_loads_it_again_for_every_worker(
    tmp_path: Path,
) -> None:
    """The owner dies while it loads the model for a load call: its replacement joins at once
    (it used to wait for that call to end, while the other worker waited for the owner: 120 s,
    then the model was unavailable there for good), loads the model for that call, and every
    worker serves it."""
    import tritonclient.http as httpclient

    from server.workers.sequences import model_owner_of
    from tests.support.python_models import write_python_model

    write_python_model(tmp_path, "slow_init", SLOW_INIT_PY, XY_CONFIG)
    flags = ("--model-control-mode", "explicit")
    with running_server(tmp_path, "--workers", "2", "--shared-batching", *flags) as server:
        owner = worker_in_slot(server.process.pid, model_owner_of("slow_init", 2))

        def load() -> None:  # its connection may be the owner's, which dies
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
            with contextlib.suppress(Exception):
                client.load_model("slow_init")

        loading = threading.Thread(target=load)
        loading.start()
        time.sleep(1.5)  # the owner is in initialize
        os.kill(owner, signal.SIGKILL)
        killed = time.monotonic()
        wait_for_workers(server.process.pid, 2, other_than={owner})
        ready_url = f"http://{server.http_url}/v2/models/slow_init/ready"
        while {fresh(ready_url)[0] for _ in range(ATTEMPTS)} != {200}:
            assert time.monotonic() - killed < 60, (
                [fresh(ready_url) for _ in range(6)],
                [fresh(f"http://{server.http_url}/v2/repository/index", {}) for _ in range(4)],
            )
            time.sleep(0.3)
        loading.join(timeout=60)
        body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}]}
        url = f"http://{server.http_url}/v2/models/slow_init/infer"
        for _ in range(ATTEMPTS):
            status, answer = fresh(url, body)
            assert status == 200 and json.loads(answer)["outputs"][0]["data"] == [3.0], answer


RUNNING_SUM_STREAM_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}  # per sequence, in this instance's memory: the owner's alone

    def execute(self, requests):
        for request in requests:
            sequence = request.correlation_id()
            x = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().sum())
            self.sums[sequence] = self.sums.get(sequence, 0) + x
            sender = request.get_response_sender()
            for k in (1, 10):
                out = np.array([[self.sums[sequence] * k]], np.int32)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def stream_step(
    server: ServerProcess, sequence: int, responses: int, start: bool = False, end: bool = False
) -> list[tuple[Any, Any]]:
    """One step of `sequence` to running_sum on a fresh gRPC stream (a fresh connection, so
    any worker): the first `responses` (result, error) pairs it gets."""
    import queue

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[sequence]], np.int32))
    client.async_stream_infer(
        "running_sum", [tensor], sequence_id=sequence, sequence_start=start, sequence_end=end
    )
    got = [answers.get(timeout=30) for _ in range(responses)]
    client.stop_stream()
    client.close()
    return got


def test_a_decoupled_sequence_streams_from_its_owner_whichever_worker_its_stream_reaches(
    tmp_path: Path,
) -> None:
    """Each step on a fresh gRPC stream (fresh connection): every step runs on the worker that
    owns the sequence, so the model's per-sequence memory sees all of them, and both of each
    step's responses come back through the worker the stream reached."""
    from server.workers.sequences import owner_of
    from tests.support.python_models import write_python_model

    write_python_model(
        tmp_path,
        "running_sum",
        RUNNING_SUM_STREAM_PY,
        """max_batch_size: 4
input [{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUTPUT" data_type: TYPE_INT32 dims: [1] }]
model_transaction_policy { decoupled: true }
sequence_batching { max_sequence_idle_microseconds: 60000000 }
""",
    )
    sequences, steps = (11, 12, 13, 14, 15, 16), 5
    assert {owner_of(sid, 2) for sid in sequences} == {0, 1}
    with running_server(tmp_path, "--workers", "2", "--no-shared-batching") as server:
        for t in range(steps):
            for sid in sequences:
                got = stream_step(server, sid, 2, start=t == 0, end=t == steps - 1)
                assert [error for _, error in got] == [None, None], (sid, t)
                values = [int(result.as_numpy("OUTPUT")[0, 0]) for result, _ in got]
                assert values == [sid * (t + 1), sid * (t + 1) * 10], (sid, t)
        # the owner's error comes back unchanged: a step without START of an ended sequence
        for sid in sequences:
            [(result, error)] = stream_step(server, sid, 1)
            assert result is None and "must specify the START flag" in str(error), (sid, error)


def tracing_workers(repository: Path, flags: list[str]) -> AbstractContextManager[ServerProcess]:
    """`ferry serve --workers 2` with these `--trace-config` values."""
    trace_config = [arg for flag in flags for arg in ("--trace-config", flag)]
    return running_server(repository, "--workers", "2", "--no-shared-batching", *trace_config)


def test_triton_trace_files_hold_every_workers_traces_numbered_as_one_server(
    tmp_path: Path,
) -> None:
    """Each worker sends its traces to the supervisor, which writes Triton's file(s) as one
    server would: every request's trace once, ids 1..N, `log_frequency` counted server-wide."""
    write_model(tmp_path / "repo", "mlp", mlp_model(), "max_batch_size: 8\n")
    requests = 12
    for log_frequency in (0, 4):
        trace_file = tmp_path / f"trace-{log_frequency}.json"
        flags = [
            "rate=1,level=TIMESTAMPS",
            f"triton,file={trace_file}",
            f"triton,log-frequency={log_frequency}",
        ]
        with tracing_workers(tmp_path / "repo", flags) as server:
            url = f"http://{server.http_url}/v2/models/mlp/infer"
            for index in range(requests):  # fresh connections: both workers serve some
                status, _ = fresh(url, {**mlp_request(1), "id": f"req-{index}"})
                assert status == 200
        if log_frequency:
            files = [tmp_path / f"{trace_file.name}.{n}" for n in range(requests // log_frequency)]
            parts = [json.loads(path.read_text()) for path in files]
            assert [len([e for e in p if "model_name" in e]) for p in parts] == [4, 4, 4]
            entries = [entry for part in parts for entry in part]
            assert not trace_file.exists()
        else:
            entries = json.loads(trace_file.read_text())
        headers = [e for e in entries if "model_name" in e]
        assert sorted(e["request_id"] for e in headers) == sorted(
            f"req-{i}" for i in range(requests)
        )
        assert sorted(e["id"] for e in headers) == list(range(1, requests + 1))
        for header in headers:  # each trace's timestamps under its (renumbered) id
            stamps = [e for e in entries if e["id"] == header["id"] and "timestamps" in e]
            assert stamps[0]["timestamps"][0]["name"] == "REQUEST_START"
            assert stamps[-1]["timestamps"][0]["name"] == "REQUEST_END"


def test_trace_count_is_the_servers_across_workers(tmp_path: Path) -> None:
    """`count=5`: the server traces 5 requests in all, not 5 a worker."""
    write_model(tmp_path / "repo", "mlp", mlp_model(), "max_batch_size: 8\n")
    trace_file = tmp_path / "trace.json"
    flags = ["rate=1,count=5,level=TIMESTAMPS", f"triton,file={trace_file}"]
    with tracing_workers(tmp_path / "repo", flags) as server:
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        for _ in range(40):  # fresh connections: both workers serve well over their share
            assert fresh(url, mlp_request(1))[0] == 200
    entries = json.loads(trace_file.read_text())
    assert len([e for e in entries if "model_name" in e]) == 5


def test_sampling_is_the_servers_across_workers(tmp_path: Path) -> None:
    """`--log-requests-rate 0.5` logs every second success of the server and `trace_rate`
    traces every rate-th request of the server, whichever worker took them, as one process
    does (counting each its own requests, the workers would pick other requests, and more or
    fewer of them); a model's trace setting changed at run time counts from its first request
    on every worker."""
    write_model(tmp_path / "repo", "mlp", mlp_model(), "max_batch_size: 8\n")
    trace_file = tmp_path / "trace.json"
    with running_server(
        tmp_path / "repo",
        "--workers",
        "2",
        "--no-shared-batching",
        "--log-requests",
        "--log-requests-rate",
        "0.5",
        "--log-format",
        "json",
        "--trace-config",
        "rate=3,level=TIMESTAMPS",
        "--trace-config",
        f"triton,file={trace_file}",
    ) as server:
        url = f"http://{server.http_url}/v2/models/mlp/infer"
        sent = [f"req-{index}" for index in range(ATTEMPTS)]
        for request_id in sent:  # one at a time, fresh connections: both workers take some
            assert fresh(url, {**mlp_request(1), "id": request_id})[0] == 200
        setting = f"http://{server.http_url}/v2/models/mlp/trace/setting"
        assert fresh(setting, {"trace_rate": "2"})[0] == 200
        changed = [f"mlp-{index}" for index in range(6)]
        for request_id in changed:
            assert fresh(url, {**mlp_request(1), "id": request_id})[0] == 200
    lines = [
        json.loads(line)
        for line in server.log().splitlines()
        if line.startswith("{") and '"ferry.requests"' in line
    ]
    assert {line["worker"] for line in lines} == {0, 1}, server.log()
    # successes 2, 4, ... of the server (the rate's count went on across the trace change)
    assert sorted(line["request_id"] for line in lines) == sorted((sent + changed)[1::2])
    entries = json.loads(trace_file.read_text())
    traced = [e["request_id"] for e in entries if "model_name" in e]
    assert sorted(traced) == sorted(sent[2::3] + changed[1::2])


def test_shared_batching_logs_each_model_change_once(tmp_path: Path) -> None:
    """Under --shared-batching a model is loaded in its owner only: the server says each
    model's state changes once (its owner's lines), as one process does, not once a worker."""
    names = ("a", "d", "e")  # owned by worker 0, 1 and 1
    for name in names:
        write_model(tmp_path, name, mlp_model(), "max_batch_size: 8\n")
    with running_server(
        tmp_path,
        "--workers",
        "2",
        "--shared-batching",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
    ) as server:
        assert fresh(f"http://{server.http_url}/v2/repository/models/d/unload", {})[0] == 200
    log = server.log()
    for name in names:
        assert log.count(f"model '{name}' version 1 is READY") == 1, log
    assert log.count("model 'd' version 1 unloaded") == 1, log
    for worker, name in ((0, "a"), (1, "d")):  # each owner said its own
        said = f" ferry.models: model '{name}' version 1 is READY"
        assert any(said in line for line in worker_lines(log, worker)), log


CACHE_COUNTS = ("success", "fail", "cache_hit", "cache_miss", "compute_infer")
CACHE_GAUGES = ("nv_cache_num_hits", "nv_cache_num_misses", "nv_cache_num_entries")


def cache_counts(server: ServerProcess, model: str) -> dict[str, float]:
    """A cached model's request counts (its statistics) and the server's nv_cache_* counts."""
    url = f"http://{server.http_url}/v2/models/{model}/stats"
    stats = json.loads(fresh(url)[1])["model_stats"][0]
    counts: dict[str, float] = {
        name: stats["inference_stats"][name]["count"] for name in CACHE_COUNTS
    }
    counts["inference_count"] = stats["inference_count"]
    counts["execution_count"] = stats["execution_count"]
    counts.update({name: metric_value(server.metrics_url, name) for name in CACHE_GAUGES})
    return counts


@pytest.mark.parametrize(
    "flags", [["--workers", "2", "--no-shared-batching"], ["--workers", "2", "--shared-batching"]]
)
def test_the_response_cache_is_the_servers_across_workers(tmp_path: Path, flags: list[str]) -> None:
    """A repeated request hits whichever worker its connection reached: a cached model's
    requests run in its owner's cache, so the counts are a single process's for the same
    requests (fresh connections spread over both workers, then one keep-alive connection,
    which may move to the owner under --shared-batching)."""
    model = mlp_model(4, 8, 3, input_name="x", output_name="y")
    write_model(tmp_path, "cached", model, "max_batch_size: 8\nresponse_cache { enable: true }\n")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}]}
    bad = {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0.5] * 5}]}
    counts = []
    answers_seen: set[bytes] = set()
    for server_flags in (["--workers", "1"], flags):
        with running_server(
            tmp_path, "--cache-config", "local,size=1000000", *server_flags
        ) as server:
            url = f"http://{server.http_url}/v2/models/cached/infer"
            for _ in range(ATTEMPTS):  # all on one worker has p = 2**-29
                status, answer = fresh(url, body)
                assert status == 200
                answers_seen.add(answer)
            assert fresh(url, bad)[0] == 400  # its error comes back unchanged from the owner
            connection = http.client.HTTPConnection(server.http_url)
            for _ in range(4):
                connection.request("POST", "/v2/models/cached/infer", json.dumps(body))
                response = connection.getresponse()
                assert response.status == 200
                answers_seen.add(response.read())
            connection.close()
            counts.append(cache_counts(server, "cached"))
    assert counts[1] == counts[0]
    assert counts[0]["cache_hit"] == ATTEMPTS + 3 and counts[0]["cache_miss"] == 1
    assert len(answers_seen) == 1


def test_the_response_cache_stays_within_the_servers_size_across_workers(tmp_path: Path) -> None:
    """`--cache-config local,size=` is the server's: the owner of the one cached model holds
    what a single process would (the workers lease from one pool), never more, and the merged
    nv_cache_util stays a fill ratio of the whole."""
    model = mlp_model(4, 8, 3, input_name="x", output_name="y")
    write_model(tmp_path, "cached", model, "max_batch_size: 8\nresponse_cache { enable: true }\n")
    # one response: 3 floats of output + bookkeeping; 300 bytes hold three
    with running_server(
        tmp_path, "--workers", "2", "--no-shared-batching", "--cache-config", "local,size=300"
    ) as server:
        url = f"http://{server.http_url}/v2/models/cached/infer"
        for value in range(10):  # fresh connections, on both workers: all cached in the owner
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}
            body["inputs"][0]["data"] = [float(value)] * 4
            assert fresh(url, body)[0] == 200
        gauges = {
            name: metric_value(server.metrics_url, name)
            for name in ("nv_cache_num_entries", "nv_cache_num_evictions", "nv_cache_util")
        }
    assert gauges["nv_cache_num_entries"] == 3  # as a single process (a split size held one)
    assert gauges["nv_cache_num_evictions"] == 7
    assert 0 < gauges["nv_cache_util"] <= 1
