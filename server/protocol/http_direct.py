"""POST .../infer served on uvicorn's request cycle, without the ASGI round trip.

uvicorn runs every request as `cycle.run_asgi(app)`: the app is called with the scope, reads
the body through `receive()` and answers through two `send()` messages, whose status line and
headers uvicorn assembles and checks field by field. For the infer endpoint all of that is
fixed: ferry writes every header itself. Here the connection's task runs `serve_infer` on the
same cycle object instead: a body that came whole with its headers (the usual infer request)
is taken from the cycle as `receive` would return it, any other is read through the cycle's own
`receive` (100-continue, flow control and disconnects as uvicorn handles them), and the answer
is written as one response built from the cycle's state (keep-alive, the server's default
headers), marked complete as uvicorn's `send` marks it. Pipelining, shutdown, timeouts and
the limits stay the protocol's: they only look at the cycle's flags, which this module sets as
uvicorn's `send` does.
"""

from __future__ import annotations

import logging
from typing import cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from server.protocol.http_infer import InferFastPath, Receive

logger = logging.getLogger(__name__)
INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


async def serve_infer(
    cycle: RequestResponseCycle, app: InferFastPath, name: str, version: str
) -> None:
    """Answer one POST .../infer on `cycle` (the task uvicorn would run `run_asgi` in)."""
    try:
        scope = cycle.scope
        body_read = None
        if not (
            cycle.more_body
            or cycle.waiting_for_100_continue
            or cycle.disconnected
            or cycle.response_complete
        ):  # the body came whole with the headers: what `receive` would do, without a coroutine
            cycle.flow.resume_reading()
            body_read = bytes(cycle.body)
            cycle.body = bytearray()
        answer = await app.answer(
            scope["headers"],
            cast(Receive, cycle.receive),
            scope["client"],
            name,
            version,
            body_read,
        )
        if answer is not None:
            await _respond(cycle, *answer)
    except BaseException as exc:  # as uvicorn's run_asgi: logged, and the client told or cut
        logger.error("Exception in the infer handler", exc_info=exc)
        if not cycle.response_started and not cycle.disconnected:
            cycle.response_started = cycle.response_complete = True
            cycle.transport.write(INTERNAL_ERROR)
        cycle.transport.close()
    finally:
        cycle.on_response = lambda: None  # (uvicorn's run_asgi drops it too)


async def _respond(
    cycle: RequestResponseCycle, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """What uvicorn's two `send` calls do for a response with a content-length."""
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    head = [STATUS_LINE[status]]
    for key, value in cycle.default_headers:
        head += (key, b": ", value, b"\r\n")
    for key, value in headers:  # ferry's own fields: no client text reaches them unchecked
        head += (key, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    # the connection's CoalescingTransport (server/protocol/http_writes.py) sends the two in one
    # syscall, and a large payload on its own without copying it
    transport = cycle.transport
    transport.write(b"".join(head))
    transport.write(payload)
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        transport.close()
    cycle.on_response()
