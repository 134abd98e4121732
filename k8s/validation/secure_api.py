"""Access control and gRPC TLS in the manifests: the flags are complete, every key and
certificate comes from a Secret, and the probes still reach ferry's health endpoints."""

from __future__ import annotations

import re
import sys
from pathlib import PurePosixPath
from typing import Any

from .objects import FerryContainer
from .paths import REPO

_ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_CERT_FLAGS = (
    ("grpc_server_cert", "--grpc-server-cert"),
    ("grpc_server_key", "--grpc-server-key"),
    ("grpc_root_cert", "--grpc-root-cert"),
)
_PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _ferry_cli() -> Any:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import server.cli

    return server.cli


def _secret_volume(f: FerryContainer, path: str) -> tuple[str | None, bool]:
    """(volume name of the mount holding `path`, whether that volume is a Secret)."""
    mounts = sorted(
        f.container.get("volumeMounts", []), key=lambda m: len(m["mountPath"]), reverse=True
    )
    for mount in mounts:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            volumes = {v["name"]: v for v in f.pod_spec.get("volumes", [])}
            volume = volumes.get(mount["name"], {})
            projected = volume.get("projected", {}).get("sources", [])
            is_secret = "secret" in volume or (
                bool(projected) and all("secret" in source for source in projected)
            )
            return mount["name"], is_secret
    return None, False


def _check_tls(f: FerryContainer, params: dict[str, Any]) -> list[str]:
    import typer

    problems: list[str] = []
    try:
        tls = _ferry_cli().grpc_tls_option(
            params["grpc_use_ssl"],
            params["grpc_use_ssl_mutual"],
            params["grpc_server_cert"],
            params["grpc_server_key"],
            params["grpc_root_cert"],
        )
    except typer.BadParameter as error:
        return [f"{f.where}: {error.format_message()}"]
    if tls is None:
        return []
    for param, flag in _CERT_FLAGS:
        path = params[param]
        if path is None:
            continue
        volume, is_secret = _secret_volume(f, str(path))
        if volume is None:
            problems.append(f"{f.where}: {flag} {path} is on no volumeMount")
        elif not is_secret:
            problems.append(
                f"{f.where}: {flag} {path} comes from volume {volume!r}, not from a Secret"
            )
    return problems


def _secret_env(f: FerryContainer) -> set[str]:
    """Names of the container's env variables whose value comes from a Secret."""
    return {
        env["name"]
        for env in f.container.get("env", [])
        if env.get("valueFrom", {}).get("secretKeyRef")
    }


def _check_keys(f: FerryContainer, params: dict[str, Any]) -> list[str]:
    import typer

    problems: list[str] = []
    cli = _ferry_cli()
    secret_env = _secret_env(f)
    for param, option, prefix in (
        ("http_restricted_api", "http-restricted-api", ""),
        ("grpc_restricted_protocol", "grpc-restricted-protocol", cli.GRPC_HEADER_PREFIX),
    ):
        specs = params.get(param) or []
        try:
            restricted = cli.restricted_apis_option(specs, option, prefix)
        except typer.BadParameter as error:
            problems.append(f"{f.where}: {error.format_message()}")
            continue
        for spec in specs:
            value = spec.partition(":")[2].partition("=")[2]
            reference = _ENV_REFERENCE.fullmatch(value)
            if reference is None:
                problems.append(
                    f"{f.where}: --{option} {spec.partition('=')[0]}=... writes its key in the "
                    "manifest; take it from a Secret ($(VAR) with env valueFrom.secretKeyRef)"
                )
            elif reference.group(1) not in secret_env:
                problems.append(
                    f"{f.where}: --{option} key $({reference.group(1)}) is not an env variable "
                    "taken from a Secret (valueFrom.secretKeyRef)"
                )
        if option == "http-restricted-api" and "health" in restricted:
            problems += _check_probe_headers(f, restricted["health"].header)
    return problems


def _check_probe_headers(f: FerryContainer, header: str) -> list[str]:
    """With the health group restricted, each HTTP probe must send the key, or gets 403."""
    problems = []
    for probe_name in _PROBES:
        get = f.container.get(probe_name, {}).get("httpGet")
        if not get:
            continue
        names = {h.get("name", "").lower() for h in get.get("httpHeaders", [])}
        if header.lower() not in names:
            problems.append(
                f"{f.where}: {probe_name} sends no {header!r} header but the health API "
                "is restricted (--http-restricted-api): ferry answers it 403"
            )
    return problems


def check_secure_api(f: FerryContainer) -> list[str]:
    """TLS flags complete and certificates from Secrets; restricted-API keys from Secrets."""
    if f.params is None:
        return []
    return _check_tls(f, f.params) + _check_keys(f, f.params)
