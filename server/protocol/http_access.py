"""`--http-restricted-api` in front of every HTTP route: the API group of a path, as Triton's
router assigns it, and the header check (403 with Triton's message when the key is missing or
wrong)."""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from server.restrictions import RestrictedApis, Restriction, refusal_message

_MODEL_PATH = re.compile(
    r"^/v2/models/[^/]+(?:/versions/[0-9]+)?"
    r"(?:/(infer|generate|generate_stream|ready|config|stats|trace/setting|drift))?$"
)
# Triton's groups for /v2/models/<name>[/versions/<v>][/<kind>]; `drift` is ferry's own
_GROUP_BY_MODEL_KIND = {
    None: "metadata",
    "ready": "health",
    "infer": "inference",
    "generate": "inference",
    "generate_stream": "inference",
    "config": "model-config",
    "stats": "statistics",
    "drift": "statistics",
    "trace/setting": "trace",
}
_GROUP_BY_PATH = {
    "/v2": "metadata",
    "/v2/health/live": "health",
    "/v2/health/ready": "health",
    "/v2/models/stats": "statistics",
    "/v2/trace/setting": "trace",
    "/v2/logging": "logging",
}
# Every path below these prefixes belongs to the group, routed or not: nothing slips through.
_GROUP_BY_PREFIX = (
    ("/v2/repository/", "model-repository"),
    ("/v2/systemsharedmemory/", "shared-memory"),
    ("/v2/cudasharedmemory/", "shared-memory"),
)


def api_group(path: str) -> str | None:
    """The API group of a request path; None for a path that is in no group (404 anyway)."""
    group = _GROUP_BY_PATH.get(path)
    if group is not None:
        return group
    if path.startswith("/v2/models/"):
        match = _MODEL_PATH.match(path)
        return _GROUP_BY_MODEL_KIND[match.group(1)] if match else None
    for prefix, group in _GROUP_BY_PREFIX:
        if path.startswith(prefix):
            return group
    return None


class HeaderGate:
    """One restricted group's check: the header (lower case, as ASGI hands names over) and key."""

    __slots__ = ("message", "name", "restriction")

    def __init__(self, restriction: Restriction) -> None:
        self.restriction = restriction
        self.name = restriction.header.lower().encode("latin-1")
        self.message = refusal_message(restriction, "API")

    def refusal(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Triton's message when the first such header is missing or wrong, else None."""
        for key, value in headers:
            if key == self.name:
                return None if self.restriction.admits(value) else self.message
        return self.message


class HttpAccess:
    """The restricted groups' gates, checked against an ASGI request scope."""

    def __init__(self, restricted: RestrictedApis) -> None:
        self._gates = {group: HeaderGate(restriction) for group, restriction in restricted.items()}

    def gate(self, group: str) -> HeaderGate | None:
        """The gate of one group (None when it is open)."""
        return self._gates.get(group)

    def refusal(self, scope: MutableMapping[str, Any]) -> str | None:
        """Why the request is refused (Triton's message), or None when it may go on."""
        group = api_group(scope["path"])
        gate = self._gates.get(group) if group is not None else None
        return None if gate is None else gate.refusal(scope["headers"])
