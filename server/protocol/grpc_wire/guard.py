"""Per-connection policing of frames that cost the server work without carrying a call forward:
control-frame and reset rates (rapid reset, CVE-2023-44487), gRPC's ping strikes, and WINDOW_UPDATE
frames out of proportion to the DATA we send. A connection over a limit gets GOAWAY with
ENHANCE_YOUR_CALM."""

from __future__ import annotations

from server.protocol.grpc_wire.limits import GrpcLimits, TokenBucket

RESET_BURST = 200  # resets a connection may send at once; then --grpc-http2-max-resets-per-second
WINDOW_UPDATES_PER_DATA_FRAME = 10  # Envoy's max_inbound_window_update_frames_per_data_frame_sent
WINDOW_UPDATES_FREE = 100
PING_INTERVAL_WITHOUT_CALLS_S = 7200.0  # gRPC's: pings with no call open are expected 2 h apart


class CalmDown(Exception):
    """The peer is over one of the limits: close the connection with ENHANCE_YOUR_CALM."""


class ConnectionGuard:
    """Counts a connection's control frames, resets, pings and window updates against its limits."""

    __slots__ = (
        "control",
        "last_ping_at",
        "limits",
        "ping_strikes",
        "pings_without_data",
        "resets",
        "window_updates",
    )

    def __init__(self, limits: GrpcLimits, now: float) -> None:
        self.limits = limits
        rate = limits.max_control_frames_per_second
        self.control = TokenBucket(rate, max(rate, 100), now)
        self.resets = TokenBucket(limits.max_resets_per_second, RESET_BURST, now)
        self.ping_strikes = 0
        self.last_ping_at = float("-inf")
        self.pings_without_data = 0  # keepalive pings we sent since our last HEADERS or DATA
        self.window_updates = 0

    def control_frame(self, now: float, cost: float = 1.0) -> None:
        """SETTINGS, PING, PRIORITY, unknown or empty frames, refused streams."""
        if not self.control.take(now, cost):
            raise CalmDown(
                f"more than {self.limits.max_control_frames_per_second} control frames a second "
                "(--grpc-http2-max-control-frames-per-second)"
            )

    def reset(self, now: float) -> None:
        if not self.resets.take(now):
            raise CalmDown(
                f"more than {self.limits.max_resets_per_second} stream resets a second "
                "(--grpc-http2-max-resets-per-second)"
            )

    def ping(self, now: float, calls_open: bool) -> None:
        """gRPC core's ping policy (Triton's --grpc-http2-* flags): a ping sooner than the minimum
        interval after the previous one, with no DATA or HEADERS sent in between, is a strike."""
        if not self.limits.http2_max_ping_strikes:
            return
        if calls_open or self.limits.keepalive_permit_without_calls:
            interval = self.limits.http2_min_recv_ping_interval_without_data_ms / 1000
        else:
            interval = PING_INTERVAL_WITHOUT_CALLS_S
        if now - self.last_ping_at < interval:
            self.ping_strikes += 1
            if self.ping_strikes > self.limits.http2_max_ping_strikes:
                raise CalmDown("too_many_pings")
        self.last_ping_at = now

    def sent_headers_or_data(self) -> None:
        """We sent HEADERS or DATA: the peer's next pings are welcome again, and ours."""
        self.ping_strikes = 0
        self.last_ping_at = float("-inf")
        self.pings_without_data = 0

    def may_ping(self) -> bool:
        """Whether we may send a keepalive ping (--grpc-http2-max-pings-without-data)."""
        limit = self.limits.http2_max_pings_without_data
        if limit and self.pings_without_data >= limit:
            return False
        self.pings_without_data += 1
        return True

    def window_update(self, progress_frames: int) -> None:
        """`progress_frames`: streams the peer opened and DATA frames we sent so far."""
        self.window_updates += 1
        if self.window_updates > WINDOW_UPDATES_FREE + WINDOW_UPDATES_PER_DATA_FRAME * (
            progress_frames
        ):
            raise CalmDown("WINDOW_UPDATE frames out of proportion to the DATA sent")
