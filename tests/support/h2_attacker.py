"""A hand-driven HTTP/2 client for attack tests: a real socket on loopback and frames built by
hand, so it can send what no well-behaved client sends, and leave unread what it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

import hpack

from server.protocol.grpc_wire import frames

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
FRAME_BYTES = 16_384


def grpc_fields(path: str = INFER_PATH, **extra: str) -> list[tuple[str, str]]:
    fields = {
        ":method": "POST",
        ":scheme": "http",
        ":path": path,
        ":authority": "attacker",
        "content-type": "application/grpc",
        "te": "trailers",
    }
    return list({**fields, **extra}.items())


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes((int(compressed),)) + len(payload).to_bytes(4, "big") + payload


@dataclass
class Outcome:
    """What the server told the attacker."""

    goaway: tuple[int, str] | None = None  # error code, debug text
    resets: dict[int, int] = field(default_factory=dict)  # stream -> RST_STREAM error code
    trailers: dict[int, dict[str, str]] = field(default_factory=dict)  # stream -> last block
    data_bytes: int = 0
    pings: int = 0  # PINGs the server sent (not acknowledgements)
    closed: bool = False

    def status(self, stream_id: int) -> str | None:
        return self.trailers.get(stream_id, {}).get("grpc-status")

    def summary(self) -> str:
        parts = []
        if self.goaway is not None:
            parts.append(f"GOAWAY {error_name(self.goaway[0])} '{self.goaway[1]}'")
        statuses: dict[str, int] = {}
        for fields in self.trailers.values():
            if "grpc-status" in fields:
                key = f"grpc-status {fields['grpc-status']} '{fields.get('grpc-message', '')}'"
                statuses[key] = statuses.get(key, 0) + 1
        parts += [f"{count}x {key}" for key, count in statuses.items()]
        codes: dict[int, int] = {}
        for code in self.resets.values():
            codes[code] = codes.get(code, 0) + 1
        parts += [f"{count}x RST_STREAM {error_name(code)}" for code, count in codes.items()]
        if self.closed and self.goaway is None:
            parts.append("connection closed")
        return "; ".join(parts) or "nothing"


_ERRORS = {
    getattr(frames, name): name
    for name in (
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "ENHANCE_YOUR_CALM",
    )
}


def error_name(code: int) -> str:
    return _ERRORS.get(code, hex(code))


class H2Attacker:
    """One connection. With `read=False` nothing the server sends is ever read."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read: bool
    ) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 24)
        self.outcome = Outcome()
        self.changed = asyncio.Event()
        self.send_window = frames.DEFAULT_WINDOW
        self.initial_stream_window = frames.DEFAULT_WINDOW
        self.stream_credit: dict[int, int] = {}
        self.ack_settings = True  # off for attacks that must not interleave other frames
        self.settings_seen = False
        self._reading = asyncio.create_task(self._read_loop()) if read else None

    @classmethod
    async def connect(
        cls,
        address: str,
        read: bool = True,
        settings: dict[int, int] | None = None,
        window_increment: int = 0,
        ack_settings: bool = True,
    ) -> H2Attacker:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(frames.PREFACE + frames.settings_frame(settings or {}))
        if window_increment:
            writer.write(frames.window_update(0, window_increment))
        attacker = cls(reader, writer, read)
        if not ack_settings:  # the server's SETTINGS acknowledged now, nothing more later
            await attacker.wait_until(lambda: attacker.settings_seen, 10)
            attacker.ack_settings = False
        return attacker

    # ---- frames

    def headers(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> bytes:
        block = self.encoder.encode(fields)
        pieces = [block[i : i + FRAME_BYTES] for i in range(0, len(block), FRAME_BYTES)] or [b""]
        flag = frames.END_STREAM if end_stream else 0
        out = [
            frames.frame(
                frames.HEADERS if i == 0 else frames.CONTINUATION,
                (flag if i == 0 else 0) | (frames.END_HEADERS if i == len(pieces) - 1 else 0),
                stream_id,
                piece,
            )
            for i, piece in enumerate(pieces)
        ]
        return b"".join(out)

    @staticmethod
    def data(stream_id: int, payload: bytes, end_stream: bool) -> bytes:
        pieces = [payload[i : i + FRAME_BYTES] for i in range(0, len(payload), FRAME_BYTES)]
        pieces = pieces or [b""]
        return b"".join(
            frames.frame(
                frames.DATA,
                frames.END_STREAM if end_stream and i == len(pieces) - 1 else 0,
                stream_id,
                piece,
            )
            for i, piece in enumerate(pieces)
        )

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> bool:
        """False once the server has closed the connection."""
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            return False
        await asyncio.sleep(0)  # drain() need not yield: let the reader see what came back
        return not self.outcome.closed

    async def send_flow_controlled(
        self, stream_id: int, payload: bytes, end_stream: bool, stall_s: float = 30.0
    ) -> bool:
        """DATA within the windows the server grants; False when the stream or connection ends
        first (or the server stops granting for `stall_s` seconds)."""
        offset = 0
        while offset < len(payload):
            window = min(
                self.send_window,
                self.initial_stream_window + self.stream_credit.get(stream_id, 0),
                FRAME_BYTES,
            )
            if self.outcome.closed or stream_id in self.outcome.resets:
                return False
            if stream_id in self.outcome.trailers:
                return False
            if window <= 0:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), stall_s)
                except TimeoutError:
                    return False
                continue
            piece = payload[offset : offset + window]
            offset += len(piece)
            self.send_window -= len(piece)
            self.stream_credit[stream_id] = self.stream_credit.get(stream_id, 0) - len(piece)
            last = end_stream and offset >= len(payload)
            self.send(frames.frame(frames.DATA, frames.END_STREAM if last else 0, stream_id, piece))
            if not await self.drain():
                return False
        return True

    # ---- what comes back

    async def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= frames.FRAME_HEADER_BYTES:
                    high, low, kind, flags, stream_id = frames.FRAME_HEADER.unpack_from(buffer)
                    length = (high << 16) | low
                    if len(buffer) < frames.FRAME_HEADER_BYTES + length:
                        break
                    payload = buffer[frames.FRAME_HEADER_BYTES : frames.FRAME_HEADER_BYTES + length]
                    buffer = buffer[frames.FRAME_HEADER_BYTES + length :]
                    self._on_frame(kind, flags, stream_id, payload)
                self.changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.outcome.closed = True
            self.changed.set()

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == frames.SETTINGS and not flags & frames.ACK:
            for offset in range(0, len(payload), 6):
                key, value = struct.unpack_from(">HL", payload, offset)
                if key == frames.SETTINGS_INITIAL_WINDOW_SIZE:
                    self.initial_stream_window = value
            if self.ack_settings:
                self.send(frames.frame(frames.SETTINGS, frames.ACK, 0))
            self.settings_seen = True
        elif kind == frames.WINDOW_UPDATE:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
            else:
                self.stream_credit[stream_id] = self.stream_credit.get(stream_id, 0) + increment
        elif kind == frames.HEADERS:
            fields = {str(k): str(v) for k, v in self.decoder.decode(payload)}
            self.outcome.trailers[stream_id] = fields
        elif kind == frames.DATA:
            self.outcome.data_bytes += len(payload)
        elif kind == frames.RST_STREAM:
            self.outcome.resets[stream_id] = int.from_bytes(payload, "big")
        elif kind == frames.PING and not flags & frames.ACK:
            self.outcome.pings += 1
        elif kind == frames.GOAWAY:
            code = int.from_bytes(payload[4:8], "big")
            self.outcome.goaway = (code, payload[8:].decode(errors="replace"))

    async def wait_until(self, done: object, seconds: float) -> bool:
        """Wait until `done()` holds (checked whenever frames arrive)."""
        assert callable(done)
        deadline = asyncio.get_running_loop().time() + seconds
        while not done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
