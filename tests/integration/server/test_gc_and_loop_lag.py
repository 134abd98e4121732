"""`ferry serve`'s garbage-collection policy and loop-lag probe, seen from outside the process."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, running_server


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("gc-repo")
    write_model(repo, "mlp", mlp_model(), "max_batch_size: 8\ndynamic_batching { }\n")
    return repo


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return str(response.read().decode())


def young_collections(server: ServerProcess) -> float:
    match = re.search(
        r'^python_gc_collections_total\{generation="0"\} (\S+)$', scrape(server), re.M
    )
    assert match, "the process's GC metrics are missing"
    return float(match.group(1))


def send_requests(server: ServerProcess, count: int) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = httpclient.InferInput("input", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32), binary_data=False)
    for _ in range(count):
        client.infer("mlp", [x])
    client.close()


def concurrent_load(server: ServerProcess, tmp_path: Path, seconds: int = 2) -> None:
    """64 keep-alive clients with wrk: the collector only has work when many requests are in
    flight (one at a time, reference counting frees each request's objects as it ends)."""
    body = tmp_path / "body.json"
    body.write_text(
        '{"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": '
        + str([0.5] * 16)
        + "}]}"
    )
    script = tmp_path / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = io.open("{body}"):read("*a")\n')
    url = f"http://{server.http_url}/v2/models/mlp/infer"
    subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script), url],
        check=True,
        capture_output=True,
    )


def collections_during_load(repository: Path, policy: str, tmp_path: Path) -> float:
    with running_server(repository, "--gc-policy", policy, "--no-drift") as server:
        send_requests(server, 20)  # warm-up
        before = young_collections(server)
        concurrent_load(server, tmp_path)
        return young_collections(server) - before


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by `make test`")
def test_the_server_policy_collects_far_less_often_than_pythons_defaults(
    repository: Path, tmp_path: Path
) -> None:
    ours = collections_during_load(repository, "server", tmp_path)
    python = collections_during_load(repository, "python", tmp_path)
    assert python >= 10, "CPython's defaults collect many times under this load"
    assert ours * 10 <= python


def test_loop_lag_probe_is_exported_only_when_on(repository: Path) -> None:
    with running_server(repository, "--loop-lag-probe", "--no-drift") as server:
        send_requests(server, 20)
        text = scrape(server)
        count = re.search(r"^ferry_event_loop_lag_seconds_count (\S+)$", text, re.M)
        assert count and float(count.group(1)) > 0
        assert re.search(r"^ferry_event_loop_lag_max_seconds \S+$", text, re.M)
    with running_server(repository, "--no-drift") as server:
        assert "ferry_event_loop_lag" not in scrape(server)
