"""Restricted API groups, as Triton's `--http-restricted-api` / `--grpc-restricted-protocol`.

`<groups>:<key>=<value>` puts the comma-separated API groups behind a header: a request to one of
them must carry header `<key>` (gRPC: metadata `triton-grpc-protocol-<key>`) with exactly
`<value>`, or it is refused (HTTP 403, gRPC UNAVAILABLE, with Triton's messages). Groups left out
stay open; each group may appear in one restriction only.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Triton's category names (src/restricted_features.h)
API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


class RestrictionError(ValueError):
    """A restricted-API setting that cannot be used (bad format, unknown or repeated group)."""


@dataclass(frozen=True, slots=True)
class Restriction:
    """The header a request needs (named as configured; matched case-insensitively) and the
    value it must carry."""

    header: str
    value: str = field(repr=False)  # a secret: kept out of logs and tracebacks

    def admits(self, value: str | bytes | None) -> bool:
        """Whether `value` (the request's header, None when absent) is the key."""
        if value is None:
            return False
        given = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self.value.encode("utf-8", "surrogateescape"))


RestrictedApis = Mapping[str, Restriction]  # API group -> its restriction


def parse_restricted_apis(
    specs: Iterable[str], option: str, header_prefix: str = ""
) -> dict[str, Restriction]:
    """Triton's parse of repeated `<groups>:<key>=<value>` options; raises RestrictionError."""
    feature = "protocol" if header_prefix else "api"
    restricted: dict[str, Restriction] = {}
    for spec in specs:
        groups, separator, setting = spec.partition(":")
        key, equals, value = setting.partition("=")
        if not (separator and equals and groups and key and value):
            raise RestrictionError(
                f"--{option} option format is '<{feature} groups>:<key>=<value>'. Got {spec}"
            )
        for group in groups.split(","):
            if group not in API_GROUPS:
                raise RestrictionError(
                    f"unknown restricted {feature} '{group}' (known: {', '.join(API_GROUPS)})"
                )
            if group in restricted:
                raise RestrictionError(
                    f"restricted {feature} '{group}' can not be specified in multiple config groups"
                )
            restricted[group] = Restriction(header_prefix + key, value)
    return restricted


def refusal_message(restriction: Restriction, kind: str) -> str:
    """Triton's error text: kind is 'API' (HTTP) or 'protocol' (gRPC)."""
    return f"This {kind} is restricted, expecting header '{restriction.header}'"
