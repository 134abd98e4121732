"""The server-wide budget of buffered request bytes, and the token bucket behind rate limits.
The limits themselves are `server.settings.GrpcLimits`."""

from __future__ import annotations

import threading

from server.byte_budget import Allowance, LeasePool
from server.settings import GrpcLimits

__all__ = ["STREAM_COST_BYTES", "GrpcLimits", "RequestBudget", "TokenBucket"]

STREAM_COST_BYTES = 1024  # what an open stream's state is charged to the budget


class RequestBudget(Allowance):
    """Bytes of request data buffered across every stream and connection of one server (and,
    under `--workers N`, of all workers: server/byte_budget.py).

    Charged as bytes arrive (`used`, event loop only, no lock: the hot path) and as compressed
    messages inflate on worker threads (`inflating`, under a lock); each side reads the other's
    count without the other's lock, so the limit holds to within one inflation step. Leases
    from the workers' pool (`widen`, `narrow`) are taken under the lock, from either side.
    """

    __slots__ = ("_lock", "inflating", "used")

    def __init__(self, limit: int, pool: LeasePool | None = None) -> None:
        super().__init__(limit, pool)
        self.used = 0
        self.inflating = 0
        self._lock = threading.Lock()

    def try_charge(self, size: int) -> bool:
        """On the event loop."""
        held = self.used + self.inflating + size
        if held > self.granted and not self._widen_locked(held):
            return False
        self.used += size
        return True

    def _widen_locked(self, held: int) -> bool:
        with self._lock:
            return held <= self.granted or self.widen(held)

    def release(self, size: int) -> None:
        """On the event loop."""
        self.used -= size
        if self.granted - self.used - self.inflating > self.spare_limit:
            with self._lock:
                self.narrow(self.used + self.inflating)

    def try_charge_inflating(self, size: int) -> bool:
        """On an inflation thread."""
        with self._lock:
            held = self.used + self.inflating + size
            if held > self.granted and not self.widen(held):
                return False
            self.inflating += size
            return True

    def release_inflating(self, size: int) -> None:
        """From any thread."""
        with self._lock:
            self.inflating -= size

    def settle_inflated(self, size: int) -> None:
        """On the event loop: inflated bytes now held by a call move to `used`."""
        self.release_inflating(size)
        self.used += size

    def exhausted_message(self) -> str:
        return (
            f"the server is buffering the maximum of {self.capacity} request bytes across all "
            "calls (--grpc-max-buffered-request-bytes); retry later"
        )


class TokenBucket:
    """Allows `rate` events a second on average, in bursts of up to `burst`."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """False once the bucket is empty: the caller is over its rate."""
        if self.rate <= 0:
            return True  # 0 turns the limit off
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= cost
        return self.tokens >= 0
