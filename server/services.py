"""The server's inference entry as models that call other models see it (BLS calls from Python
models, ensemble steps): the data plane implements it, so every call goes through the called
model's own scheduler, statistics and metrics, exactly like a client's request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from server.errors import ServingError
from server.types import InferenceRequest, InferenceResponse


class InferenceServices(Protocol):
    """What a model may ask of the server it runs in."""

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, schedule and run one request on the named model."""

    def infer_stream(
        self, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]:
        """The responses of one request (many for a decoupled model; the last is final); a
        ServingError item is a failed response inside the stream."""

    def check_request(self, request: InferenceRequest) -> bool:
        """Raise the error `infer` would raise before scheduling; True if the model is
        decoupled."""

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version) can serve now."""

    async def load_model(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load or reload a model (explicit model control mode)."""

    async def unload_model(self, name: str) -> None:
        """Unload a model (explicit model control mode)."""
