"""k8s/ against a real `ferry serve`: probe and scrape paths answer on the listener their port
maps to, the HPA's custom metric is built from series ferry exports, and checkov passes the
rendered manifests and the Dockerfile. Broken copies of k8s/ must fail, naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.unit.deploy.support import REPO, copy_k8s, edit, load_validate

validate = load_validate()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("repo")
    write_model(repository, "mlp", mlp_model())
    with running_server(repository) as process:
        body = json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
                ]
            }
        ).encode()
        request = urllib.request.Request(
            f"http://{process.http_url}/v2/models/mlp/infer",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        yield process


@pytest.fixture(scope="module")
def metrics_text(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return str(response.read().decode())


def _bases(server: ServerProcess) -> dict[str, str]:
    return {
        "http": f"http://{server.http_url}",
        "metrics": server.metrics_url.rsplit("/metrics", 1)[0],
    }


def _live(k8s: Path, server: ServerProcess, metrics_text: str) -> list[str]:
    rendered, problems = validate.render_all(k8s)
    assert problems == []
    return list(validate.check_live(rendered, _bases(server), metrics_text, k8s))


def test_probes_scrapes_and_hpa_metric_hold_against_ferry_serve(
    server: ServerProcess, metrics_text: str
) -> None:
    assert _live(REPO / "k8s", server, metrics_text) == []


def test_adapter_rule_reads_series_ferry_exports(metrics_text: str) -> None:
    exported = validate.exported_metric_names(metrics_text)
    for rule in validate.adapter_rules().values():
        assert set(validate.adapter_metric_sources(rule)) <= exported


def test_probe_path_the_server_does_not_serve_fails(
    tmp_path: Path, server: ServerProcess, metrics_text: str
) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base/deployment.yaml", "path: /v2/health/live", "path: /v2/health/alive")
    problems = _live(k8s, server, metrics_text)
    assert any("livenessProbe path /v2/health/alive answered 404" in p for p in problems), problems


def test_kserve_probe_path_the_server_does_not_serve_fails(
    tmp_path: Path, server: ServerProcess, metrics_text: str
) -> None:
    k8s = copy_k8s(tmp_path)
    text = (k8s / "overlays/kserve/servingruntime.yaml").read_text()
    (k8s / "overlays/kserve/servingruntime.yaml").write_text(
        text.replace("path: /v2/health/ready", "path: /ready")
    )
    problems = _live(k8s, server, metrics_text)
    assert any("kserve" in p and "path /ready answered 404" in p for p in problems), problems


def test_scrape_path_the_server_does_not_serve_fails(
    tmp_path: Path, server: ServerProcess, metrics_text: str
) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "components/monitoring/servicemonitor.yaml", "path: /metrics", "path: /stats")
    problems = _live(k8s, server, metrics_text)
    assert any("ServiceMonitor/ferry scrape path /stats answered 404" in p for p in problems), (
        problems
    )


def test_hpa_metric_that_nothing_exports_fails(
    tmp_path: Path, server: ServerProcess, metrics_text: str
) -> None:
    k8s = copy_k8s(tmp_path)
    values = k8s / "prometheus-adapter/values.yaml"
    values.write_text(
        values.read_text().replace("nv_inference_queue_duration_us", "nv_inference_queue_wait_us")
    )
    edit(
        k8s / "base/hpa.yaml",
        "name: ferry_queue_time_per_request_us",
        "name: ferry_queue_time_per_request_us\n",
    )
    problems = _live(k8s, server, metrics_text)
    assert any(
        "'ferry_queue_time_per_request_us' reads ['nv_inference_queue_wait_us']" in p
        and "does not export" in p
        for p in problems
    ), problems


def test_hpa_metric_without_an_adapter_rule_fails(
    tmp_path: Path, server: ServerProcess, metrics_text: str
) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "base/hpa.yaml",
        "name: ferry_queue_time_per_request_us",
        "name: ferry_inflight_requests",
    )
    problems = _live(k8s, server, metrics_text)
    assert any("'ferry_inflight_requests': no rule" in p for p in problems), problems


def test_validate_script_runs_for_users(server: ServerProcess) -> None:
    """`python k8s/validate.py check --server ... --metrics ...` exits 0 and says ok."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "k8s/validate.py"),
            "check",
            "--server",
            f"http://{server.http_url}",
            "--metrics",
            server.metrics_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_checkov_passes_rendered_manifests_and_dockerfile() -> None:
    """checkov --skip-download (its own venv under build/deploy-tools, made on first use)."""
    rendered, problems = validate.render_all()
    assert problems == []
    assert validate.run_checkov(rendered) == []


@pytest.mark.slow
def test_checkov_flags_a_writable_root_filesystem() -> None:
    rendered, _ = validate.render_all()
    objs: list[dict[str, Any]] = rendered["cpu"]
    for obj in objs:
        if obj["kind"] == "Deployment":
            obj["spec"]["template"]["spec"]["containers"][0]["securityContext"][
                "readOnlyRootFilesystem"
            ] = False
    (problem,) = validate.run_checkov({"cpu": objs}, REPO / "Dockerfile")
    assert "CKV_K8S_22" in problem


def test_secured_overlay_args_serve_with_open_probes(tmp_path: Path) -> None:
    """The cpu-secured container args, with the Secrets' files and key in place, start a real
    `ferry serve`: probes answer 200 without a key, gRPC speaks TLS, admin APIs need the key."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tests.support.tls import make_tls_files

    rendered, problems = validate.render_all()
    assert problems == []
    (container,) = [
        c
        for obj in rendered["cpu-secured"]
        if obj["kind"] == "Deployment"
        for c in obj["spec"]["template"]["spec"]["containers"]
    ]
    tls = make_tls_files(tmp_path / "tls")
    secret_files = {
        "/etc/ferry/tls/tls.crt": tls.server_cert,
        "/etc/ferry/tls/tls.key": tls.server_key,
        "/etc/ferry/tls/ca.crt": tls.ca_cert,
    }
    key = "k8s-admin-secret"
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag in ("--model-repository", "--http-port", "--grpc-port", "--metrics-port"):
            continue  # the test's own repository and free ports
        arg = arg.replace("$(FERRY_ADMIN_KEY)", key)
        args.append(f"{flag}={secret_files[value]}" if value in secret_files else arg)
    repository = tmp_path / "repo"
    write_model(repository, "mlp", mlp_model())
    with running_server(repository, *args) as server:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as answer:
                assert answer.status == 200, probe
        http = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(InferenceServerException, match="This API is restricted"):
            http.get_inference_statistics("mlp")
        assert http.get_inference_statistics("mlp", headers={"admin-key": key})
        grpc = grpcclient.InferenceServerClient(server.grpc_url, **tls.client_kwargs(False))
        try:
            x = grpcclient.InferInput("input", [1, 16], "FP32")
            x.set_data_from_numpy(np.ones((1, 16), np.float32))
            assert grpc.infer("mlp", [x]).as_numpy("output").shape == (1, 4)
            with pytest.raises(InferenceServerException, match="This protocol is restricted"):
                grpc.get_model_repository_index()
            admin = {"triton-grpc-protocol-admin-key": key}
            assert grpc.get_model_repository_index(headers=admin) is not None
        finally:
            grpc.close()
