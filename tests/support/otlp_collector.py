"""A small OTLP/HTTP trace receiver for tests: `POST /v1/traces` with an
`ExportTraceServiceRequest` (protobuf or OTLP/JSON, optionally gzip), decoded with the
`opentelemetry-proto` messages; the spans it received are kept in memory, each with its
resource attributes.

It speaks the protocol an OpenTelemetry collector speaks to an exporter, so both ferry (the
Python SDK's exporter) and the real `tritonserver` (the C++ SDK's) can export to it.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2


def attribute_value(value: common_pb2.AnyValue) -> Any:
    """The Python value of an OTLP AnyValue."""
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


_HEX_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def parse_json_request(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """OTLP/JSON (what Triton's C++ exporter sends): ids are hex strings there, where protobuf's
    JSON mapping wants base64."""

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: base64.b64encode(bytes.fromhex(value)).decode()
                if key in _HEX_ID_KEYS and isinstance(value, str)
                else fix(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [fix(item) for item in node]
        return node

    return json_format.ParseDict(
        fix(json.loads(body)), trace_service_pb2.ExportTraceServiceRequest()
    )


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector received it (ids as lowercase hex)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int]]
    resource: dict[str, Any]


@dataclass
class OtlpCollector:
    """The receiver's address and what it has received so far."""

    port: int
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def add(self, body: bytes, json_body: bool = False) -> None:
        message = (
            parse_json_request(body)
            if json_body
            else trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        )
        received = []
        for resource_spans in message.resource_spans:
            resource = {a.key: attribute_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: attribute_value(a.value) for a in span.attributes},
                            events=[(e.name, e.time_unix_nano) for e in span.events],
                            resource=resource,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """The spans once `predicate(spans)` holds; AssertionError with what came otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"collector got {len(spans)} spans ({names}) in {timeout}s")
            time.sleep(0.05)


def _handler(collector: OtlpCollector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding", "") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            json_body = self.headers.get("content-type", "").startswith("application/json")
            collector.add(body, json_body)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


@contextlib.contextmanager
def running_collector() -> Iterator[OtlpCollector]:
    """An OTLP/HTTP receiver on a free loopback port for a `with` block; always stopped."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(OtlpCollector(0)))
    collector = OtlpCollector(int(server.server_address[1]))
    server.RequestHandlerClass = _handler(collector)
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
