"""uvicorn's httptools connection with the limits it lacks: header block size and field count,
and timeouts for slow or idle clients.

httptools accumulates a header value (and uvicorn the URL) by concatenation as bytes arrive, so a
100 MB header costs quadratic time before any callback sees it; the connection therefore counts
the bytes it feeds the parser while a message's headers are incomplete (or, after them, while
the parser makes no progress: trailers, chunk extensions) and refuses past the limit after each
read, before the next one is parsed.

Timeouts: from a request's first read to the end of its headers (--http-header-timeout-secs),
from the end of the headers to the end of the body (--http-body-timeout-secs), and idle
connections, fresh ones included (--http-keepalive-timeout-secs). A client that misses one gets
408 and the connection is closed (or just closed once its response has started). Idle
connections are closed by a periodic sweep (`IdleConnections`), not by a timer per request.

Under `--workers N --shared-batching`, a connection gone idle after an infer request may move to
the worker that owns the request's model (`ConnectionMover`, server/workers/handoff.py).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from server.connection_moves import HTTP, ConnectionMover
from server.protocol.http_direct import serve_infer
from server.protocol.http_infer import InferFastPath
from server.protocol.http_limits import HttpLimits
from server.protocol.http_writes import CoalescingTransport

logger = logging.getLogger(__name__)


class _LimitExceeded(Exception):
    """Raised in a parser callback to stop the parser; the status is on the connection."""


class IdleConnections:
    """One HTTP listener's idle keep-alive connections, closed by a sweep once idle longer than
    the timeout (up to a quarter of it late, and at most a second).

    uvicorn arms a timer after every response and cancels it when the next request arrives:
    about 2.2 µs of every request on uvloop. Here a request costs a dict insertion and removal,
    and one timer runs while any connection is idle. The dict keeps insertion order, which is
    the order connections went idle, so a sweep stops at the first one still within its time."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.interval_s = min(1.0, max(timeout_s / 4, 0.01))
        self._since: dict[LimitedHttpToolsProtocol, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: LimitedHttpToolsProtocol) -> None:
        """`connection` has no request in progress from now on."""
        loop = connection.loop
        self._since.pop(connection, None)  # (re)inserted last: the dict stays in idle order
        self._since[connection] = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.interval_s, self._sweep, loop)

    def discard(self, connection: LimitedHttpToolsProtocol) -> None:
        """`connection` is busy again (a read), or gone."""
        self._since.pop(connection, None)

    def __len__(self) -> int:
        return len(self._since)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        idle_before = loop.time() - self.timeout_s
        expired = []
        for connection, since in self._since.items():
            if since > idle_before:
                break
            expired.append(connection)
        for connection in expired:
            del self._since[connection]
            connection.timeout_keep_alive_handler()
        if self._since:
            self._timer = loop.call_later(self.interval_s, self._sweep, loop)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header limits and slow-client timeouts (see the module doc)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
        idle: IdleConnections,
        mover: ConnectionMover | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.idle = idle
        # --workers N --shared-batching: an idle connection may move to its model's owner, once
        # (server/workers/handoff.py); `last_route` is the last infer request's (model,
        # version), `move_to` the worker it moves to once its response is out
        self.mover = mover
        self.movable = mover is not None  # False once moved here
        self.last_route: tuple[str, str] | None = None
        self.move_to: int | None = None
        self.awaiting_headers = True
        # uvicorn starts a new scope for each message it begins: while awaiting headers, a
        # scope other than the last one whose headers completed means a request has begun
        self.headers_scope: object = None
        self.counted_bytes = 0  # header phase: bytes since the message began; later: stalled
        self.progressed = False
        self.completed = False  # a message ended during the current read
        self.violation: tuple[int, str] | None = None
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        # infer requests skip the ASGI round trip when the app is ferry's own, unwrapped, and
        # uvicorn was not asked for a fresh context per request (a newer uvicorn option)
        self.infer_app = (
            self.app
            if isinstance(self.app, InferFastPath)
            and not getattr(config, "reset_contextvars", False)
            else None
        )

    # --- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # each response leaves in one send (server/protocol/http_writes.py)
        self.transport = cast(asyncio.Transport, CoalescingTransport(transport, self.loop))
        # a fresh connection that sends nothing is idle, like a kept-alive one
        self.idle.add(self)
        if self.mover is not None:
            self.mover.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self.idle.discard(self)
        if self.mover is not None:
            self.mover.closed()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # uvicorn's, except that an idle connection joins the sweep instead of arming a timer
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle.add(self)
            if self.last_route is not None:
                assert self.mover is not None
                self.move_to = self.mover.target(*self.last_route)
                self.last_route = None
                if self.move_to is not None:  # once this response has left (its flush)
                    self.loop.call_soon(self._move)

    def _move(self) -> None:
        """Pass this connection to worker `move_to` if it is still idle: nothing read since
        its last response (nor, in the read that ended the last request, the start of the next
        one: the parser would hold it), and that response taken in full by the kernel."""
        slot, self.move_to = self.move_to, None
        transport = cast(CoalescingTransport, self.transport)
        if (
            slot is None
            or transport.is_closing()
            or self.mover is None
            or self.pipeline
            or self.scope is not self.headers_scope  # a message has begun since
        ):
            return
        transport.flush()
        sock = transport.get_extra_info("socket")
        if transport.get_write_buffer_size() or sock is None:
            return
        if self.mover.send(sock.fileno(), slot, HTTP):
            self.movable = False
            transport.abort()  # closes this worker's descriptor only: the socket lives on there

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's, except that POST .../infer runs serve_infer on the cycle instead of the
        # ASGI app (not when uvicorn swapped the app for its 503 past limit_concurrency)
        infer_app = self.infer_app
        if infer_app is not None and app is self.app:
            route = infer_app.infer_route(cycle.scope)
            if route is not None:
                if self.movable:
                    self.last_route = route
                task = self.loop.create_task(serve_infer(cycle, infer_app, *route))
                task.add_done_callback(self.tasks.discard)
                self.tasks.add(task)
                return
        HttpToolsProtocol._start_asgi_task(self, cycle, app)

    def data_received(self, data: bytes) -> None:
        self.idle.discard(self)
        self.move_to = None  # a request has begun: the connection stays (for now)
        self.progressed = self.completed = False
        HttpToolsProtocol.data_received(self, data)  # (not super(): the hot path)
        if self.transport.is_closing() or self.parser is None:
            return
        # timers start after the first read that leaves a request unfinished (most requests
        # arrive in one read: no timer is ever armed for them)
        if self.awaiting_headers:
            if self.scope is self.headers_scope:  # no request begun since the last one
                return
            if not self.completed:  # a read that ended a body: its bytes are not these headers'
                self.counted_bytes += len(data)
                if self.counted_bytes > self.limits.max_header_bytes:
                    self.reject(
                        431,
                        f"request header block exceeds the maximum of "
                        f"{self.limits.max_header_bytes} bytes (--http-max-header-bytes)",
                    )
                    return
            if self.header_timer is None:
                timeout = self.limits.header_timeout_s
                self.header_timer = self.loop.call_later(
                    timeout, self._timed_out, "headers", timeout, "--http-header-timeout-secs"
                )
            return
        if self.body_timer is None and not self.pipeline:  # a queued request's body waits
            timeout = self.limits.body_timeout_s
            self.body_timer = self.loop.call_later(
                timeout, self._timed_out, "body", timeout, "--http-body-timeout-secs"
            )
        if self.progressed:
            self.counted_bytes = 0
            return
        self.counted_bytes += len(data)  # trailers or chunk extensions: no body in these bytes
        if self.counted_bytes > self.limits.max_header_bytes:
            self.reject(
                431,
                f"request trailers or chunk extensions exceed the maximum of "
                f"{self.limits.max_header_bytes} bytes (--http-max-header-bytes)",
            )

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error: ours when a callback stopped the parser."""
        if self.violation is not None:
            self.reject(*self.violation)
        else:
            super().send_400_response(msg)

    def reject(self, status: int, message: str) -> None:
        """Answer `status` unless this request already has a response, and close."""
        logger.warning("HTTP %d to %s: %s", status, self.client, message)
        cycle = self.cycle
        # while headers arrive, self.cycle (if any) is the previous request's: write only when
        # no response is on the wire for this request, nor one half-written for that one
        busy = (
            cycle is not None
            and cycle.response_started
            and (not self.awaiting_headers or not cycle.response_complete)
        )
        if not busy:
            body = message.encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, http.HTTPStatus(status).phrase.encode(), len(body), body)
            )
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's sends become no-ops, receive() a disconnect
            cycle.message_event.set()
        self._cancel_timers()
        self.transport.close()

    # --- parser callbacks ----------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        # (the header count is checked here, not per header: --http-max-header-bytes bounds
        # how many can arrive, and the hot path keeps uvicorn's own on_header)
        if len(self.headers) > self.limits.max_header_count:
            self.violation = (
                431,
                f"request has more than {self.limits.max_header_count} header fields "
                "(--http-max-header-count)",
            )
            raise _LimitExceeded
        self.headers_scope = self.scope
        self.awaiting_headers = False
        self.counted_bytes = 0
        self.progressed = True
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        self.progressed = True
        HttpToolsProtocol.on_body(self, body)

    def on_chunk_header(self) -> None:
        self.progressed = True

    def on_message_complete(self) -> None:
        self.progressed = self.completed = True
        self.awaiting_headers = True
        self.counted_bytes = 0
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        HttpToolsProtocol.on_message_complete(self)

    # --- timeouts ------------------------------------------------------------------------------

    def _timed_out(self, part: str, seconds: float, flag: str) -> None:
        """A timer of `part` (headers, body) fired: 408 and close."""
        self._cancel_timers()
        if not self.transport.is_closing():
            self.reject(408, f"request {part} not received within {seconds:g}s ({flag})")

    def _cancel_timers(self) -> None:
        for timer in (self.header_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.body_timer = None


def limited_protocol(
    limits: HttpLimits, mover: ConnectionMover | None = None
) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn.Config(http=...), bound to `limits` (and to the
    worker's `mover` under --workers N --shared-batching)."""
    idle = IdleConnections(limits.keepalive_timeout_s)
    factory: Any = functools.partial(
        LimitedHttpToolsProtocol, limits=limits, idle=idle, mover=mover
    )
    return factory  # type: ignore[no-any-return]
