"""Hostile gRPC traffic against a real `ferry serve`, on both transports (ferry's own HTTP/2 layer
and grpc.aio): each attack comes from a real client on loopback, and the server must stay
healthy while it lasts (health answered over HTTP and gRPC, good tritonclient requests served
correctly, RSS bounded) and answer the attacker with the protocol's error.

Run with `-s` to see the figures of each attack (RSS peak, health latency, what the attacker got).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from server.protocol.grpc_wire import frames
from tests.support.attack_watch import ServerWatch, WatchReport
from tests.support.h2_attacker import (
    STREAM_INFER_PATH,
    H2Attacker,
    Outcome,
    grpc_fields,
    grpc_message,
)
from tests.support.server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow

MIB = 1 << 20
BUDGET = 64 * MIB
LIMIT_FLAGS = [
    "--grpc-max-buffered-request-bytes",
    str(BUDGET),
    "--grpc-handshake-timeout",
    "1000",
    "--grpc-request-receive-timeout",
    "4000",
    "--grpc-max-connections",
    "128",
    "--grpc-max-connection-idle",
    "3000",
]
HEALTH_BOUND_MS = 5000  # CI-safe; the figures printed show the real latency
RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED = "8", "4"
REPORTS: list[dict[str, object]] = []


@dataclass
class Attacked:
    server: ServerProcess
    transport: str  # ferry | grpcio

    @property
    def ferry(self) -> bool:
        return self.transport == "ferry"


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def attacked(request: pytest.FixtureRequest, repository: Path) -> Iterator[Attacked]:
    with running_server(
        repository, "--grpc-transport", request.param, "--no-drift", *LIMIT_FLAGS
    ) as server:
        yield Attacked(server, request.param)


@pytest.fixture(scope="module", autouse=True)
def print_reports() -> Iterator[None]:
    yield
    for row in REPORTS:
        print(json.dumps(row))
    target = os.environ.get("FERRY_ATTACK_REPORT")
    if target:
        Path(target).write_text(json.dumps(REPORTS, indent=1))


def attack(
    attacked: Attacked,
    repository: Path,
    name: str,
    scenario: Callable[[str], Awaitable[str]],
    good_requests: bool = True,
    rss_bound_mb: float = 400.0,
    grpcio_limitation: str = "",
) -> WatchReport:
    """Run `scenario(grpc_address)` under watch; assert the server stayed healthy.

    `grpcio_limitation` names what grpc.aio cannot prevent (README lists these): on that transport
    the failures during the attack are reported, and the server must serve again after it."""
    server = attacked.server
    with ServerWatch(server, repository / "mlp" / "1" / "model.onnx", good_requests) as watch:
        started = time.perf_counter()
        attacker = asyncio.run(scenario(server.grpc_url))
        seconds = time.perf_counter() - started
        time.sleep(0.3)  # a few more probes after the attack
    report = watch.report
    transport = attacked.transport
    REPORTS.append(
        {
            "attack": name,
            "transport": transport,
            "seconds": round(seconds, 2),
            "rss_before_mb": round(report.rss_before_mb),
            "rss_peak_mb": round(report.rss_peak_mb),
            "health_probes": len(report.health_latencies_ms),
            "health_p50_ms": round(report.health_p50_ms, 1),
            "health_max_ms": round(report.health_max_ms, 1),
            "good_ok": report.good_ok,
            "good_failed": len(report.good_failures),
            "attacker_got": attacker,
            "health_failures": report.health_failures[:3],
            "good_failures": report.good_failures[:3],
        }
    )
    print(f"\n[{transport}] {name} ({seconds:.1f} s): {report.line()}\n  attacker got: {attacker}")
    assert server.process.poll() is None, server.log()[-3000:]
    if grpcio_limitation and not attacked.ferry:
        print(f"  grpc.aio limitation: {grpcio_limitation}")
        recovered = ServerWatch(server, repository / "mlp" / "1" / "model.onnx")
        with recovered:
            time.sleep(1)
        assert not recovered.report.health_failures and recovered.report.good_ok > 0
        assert not recovered.report.good_failures
        return report
    assert not report.health_failures, report.health_failures[:5]
    assert report.health_latencies_ms and report.health_max_ms < HEALTH_BOUND_MS
    if good_requests:
        assert report.good_ok > 0 and not report.good_failures, report.good_failures[:5]
    assert report.rss_peak_mb - report.rss_before_mb < rss_bound_mb, report.line()
    return report


def mlp_request(rows: int = 1, model: str = "mlp") -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="input", datatype="FP32", shape=[rows, 16])
    message.raw_input_contents.append(np.ones((rows, 16), np.float32).tobytes())
    return message.SerializeToString()


@cache
def gzip_bomb(inflated_bytes: int = 1 << 30) -> bytes:
    """gzip of `inflated_bytes` zeros: about 1 MB per GiB."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    chunks = [deflater.compress(zeros) for _ in range(inflated_bytes // MIB)]
    return b"".join(chunks) + deflater.flush()


# ---- request bytes: decompression, the budget, declared sizes


def test_gzip_bombs_stop_at_the_limit(attacked: Attacked, repository: Path) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 2 * MIB

    async def scenario(address: str) -> str:
        async def one() -> Outcome:
            client = await H2Attacker.connect(address)
            client.send(client.headers(1, grpc_fields(**{"grpc-encoding": "gzip"}), False))
            await client.send_flow_controlled(1, grpc_message(bomb, compressed=True), True)
            await client.wait_until(lambda: client.outcome.status(1) is not None, 30)
            await client.close()
            return client.outcome

        outcomes = await asyncio.gather(*(one() for _ in range(4)))
        for outcome in outcomes:
            assert outcome.status(1) == RESOURCE_EXHAUSTED, outcome.summary()
        return outcomes[0].summary()

    attack(attacked, repository, "4 gzip bombs of 1 GiB in parallel", scenario)


def test_unary_calls_announcing_2_gib_are_refused_at_once(
    attacked: Attacked, repository: Path
) -> None:
    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(address)
        declared = (2**31 - 1).to_bytes(4, "big")
        for stream_id in (1, 3, 5, 7):
            client.send(client.headers(stream_id, grpc_fields(), False))
        sent = await asyncio.gather(
            *(
                client.send_flow_controlled(
                    stream_id, b"\0" + declared + bytes(48 * MIB), False, stall_s=5
                )
                for stream_id in (1, 3, 5, 7)
            )
        )
        await client.wait_until(lambda: len(client.outcome.trailers) == 4, 30)
        await client.close()
        for stream_id in (1, 3, 5, 7):
            assert client.outcome.status(stream_id) == RESOURCE_EXHAUSTED, client.outcome.summary()
        assert not any(sent)  # none got to send its 48 MiB
        return client.outcome.summary()

    attack(attacked, repository, "4 unary calls announcing 2 GiB", scenario)


def test_budget_across_streams_and_connections(attacked: Attacked, repository: Path) -> None:
    body = grpc_message(mlp_request(rows=(40 * MIB) // 64))  # 40 MiB each, under the 64 MiB cap

    async def scenario(address: str) -> str:
        async def one() -> Outcome:
            client = await H2Attacker.connect(address)
            for stream_id in (1, 3):
                client.send(client.headers(stream_id, grpc_fields(), False))
            await asyncio.gather(
                *(client.send_flow_controlled(s, body, True, stall_s=10) for s in (1, 3))
            )
            await client.wait_until(lambda: len(client.outcome.trailers) == 2, 30)
            await client.close()
            return client.outcome

        outcomes = await asyncio.gather(one(), one())
        statuses = [o.status(s) for o in outcomes for s in (1, 3)]
        assert statuses.count(RESOURCE_EXHAUSTED) >= 2, [o.summary() for o in outcomes]
        return " | ".join(o.summary() for o in outcomes)

    attack(
        attacked,
        repository,
        "2 connections x 2 unary calls of 40 MiB",
        scenario,
        rss_bound_mb=400 if attacked.ferry else 1000,  # grpc core receives all of it first
    )


# ---- header blocks


def test_endless_continuation_frames(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        async def one() -> Outcome:
            client = await H2Attacker.connect(address, ack_settings=False)
            client.send(frames.frame(frames.HEADERS, 0, 1, client.encoder.encode(grpc_fields())))
            junk = frames.frame(frames.CONTINUATION, 0, 1, b"\x00" * 16_384)
            stop_at = time.monotonic() + 5
            for _ in range(100 * 64):  # up to 100 MiB, for up to 5 s
                client.send(junk)
                if not await client.drain() or time.monotonic() > stop_at:
                    break
            await client.wait_until(lambda: client.outcome.closed, 10)
            await client.close()
            return client.outcome

        outcomes = await asyncio.gather(*(one() for _ in range(8)))
        for outcome in outcomes:
            assert outcome.closed, outcome.summary()
            if attacked.ferry:
                assert outcome.goaway is not None
                assert outcome.goaway[0] == frames.ENHANCE_YOUR_CALM, outcome.summary()
        return outcomes[0].summary()

    attack(
        attacked,
        repository,
        "8 connections of endless CONTINUATION",
        scenario,
        # seen once in three full runs: one health probe waited 5.7 s (usually under 1 s)
        grpcio_limitation="grpc core reads the endless header block on its own threads, with "
        "no cap short of its handshake timeout: other calls can wait seconds",
    )


def test_oversized_header_lists(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(address, ack_settings=False)
        # 24 kB of metadata: over the 16 KiB list limit, under the 32 KiB block limit
        client.send(client.headers(1, grpc_fields(**{"x-big": "m" * 24_000}), True))
        await client.wait_until(lambda: client.outcome.trailers or client.outcome.closed, 3)
        first = client.outcome.summary()
        if attacked.ferry:
            assert client.outcome.status(1) == RESOURCE_EXHAUSTED, first
        # then a 10 MB block of small literal fields (literal, new name "x-a", value "v")
        block = client.encoder.encode(grpc_fields()) + b"\x00\x03x-a\x01v" * 1_500_000
        pieces = [block[i : i + 16_384] for i in range(0, len(block), 16_384)]
        client.send(frames.frame(frames.HEADERS, frames.END_STREAM, 3, pieces[0]))
        for i, piece in enumerate(pieces[1:], 1):
            last = frames.END_HEADERS if i == len(pieces) - 1 else 0
            client.send(frames.frame(frames.CONTINUATION, last, 3, piece))
        await client.drain()
        await client.wait_until(lambda: client.outcome.closed, 10)
        await client.close()
        assert client.outcome.closed
        return f"24 kB metadata: {first}; 10 MB block: {client.outcome.summary()}"

    attack(attacked, repository, "24 kB metadata, then a 10 MB header block", scenario)


# ---- streams, resets and control frames


def test_idle_streams_beyond_the_concurrency_limit(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(address)
        for batch in range(100):  # 100k streams, none ever sends its message
            client.send(
                b"".join(
                    client.headers(2 * (batch * 1000 + i) + 1, grpc_fields(), False)
                    for i in range(1000)
                )
            )
            if not await client.drain():
                break
        await client.wait_until(lambda: client.outcome.closed, 10)
        await client.close()
        if attacked.ferry:
            assert client.outcome.resets and set(client.outcome.resets.values()) == {
                frames.REFUSED_STREAM
            }
        assert client.outcome.resets or client.outcome.goaway, client.outcome.summary()
        return client.outcome.summary()

    attack(attacked, repository, "100k idle streams on one connection", scenario)


def test_settings_flood_with_open_streams(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(address)
        client.send(b"".join(client.headers(2 * i + 1, grpc_fields(), False) for i in range(900)))
        toggles = [
            frames.settings_frame({frames.SETTINGS_INITIAL_WINDOW_SIZE: 65_535 + (i % 2)})
            for i in range(2)
        ]
        for i in range(20_000):
            client.send(toggles[i % 2])
            if i % 500 == 0 and not await client.drain():
                break
        await client.drain()
        await client.wait_until(lambda: client.outcome.goaway is not None, 10)
        await client.close()
        if attacked.ferry:
            assert client.outcome.goaway is not None
            assert client.outcome.goaway[0] == frames.ENHANCE_YOUR_CALM, client.outcome.summary()
        return client.outcome.summary()

    attack(attacked, repository, "900 open streams + 20k SETTINGS", scenario)


def test_rapid_reset(attacked: Attacked, repository: Path) -> None:
    request = grpc_message(mlp_request())

    async def scenario(address: str) -> str:
        summaries: list[str] = []
        streams = 0
        stop_at = time.monotonic() + 5

        async def attacker() -> None:
            nonlocal streams
            while time.monotonic() < stop_at:
                client = await H2Attacker.connect(address)
                stream_id = 1
                while time.monotonic() < stop_at and not client.outcome.closed:
                    burst = []
                    for _ in range(100):
                        burst.append(client.headers(stream_id, grpc_fields(), False))
                        burst.append(H2Attacker.data(stream_id, request, True))
                        burst.append(frames.rst_stream(stream_id, frames.CANCEL))
                        stream_id += 2
                    client.send(b"".join(burst))
                    streams += 100
                    if not await client.drain():
                        break
                    await asyncio.sleep(0)
                await client.wait_until(lambda c=client: c.outcome.closed, 2)
                summaries.append(client.outcome.summary())
                await client.close()

        await asyncio.gather(*(attacker() for _ in range(4)))
        if attacked.ferry:
            assert any("ENHANCE_YOUR_CALM" in s for s in summaries), summaries
        return (
            f"{streams} streams opened and reset over {len(summaries)} connections; {summaries[0]}"
        )

    attack(
        attacked,
        repository,
        "rapid reset from 4 reconnecting clients, 5 s",
        scenario,
        grpcio_limitation="grpc core has no reset rate limit: calls are CANCELLED while it lasts",
    )


def test_empty_frame_and_window_update_floods(attacked: Attacked, repository: Path) -> None:
    async def flood(address: str, frame: bytes, opener: bool) -> Outcome:
        client = await H2Attacker.connect(address)
        if opener:
            client.send(client.headers(1, grpc_fields(), False))
        for _ in range(200):
            client.send(frame * 1000)
            if not await client.drain():
                break
        await client.wait_until(lambda: client.outcome.closed, 10)
        await client.close()
        return client.outcome

    async def scenario(address: str) -> str:
        empty = await flood(address, frames.frame(frames.DATA, 0, 1, b""), True)
        updates = await flood(address, frames.window_update(0, 1), False)
        priority = await flood(address, frames.frame(frames.PRIORITY, 0, 1, bytes(5)), False)
        outcomes = {"empty DATA": empty, "WINDOW_UPDATE": updates, "PRIORITY": priority}
        if attacked.ferry:
            for outcome in outcomes.values():
                assert outcome.goaway is not None
                assert outcome.goaway[0] == frames.ENHANCE_YOUR_CALM, outcome.summary()
        return "; ".join(f"{k} x200k: {v.summary()}" for k, v in outcomes.items())

    attack(attacked, repository, "200k empty DATA / WINDOW_UPDATE / PRIORITY", scenario)


# ---- clients that do not read


def test_unread_pings(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(address, read=False)
        ping = frames.frame(frames.PING, 0, 0, bytes(8))
        sent = 0
        for _ in range(6000):  # 6M PINGs, never reading an ACK
            client.send(ping * 1000)
            try:
                await asyncio.wait_for(client.writer.drain(), 2)
            except (TimeoutError, ConnectionError):
                break
            sent += 1000
        outcome = await read_what_was_sent(client)
        return f"{sent} PINGs written; then read: {outcome.summary()}"

    attack(attacked, repository, "6M PINGs, ACKs never read", scenario)


def strings_request(element_bytes: int = 32_000) -> bytes:
    """A request to the `strings` identity model: its response is as large as itself."""
    message = pb.ModelInferRequest(model_name="strings")
    message.inputs.add(name="text", datatype="BYTES", shape=[1, 2])
    element = b"s" * element_bytes
    message.raw_input_contents.append((len(element).to_bytes(4, "little") + element) * 2)
    return grpc_message(message.SerializeToString())


def test_stream_client_that_takes_no_responses(attacked: Attacked, repository: Path) -> None:
    """ModelStreamInfer: the client reads frames but never grants window for the responses, and
    sends 64 kB requests as fast as flow control lets it (1.3 GB of responses if all ran)."""
    request = strings_request()

    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(address)
        client.send(client.headers(1, grpc_fields(STREAM_INFER_PATH), False))
        sent = 0
        while sent < 20_000:
            if not await client.send_flow_controlled(1, request, False, stall_s=2):
                break  # the server stopped granting window: it holds no more of our requests
            sent += 1
        responses = client.outcome.data_bytes
        await client.close()
        assert sent < 20_000
        return f"{sent} requests accepted, then no more window; {responses} response bytes sent"

    attack(attacked, repository, "ModelStreamInfer client granting no response window", scenario)


def test_stream_client_that_never_reads(attacked: Attacked, repository: Path) -> None:
    """ModelStreamInfer: the client never reads its socket and ignores flow control (then reads
    what it was sent)."""
    request = strings_request()

    async def scenario(address: str) -> str:
        client = await H2Attacker.connect(
            address,
            read=False,
            settings={frames.SETTINGS_INITIAL_WINDOW_SIZE: frames.MAX_WINDOW},
            window_increment=frames.MAX_WINDOW - frames.DEFAULT_WINDOW,
        )
        client.send(client.headers(1, grpc_fields(STREAM_INFER_PATH), False))
        sent = 0
        stop_at = time.monotonic() + 8
        # 200 MB: past every window the server granted (16 MiB for the stream, 64 MiB for the
        # connection), and 200 MB of responses if all ran
        while time.monotonic() < stop_at and sent < 3200:
            client.send(H2Attacker.data(1, request * 16, False))
            try:
                await asyncio.wait_for(client.writer.drain(), 1)
            except (TimeoutError, ConnectionError):
                break
            sent += 16
        outcome = await read_what_was_sent(client, seconds=2)
        # The server resets the stream (FLOW_CONTROL_ERROR), then the connection once its window
        # is spent; a client that reads nothing may lose both to the reset of the connection.
        assert outcome.closed, outcome.summary()
        return f"{sent} requests written; then read: {outcome.summary()}"

    attack(attacked, repository, "ModelStreamInfer client that never reads", scenario)


async def read_what_was_sent(client: H2Attacker, seconds: float = 2.0) -> Outcome:
    """The attacker finally reads: what had the server queued for it?"""
    reading = H2Attacker(client.reader, client.writer, read=True)
    await reading.wait_until(lambda: reading.outcome.closed, seconds)
    await reading.close()
    return reading.outcome


# ---- slow and idle clients, connections


def test_slow_and_silent_clients(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        host, port = address.rsplit(":", 1)
        silent = [await asyncio.open_connection(host, int(port)) for _ in range(50)]
        started = time.monotonic()
        closed_after = []
        for reader, writer in silent:  # never a preface: closed by the handshake timeout
            try:
                await asyncio.wait_for(reader.read(), 15)
            except TimeoutError:
                closed_after.append(float("inf"))
            else:
                closed_after.append(time.monotonic() - started)
            writer.close()
        assert max(closed_after) < 15, closed_after
        # a unary call whose message never comes, and one whose message never ends
        client = await H2Attacker.connect(address)
        client.send(client.headers(1, grpc_fields(), False))
        client.send(client.headers(3, grpc_fields(), False))
        client.send(H2Attacker.data(3, grpc_message(mlp_request())[:20], False))
        await client.wait_until(lambda: len(client.outcome.trailers) == 2, 10)
        await client.close()
        if attacked.ferry:
            assert client.outcome.status(1) == DEADLINE_EXCEEDED, client.outcome.summary()
            assert client.outcome.status(3) == DEADLINE_EXCEEDED, client.outcome.summary()
        return (
            f"50 silent connections closed after {max(closed_after):.1f} s; "
            f"stalled calls: {client.outcome.summary() or 'nothing in 10 s'}"
        )

    attack(attacked, repository, "50 silent connections, 2 stalled calls", scenario)


def test_connection_limit(attacked: Attacked, repository: Path) -> None:
    async def scenario(address: str) -> str:
        clients = [await H2Attacker.connect(address) for _ in range(160)]  # limit 128
        await asyncio.sleep(0.5)
        refused = [c for c in clients if c.outcome.closed]
        summary = refused[0].outcome.summary() if refused else "none refused"
        if attacked.ferry:
            assert len(refused) >= 160 - 128
            assert refused[-1].outcome.goaway is not None
            assert refused[-1].outcome.goaway[0] == frames.ENHANCE_YOUR_CALM
        # the idle ones are let go after --grpc-max-connection-idle (3 s)
        await asyncio.gather(*(c.wait_until(lambda c=c: c.outcome.closed, 8) for c in clients))
        idle_closed = sum(c.outcome.closed for c in clients) - len(refused)
        for client in clients:
            await client.close()
        return f"{len(refused)} of 160 refused ({summary}); {idle_closed} idle ones closed later"

    attack(attacked, repository, "160 connections (limit 128), then idle", scenario, False)
    # once the idle connections are gone, good clients are served again
    with ServerWatch(attacked.server, repository / "mlp" / "1" / "model.onnx") as watch:
        time.sleep(1)
    assert watch.report.good_ok > 0 and not watch.report.good_failures


def test_gzip_requests_still_work(attacked: Attacked) -> None:
    """The bounded inflation still inflates what a well-behaved client compresses."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(attacked.server.grpc_url)
    tensor = grpcclient.InferInput("input", [4, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((4, 16), np.float32))
    for algorithm in ("gzip", "deflate"):
        result = client.infer("mlp", [tensor], compression_algorithm=algorithm)
        output = result.as_numpy("output")
        assert output is not None and output.shape == (4, 4)
    client.close()
