"""Limits on what an HTTP client can make the server hold, and the errors that enforce them.

Two layers share these settings: the connection (`http_connection.py`: header size and count,
slow-client timeouts) and the request (`http_infer.py`: body size, the server-wide budget of
buffered request bytes, decompressed size; `http_codec.py`: JSON size, element count and depth,
tensor sizes and BYTES element counts, checked before decoding turns bytes into objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.byte_budget import Allowance, LeasePool
from server.errors import invalid
from server.settings import ServerSettings

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one infer body may decode into (Triton's --http-max-input-size, and ferry's own)."""

    # Triton's --http-max-input-size: the JSON part, each JSON tensor's byte size, a raw binary
    # request, and a decompressed body
    max_input_size: int = 64 * MiB
    # elements (numbers, strings; arrays and objects weigh 3) of a JSON body, counted before
    # parsing: each becomes a Python object (30-70 bytes, 40-360 ns to build) before it becomes
    # a tensor
    max_json_elements: int = 1 << 18
    # elements of BYTES tensors in one request: each becomes a Python bytes object
    max_bytes_elements: int = 1 << 20
    # a JSON part this long passes check_json_size whatever it holds
    json_bytes_always_within: int = field(init=False)

    def __post_init__(self) -> None:
        within = min(self.max_input_size, (self.max_json_elements - 2) * 2 // 3)
        object.__setattr__(self, "json_bytes_always_within", within)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Every HTTP limit `ferry serve` takes (one flag each; see README "Limits")."""

    max_request_bytes: int = 512 * MiB
    max_buffered_bytes: int = 1024 * MiB
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    decode: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        positive = {
            "--http-max-request-bytes": self.max_request_bytes,
            "--http-max-buffered-bytes": self.max_buffered_bytes,
            "--http-max-header-bytes": self.max_header_bytes,
            "--http-max-header-count": self.max_header_count,
            "--http-header-timeout-secs": self.header_timeout_s,
            "--http-body-timeout-secs": self.body_timeout_s,
            "--http-keepalive-timeout-secs": self.keepalive_timeout_s,
            "--http-max-input-size": self.decode.max_input_size,
            "--http-max-json-elements": self.decode.max_json_elements,
            "--http-max-bytes-elements": self.decode.max_bytes_elements,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ValueError(f"{flag} must be greater than 0, got {value}")
        if self.max_buffered_bytes < self.max_request_bytes:
            raise ValueError(
                f"--http-max-buffered-bytes ({self.max_buffered_bytes}) must be at least "
                f"--http-max-request-bytes ({self.max_request_bytes}): a request that size "
                "could never be accepted"
            )


def http_limits(settings: ServerSettings) -> HttpLimits:
    """The HTTP limits `ferry serve` was given (ValueError names a flag that is out of range)."""
    return HttpLimits(
        max_request_bytes=settings.http_max_request_bytes,
        max_buffered_bytes=settings.http_max_buffered_bytes,
        max_header_bytes=settings.http_max_header_bytes,
        max_header_count=settings.http_max_header_count,
        header_timeout_s=settings.http_header_timeout_secs,
        body_timeout_s=settings.http_body_timeout_secs,
        keepalive_timeout_s=settings.http_keepalive_timeout_secs,
        decode=DecodeLimits(
            max_input_size=settings.http_max_input_size,
            max_json_elements=settings.http_max_json_elements,
            max_bytes_elements=settings.http_max_bytes_elements,
        ),
    )


class RequestRejected(Exception):
    """A request refused by a transport limit, with its HTTP status (413, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BufferBudget(Allowance):
    """The server-wide budget of buffered request bytes, across all connections (and, under
    `--workers N`, all workers: server/byte_budget.py).

    Used from the event loop thread only (no lock): a reservation grows as a body arrives and is
    released when its request ends; a request that would pass the budget is refused with 503
    at once, so memory held for request bodies never passes `capacity`.
    """

    __slots__ = ("used",)

    def __init__(self, capacity: int, pool: LeasePool | None = None) -> None:
        super().__init__(capacity, pool)
        self.used = 0

    def reservation(self) -> BudgetReservation:
        return BudgetReservation(self)


class BudgetReservation:
    """The bytes one request holds in the budget; `release()` (idempotent) gives them back."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BufferBudget) -> None:
        self.budget = budget
        self.held = 0

    def grow(self, size: int) -> None:
        """Take `size` more bytes, or refuse the request (503) when the budget has no room."""
        budget = self.budget
        if budget.used + size > budget.granted and not budget.widen(budget.used + size):
            raise RequestRejected(
                503,
                f"server busy: request bodies being received or decoded hold "
                f"{budget.server_held(budget.used)} of {budget.capacity} bytes "
                "(--http-max-buffered-bytes); retry later",
            )
        budget.used += size
        self.held += size

    def shrink(self, size: int) -> None:
        size = min(size, self.held)
        self.held -= size
        self._give(size)

    def release(self) -> None:
        held, self.held = self.held, 0
        self._give(held)

    def _give(self, size: int) -> None:
        budget = self.budget
        budget.used -= size
        if budget.granted - budget.used > budget.spare_limit:
            budget.narrow(budget.used)


# what an array or object weighs in the element count: building one (a list or dict object)
# costs about as much as three numbers
CONTAINER_WEIGHT = 3
COUNT_WINDOW_BYTES = 1 << 20


def check_json_size(body: bytes, json_end: int, limits: DecodeLimits) -> None:
    """Refuse a JSON part over --http-max-input-size, or with more elements than
    --http-max-json-elements, before it is parsed.

    Elements are counted from above without parsing: every value but the first of an array or
    object follows a comma, so values <= commas + openers + 1, and arrays and objects weigh
    CONTAINER_WEIGHT (a comma inside a string counts too, which only overestimates). That takes
    at least 2 bytes per 3 units, so short bodies skip the count.
    """
    if json_end > limits.max_input_size:
        raise invalid(
            f"request JSON size of {json_end} bytes exceeds the maximum allowed input size "
            f"of {limits.max_input_size} bytes. Use --http-max-input-size to increase the limit."
        )
    if json_end <= limits.json_bytes_always_within:
        return
    elements = 1
    for start in range(0, json_end, COUNT_WINDOW_BYTES):  # windows: stop early past the limit
        end = min(start + COUNT_WINDOW_BYTES, json_end)
        openers = body.count(b"[", start, end) + body.count(b"{", start, end)
        elements += body.count(b",", start, end) + CONTAINER_WEIGHT * openers
        if elements > limits.max_json_elements:
            raise invalid(
                f"request JSON holds more than {limits.max_json_elements} elements (arrays and "
                f"objects count {CONTAINER_WEIGHT}). Use --http-max-json-elements to increase "
                "the limit, or send tensors in binary (the binary tensor data extension)."
            )
