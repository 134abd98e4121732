"""k8s/: yamllint, kustomize rendering, schemas, cross-object checks, and broken copies of k8s/
that each check must reject with a message naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.support import REPO, copy_k8s, edit, load_validate

validate = load_validate()
OVERLAYS = sorted(p.name for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())
# ids like "overlay=gpu": a bare "gpu" id would collide with the gpu marker's keyword (conftest).
IDS = [f"overlay={o}" for o in OVERLAYS]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    result, problems = validate.render_all()
    assert problems == []
    return result


def _kinds(objs: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objs}


def test_overlays_are_the_documented_ones() -> None:
    assert {"cpu", "cpu-secured", "gpu", "kserve"} <= set(OVERLAYS)


def test_yamllint_is_clean() -> None:
    assert validate.yamllint() == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_overlay_renders_with_kubectl_kustomize(overlay: str) -> None:
    objs = validate.render(REPO / "k8s" / "overlays" / overlay)
    if overlay == "kserve":
        assert {"ServingRuntime", "InferenceService", "PodMonitor"} <= _kinds(objs)
        assert not {"Deployment", "Service", "HorizontalPodAutoscaler"} & _kinds(objs)
    else:
        assert {
            "Deployment",
            "Service",
            "ServiceAccount",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
        } <= _kinds(objs)
    assert {"PrometheusRule", "ConfigMap"} <= _kinds(objs)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_schemas_strict(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert validate.validate_schemas(rendered[overlay], overlay) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_cross_object_consistency(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert validate.check_consistency(overlay, rendered[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_rendered_rules_and_dashboards_equal_monitoring_folder(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    assert validate.check_monitoring_equal(overlay, rendered[overlay]) == []
    dashboards = [
        o
        for o in rendered[overlay]
        if o["kind"] == "ConfigMap"
        and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert dashboards, "no ConfigMap labelled grafana_dashboard=1"


def test_generated_monitoring_is_in_sync() -> None:
    assert validate.sync_monitoring() == []


def test_gpu_overlay_requests_a_gpu_and_runs_the_gpu_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = [o for o in rendered["gpu"] if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (ferry,) = pod["containers"]
    assert ferry["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert ferry["image"].endswith(":gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    (cpu,) = [o for o in rendered["cpu"] if o["kind"] == "Deployment"]
    assert (
        "nvidia.com/gpu"
        not in cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_container_args_parse_with_ferrys_cli(rendered: dict[str, list[dict[str, Any]]]) -> None:
    params = validate.parse_serve_args(
        ["--model-repository=/models", "--http-port=8000", "--model-control-mode=poll"]
    )
    assert params["http_port"] == 8000 and str(params["model_repository"]) == "/models"
    for overlay, objs in rendered.items():
        for container in validate.ferry_containers(overlay, objs):
            validate.parse_serve_args(container.container["args"])
    with pytest.raises(ValueError, match="--http-prot"):
        validate.parse_serve_args(["--model-repository=/models", "--http-prot=8000"])
    with pytest.raises(ValueError, match="model-control-mode"):
        validate.parse_serve_args(["--model-repository=/models", "--model-control-mode=lazy"])


def test_hpa_metric_comes_from_the_shipped_adapter_rule() -> None:
    rules = validate.adapter_rules()
    rule = rules["ferry_queue_time_per_request_us"]
    assert validate.adapter_metric_sources(rule) == [
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    ]


# ------------------------------------------------------------------- broken copies of k8s/


def _problems(k8s: Path, overlay: str = "cpu", schemas: bool = False) -> list[str]:
    objs = validate.render(k8s / "overlays" / overlay)
    problems = validate.check_consistency(overlay, objs, k8s)
    return problems + (validate.validate_schemas(objs, overlay, k8s) if schemas else [])


def test_overlay_referencing_a_missing_file_fails_naming_it(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "overlays/cpu/kustomization.yaml",
        "  - ../../base\n",
        "  - ../../base\n  - extra-config.yaml\n",
    )
    rendered, problems = validate.render_all(k8s)
    assert "cpu" not in rendered
    assert any("overlays/cpu" in p and "extra-config.yaml" in p for p in problems), problems


def test_missing_overlay_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    (k8s / "overlays/kserve/kustomization.yaml").rename(k8s / "overlays/kserve/x.yaml")
    _, problems = validate.render_all(k8s)
    assert any("overlays/kserve" in p for p in problems), problems


def test_yamllint_error_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base/service.yaml", "  type: ClusterIP\n", "  type: ClusterIP\n  type: NodePort\n")
    (problem,) = validate.yamllint(k8s)
    assert "service.yaml" in problem and "duplication" in problem


def test_probe_path_change_fails_statically(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base/deployment.yaml", "path: /v2/health/live", "path: /healthz")
    problems = _problems(k8s)
    assert any("livenessProbe path '/healthz'" in p for p in problems), problems


def test_probe_on_the_metrics_port_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    text = (k8s / "base/deployment.yaml").read_text()
    (k8s / "base/deployment.yaml").write_text(
        text.replace(
            "path: /v2/health/live\n              port: http",
            "path: /v2/health/live\n              port: metrics",
        )
    )
    problems = _problems(k8s)
    assert any("livenessProbe port 'metrics' is not ferry's HTTP port" in p for p in problems), (
        problems
    )


def test_service_selector_mismatch_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    service = k8s / "base/service.yaml"
    edit(
        service,
        "  selector:\n    app.kubernetes.io/name: ferry\n",
        "  selector:\n    app.kubernetes.io/name: feri\n",
    )
    problems = _problems(k8s)
    assert any("Service/ferry selector" in p for p in problems), problems


def test_servicemonitor_port_name_missing_on_service_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "components/monitoring/servicemonitor.yaml", "- port: metrics", "- port: prom")
    problems = _problems(k8s)
    assert any("ServiceMonitor/ferry endpoint port 'prom'" in p for p in problems), problems


def test_container_arg_unknown_to_ferry_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base/deployment.yaml", "- --exit-timeout-secs=30", "- --drain-secs=30")
    problems = _problems(k8s)
    assert any("--drain-secs" in p and "rejected by `ferry serve`" in p for p in problems), problems


def test_port_flag_and_container_port_disagree_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "base/deployment.yaml", "- --metrics-port=8002", "- --metrics-port=9090")
    problems = _problems(k8s)
    assert any("container port 'metrics' should be 9090" in p for p in problems), problems


def test_gpu_overlay_without_gpu_limit_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    gpu = k8s / "overlays/gpu/gpu.yaml"
    gpu.write_text(gpu.read_text().replace("              nvidia.com/gpu: 1\n", ""))
    problems = _problems(k8s, "gpu")
    assert any("without an nvidia.com/gpu limit" in p for p in problems), problems


def test_hpa_metric_without_adapter_rule_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "base/hpa.yaml", "name: ferry_queue_time_per_request_us", "name: ferry_gpu_busy_ratio"
    )
    problems = _problems(k8s)
    assert any("'ferry_gpu_busy_ratio' is produced by no rule" in p for p in problems), problems


def test_unknown_field_fails_strict_schema(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "base/deployment.yaml",
        "  revisionHistoryLimit: 5\n",
        "  revisionHistoryLimit: 5\n  minReadySecond: 5\n",
    )
    problems = _problems(k8s, schemas=True)
    assert any("Deployment/ferry invalid" in p and "minReadySecond" in p for p in problems), (
        problems
    )


def test_crd_field_outside_the_schema_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(
        k8s / "components/monitoring/servicemonitor.yaml",
        "      interval: 15s\n",
        "      intervall: 15s\n",
    )
    problems = _problems(k8s, schemas=True)
    assert any("servicemonitor.json" in p and "intervall" in p for p in problems), problems


def test_kserve_runtime_reference_must_exist(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / "overlays/kserve/inferenceservice.yaml", "runtime: ferry", "runtime: triton")
    problems = _problems(k8s, "kserve")
    assert any("runtime 'triton' is not a ServingRuntime" in p for p in problems), problems


def test_missing_security_context_fails(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    text = (k8s / "base/deployment.yaml").read_text()
    (k8s / "base/deployment.yaml").write_text(
        text.replace("            readOnlyRootFilesystem: true\n", "")
    )
    problems = _problems(k8s)
    assert any("readOnlyRootFilesystem must be true" in p for p in problems), problems


def test_edited_dashboard_copy_fails_equality(tmp_path: Path) -> None:
    k8s = copy_k8s(tmp_path)
    copy = next((k8s / validate.GENERATED / "dashboards").glob("*.json"))
    copy.write_text(copy.read_text().replace('"title"', '"title" ', 1))
    assert any("out of date" in p for p in validate.sync_monitoring(k8s))
    objs = validate.render(k8s / "overlays/cpu")
    assert any(f"dashboard {copy.name}" in p for p in validate.check_monitoring_equal("cpu", objs))


SECURE = "components/secure-api/kustomization.yaml"


def test_secured_overlay_takes_keys_and_certificates_from_secrets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (deployment,) = [o for o in rendered["cpu-secured"] if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    params = validate.parse_serve_args(container["args"])
    assert params["grpc_use_ssl"] and params["grpc_server_cert"] is not None
    assert len(params["http_restricted_api"]) == len(params["grpc_restricted_protocol"]) == 3
    env = {e["name"]: e for e in container["env"]}
    assert env["FERRY_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ferry-api-keys"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["grpc-tls"]["secret"]["secretName"] == "ferry-grpc-tls"
    # health stays open: the probes are the base's, without headers
    assert "httpHeaders" not in container["readinessProbe"]["httpGet"]
    (service,) = [o for o in rendered["cpu-secured"] if o["kind"] == "Service"]
    assert all("appProtocol" not in port for port in service["spec"]["ports"])


TRACE_LOGGING = "value: --http-restricted-api=trace,logging:admin-key="


@pytest.mark.parametrize(
    "path,old,new,expected",
    [
        pytest.param(
            SECURE,
            TRACE_LOGGING + "$(FERRY_ADMIN_KEY)",
            TRACE_LOGGING + "hunter2",
            ["writes its key in the manifest"],
            id="key written in the manifest",
        ),
        pytest.param(
            "components/secure-api/deployment.yaml",
            "          secret:\n            secretName: ferry-grpc-tls\n"
            "            defaultMode: 0440\n",
            "          emptyDir: {}\n",
            ["--grpc-server-key /etc/ferry/tls/tls.key comes from volume 'grpc-tls', not from"],
            id="certificate not from a Secret",
        ),
        pytest.param(
            SECURE,
            "value: --grpc-server-key=/etc/ferry/tls/tls.key",
            "value: --log-level=info",
            ["TLS needs --grpc-server-cert and --grpc-server-key"],
            id="TLS without a key file",
        ),
        pytest.param(
            SECURE,
            TRACE_LOGGING + "$(FERRY_ADMIN_KEY)",
            "value: --http-restricted-api=trace,logging,health:admin-key=$(FERRY_ADMIN_KEY)",
            [
                f"{probe} sends no 'admin-key' header"
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")
            ],
            id="restricted health without probe headers",
        ),
    ],
)
def test_broken_secure_api_fails(
    tmp_path: Path, path: str, old: str, new: str, expected: list[str]
) -> None:
    k8s = copy_k8s(tmp_path)
    edit(k8s / path, old, new)
    problems = _problems(k8s, "cpu-secured")
    for message in expected:
        assert any(message in p for p in problems), problems
