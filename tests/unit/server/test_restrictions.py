"""Restricted API groups: Triton's flag syntax, the API group of every HTTP route and gRPC method,
and `ferry serve`'s refusal of bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import service_pb2
from typer.testing import CliRunner

from ferry.cli import app
from server.protocol.grpc_access import GROUP_BY_METHOD
from server.protocol.http_access import HttpAccess, api_group
from server.restrictions import (
    API_GROUPS,
    GRPC_HEADER_PREFIX,
    Restriction,
    RestrictionError,
    parse_restricted_apis,
)


def test_parse_groups_key_and_value() -> None:
    parsed = parse_restricted_apis(
        ["model-repository,statistics:Admin-Key=s3cr=t", "inference:infer-key=i"],
        "http-restricted-api",
    )
    assert parsed == {
        "model-repository": Restriction("Admin-Key", "s3cr=t"),
        "statistics": Restriction("Admin-Key", "s3cr=t"),
        "inference": Restriction("infer-key", "i"),
    }
    assert "s3cr=t" not in repr(parsed)  # keys stay out of logs and tracebacks


def test_grpc_headers_carry_tritons_prefix() -> None:
    parsed = parse_restricted_apis(["health:key=v"], "grpc-restricted-protocol", GRPC_HEADER_PREFIX)
    assert parsed["health"].header == "triton-grpc-protocol-key"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("statistics", "option format is '<api groups>:<key>=<value>'"),
        ("statistics:key", "option format"),
        (":key=value", "option format"),
        ("statistics:=value", "option format"),
        ("statistics:key=", "option format"),
        ("stats:key=value", "unknown restricted api 'stats'"),
        ("statistics,statistics:key=value", "can not be specified in multiple config groups"),
    ],
)
def test_bad_settings_are_refused(spec: str, message: str) -> None:
    with pytest.raises(RestrictionError, match=message):
        parse_restricted_apis([spec], "http-restricted-api")


def test_a_group_in_two_restrictions_is_refused() -> None:
    with pytest.raises(RestrictionError, match="restricted protocol 'health' can not be specified"):
        parse_restricted_apis(
            ["health:a=1", "metadata,health:b=2"], "grpc-restricted-protocol", GRPC_HEADER_PREFIX
        )


def test_admits_only_the_exact_value() -> None:
    restriction = Restriction("key", "s3cret")
    assert restriction.admits("s3cret") and restriction.admits(b"s3cret")
    for wrong in (None, "", "S3CRET", "s3cret ", "s3cre", b"s3cret\x00"):
        assert not restriction.admits(wrong)


@pytest.mark.parametrize(
    "path,group",
    [
        ("/v2/health/live", "health"),
        ("/v2/health/ready", "health"),
        ("/v2/models/m/ready", "health"),
        ("/v2/models/m/versions/3/ready", "health"),
        ("/v2", "metadata"),
        ("/v2/models/m", "metadata"),
        ("/v2/models/m/versions/1", "metadata"),
        ("/v2/models/infer", "metadata"),  # a model named "infer"
        ("/v2/models/m/infer", "inference"),
        ("/v2/models/m/versions/2/infer", "inference"),
        ("/v2/models/m/generate", "inference"),
        ("/v2/models/m/config", "model-config"),
        ("/v2/models/m/versions/1/config", "model-config"),
        ("/v2/models/stats", "statistics"),
        ("/v2/models/m/stats", "statistics"),
        ("/v2/models/m/versions/1/stats", "statistics"),
        ("/v2/models/m/drift", "statistics"),
        ("/v2/repository/index", "model-repository"),
        ("/v2/repository/other/index", "model-repository"),
        ("/v2/repository/models/m/load", "model-repository"),
        ("/v2/repository/models/a/b/unload", "model-repository"),
        ("/v2/repository/r/models/m/load", "model-repository"),
        ("/v2/systemsharedmemory/status", "shared-memory"),
        ("/v2/systemsharedmemory/region/r/register", "shared-memory"),
        ("/v2/cudasharedmemory/region/r/unregister", "shared-memory"),
        ("/v2/trace/setting", "trace"),
        ("/v2/models/m/trace/setting", "trace"),
        ("/v2/logging", "logging"),
        ("/v2/nothing", None),
        ("/v2/models/m/unknown", None),
        ("/metrics", None),
    ],
)
def test_http_route_groups_follow_tritons_router(path: str, group: str | None) -> None:
    assert api_group(path) == group


def _scope(path: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "method": "GET", "path": path, "headers": list(headers)}


def test_http_access_checks_only_restricted_groups() -> None:
    access = HttpAccess({"statistics": Restriction("Admin-Key", "s3cret")})
    refusal = "This API is restricted, expecting header 'Admin-Key'"
    assert access.refusal(_scope("/v2/models/stats")) == refusal
    assert access.refusal(_scope("/v2/models/stats", (b"admin-key", b"nope"))) == refusal
    assert access.refusal(_scope("/v2/models/stats", (b"admin-key", b"s3cret"))) is None
    # the first of repeated headers counts, as in Triton's lookup
    assert (
        access.refusal(
            _scope("/v2/models/stats", (b"admin-key", b"nope"), (b"admin-key", b"s3cret"))
        )
        == refusal
    )
    assert access.refusal(_scope("/v2/models/m/infer")) is None
    assert access.refusal(_scope("/v2/health/ready")) is None


def test_every_grpc_method_has_tritons_group() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {f"/{service.full_name}/{method.name}" for method in service.methods}
    assert methods <= set(GROUP_BY_METHOD)
    assert set(GROUP_BY_METHOD.values()) == set(API_GROUPS)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--http-restricted-api", "nope:k=v"], "unknown restricted api 'nope'"),
        (["--grpc-restricted-protocol", "health"], "option format"),
        (["--grpc-use-ssl"], "needs --grpc-server-cert and --grpc-server-key"),
        (
            ["--grpc-use-ssl-mutual", "--grpc-server-cert", "c", "--grpc-server-key", "k"],
            "needs --grpc-root-cert",
        ),
    ],
)
def test_serve_refuses_bad_settings_before_starting(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["serve", "--model-repository", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())  # rich's error box
