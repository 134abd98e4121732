"""`ferry serve` scraped by a real Prometheus: every dashboard query runs and returns data."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitoring.reference import write_reference
from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
WINDOW = 100
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("promtool") is None,
        reason="prometheus/promtool not installed (make system-deps)",
    ),
]


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@contextmanager
def running_prometheus(target: str) -> Iterator[str]:
    """A real Prometheus on loopback scraping `target` every second; always stopped."""
    workdir = Path(tempfile.mkdtemp(prefix="ferry-prometheus-"))
    port = free_port()
    (workdir / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: ferry\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "prometheus.log").read_text()) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def query(prometheus: str, expr: str) -> dict[str, Any]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return dict(get_json(url))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana variables substituted) for every dashboard panel."""
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in (
                    ("$__rate_interval", "1m"),
                    ("$model", ".*"),
                    ("$version", ".*"),
                    ("$pod", ".*"),
                ):
                    expr = expr.replace(var, value)
                queries.append((panel["title"], expr))
    return queries


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    model_dir = write_model(repo, "clf", mlp_model(in_features=16, out_features=4))
    rng = np.random.default_rng(0)
    write_reference(
        model_dir / "1",
        model_dir / "1" / "model.onnx",
        {"input": rng.standard_normal((2000, 16)).astype(np.float32)},
        window=WINDOW,
        alpha=0.05,
        simulations=100,
    )
    broken = write_model(repo, "broken_ref", mlp_model(in_features=16, out_features=4))
    (broken / "1" / "reference.npz").write_bytes(b"this is not an npz file")
    return repo


def send_burst(server: ServerProcess) -> None:
    """Normal traffic, then shifted traffic, then bad requests, over HTTP and gRPC."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(1)
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for i in range(150):
            shift = 2.0 if i >= 100 else 0.0  # 400 normal rows, then 200 shifted rows
            x = (rng.standard_normal((4, 16)) + shift).astype(np.float32)
            module, client = (grpcclient, grpc) if i % 5 == 0 else (httpclient, http)
            inp = module.InferInput("input", [4, 16], "FP32")
            inp.set_data_from_numpy(x)
            client.infer("clf", [inp])
            if i < 10:
                client.infer("broken_ref", [inp])
        for bad in (np.zeros((2, 15), np.float32), np.zeros((2, 16), np.float64)):
            inp = httpclient.InferInput(
                "input", list(bad.shape), "FP32" if bad.dtype == np.float32 else "FP64"
            )
            inp.set_data_from_numpy(bad)
            with pytest.raises(InferenceServerException):
                http.infer("clf", [inp])
    finally:
        http.close()
        grpc.close()


def test_dashboard_queries_against_live_prometheus(repository: Path) -> None:
    with (
        running_server(
            repository, "--drift-window", str(WINDOW), "--drift-alpha", "0.05"
        ) as server,
        running_prometheus(f"127.0.0.1:{server.metrics_port}") as prometheus,
    ):
        send_burst(server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the drift worker and two scrapes catch up
            result = query(prometheus, 'ferry_drift_windows_total{model="clf"} >= 6')
            if result["data"]["result"]:
                break
            time.sleep(0.5)
        time.sleep(2.5)
        detail = get_json(f"http://{server.http_url}/v2/models/clf/drift")
        broken = get_json(f"http://{server.http_url}/v2/models/broken_ref/versions/1/drift")
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            exposition = response.read()
        results = {(title, expr): query(prometheus, expr) for title, expr in panel_queries()}
        detected = query(prometheus, 'ferry_drift_detected{model="clf",scope="inputs"}')
    failed = {k: r.get("error") for k, r in results.items() if r.get("status") != "success"}
    assert not failed, failed
    empty = [k for k, r in results.items() if not r["data"]["result"]]
    assert not empty, f"panels without data: {empty}"
    assert detail["state"] == "active" and detail["windows_total"] == 6
    assert detail["last_window"]["drift"] is True
    assert detected["data"]["result"][0]["value"][1] == "1"
    assert broken["state"] == "disabled" and "reference unusable" in broken["reason"]
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    lint = (check.stdout + check.stderr).decode().splitlines()
    assert check.returncode in (0, 3), lint  # 3 = naming lints only; the text parsed
    assert all(line.startswith("nv_inference_") for line in lint if line.strip()), lint
