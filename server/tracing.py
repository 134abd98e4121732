"""Request traces: which requests are traced (server/trace_settings.py), their timestamps, and
where they go: OpenTelemetry spans over OTLP/HTTP (`--trace-config mode=opentelemetry`) or
Triton's JSON trace file (`mode=triton`, `triton,file=PATH`; a worker of `--workers N` sends
its traces to the supervisor, which writes the one file: server/workers/trace_file.py).

Nothing here runs for a request that is not traced: the data plane asks `active` first, and
the timestamps are rebuilt after the request from the durations the scheduler measures anyway.

Spans (Triton's three, then ferry's finer ones):
    InferRequest                      the request in the server (parent: the W3C traceparent)
      <model name>                    REQUEST_START, QUEUE_START, REQUEST_END events
        queue                         waiting for a batch
        compute                       COMPUTE_START ... COMPUTE_END events
          compute_input / compute_infer / compute_output
        <step model name> ...         an ensemble's steps: the same spans, one tree per step

As Triton's child traces, an ensemble's steps are traced when the ensemble request is, under
its trace (`parent_id` in the trace file, `triton.trace_parent_id` on spans), and never sampled
on their own. The data plane marks the steps' context (`enter_steps`), so the ensemble
scheduler passes nothing along.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from server.batching import RequestTiming
from server.errors import ServingError
from server.trace_settings import TraceSetting, TraceSettings
from server.types import InferenceRequest

logger = logging.getLogger(__name__)
SERVICE_NAME = "ferry"
TraceEntries = list[dict[str, Any]]  # one trace (and its steps') in Triton's trace file
# where a worker sends its Triton-mode traces (the supervisor writes the file)
ForwardTraces = Callable[[TraceSetting, TraceEntries], None]


@dataclass(slots=True)
class RequestTrace:
    """One traced request: who it is and when things happened (perf_counter seconds)."""

    trace_id: int
    setting: TraceSetting
    model: str
    version: str
    request: InferenceRequest
    started_wall_ns: int
    started: float
    queued: float = 0.0
    ended: float = 0.0
    timing: RequestTiming | None = None
    cache_hit: bool = False
    error: BaseException | None = None
    parent: RequestTrace | None = None  # the ensemble request's trace, for a step
    children: list[RequestTrace] = field(default_factory=list)  # the steps' traces
    exported: bool = False

    def wall_ns(self, perf: float) -> int:
        return self.started_wall_ns + int((perf - self.started) * 1e9)

    def timestamps(self) -> list[tuple[str, float]]:
        """Triton's timestamp names with their perf_counter times, in order."""
        stamps = [("REQUEST_START", self.started)]
        timing = self.timing
        if timing is not None and not self.cache_hit:
            compute = self.queued + timing.queue_s
            stamps += [
                ("QUEUE_START", self.queued),
                ("COMPUTE_START", compute),
                ("COMPUTE_INPUT_END", compute + timing.compute_input_s),
                ("COMPUTE_OUTPUT_START", compute + timing.compute_input_s + timing.compute_infer_s),
                (
                    "COMPUTE_END",
                    compute
                    + timing.compute_input_s
                    + timing.compute_infer_s
                    + timing.compute_output_s,
                ),
            ]
        elif self.queued:
            stamps.append(("QUEUE_START", self.queued))
        stamps.append(("REQUEST_END", self.ended))
        return stamps


UNTRACED = "untraced"
# The trace of the ensemble request whose steps run in this context; UNTRACED when that request
# is not traced; None outside an ensemble's steps.
_STEP_PARENT: contextvars.ContextVar[RequestTrace | str | None] = contextvars.ContextVar(
    "ferry_step_parent", default=None
)


def enter_steps(trace: RequestTrace | None, runs_steps: bool) -> contextvars.Token[Any] | None:
    """Before a model runs (tracing on): the steps of an ensemble see its trace as their
    parent; another model's scheduler sees none (a task it starts never inherits a parent).
    Returns the token for `leave_steps`, or None when nothing changed."""
    if runs_steps:
        return _STEP_PARENT.set(trace if trace is not None else UNTRACED)
    if _STEP_PARENT.get() is not None:
        return _STEP_PARENT.set(None)
    return None


def leave_steps(token: contextvars.Token[Any]) -> None:
    _STEP_PARENT.reset(token)


class TraceExporter(Protocol):
    """Sends finished traces somewhere; `close` flushes what is left."""

    def export(self, trace: RequestTrace) -> None: ...

    def close(self) -> None: ...


class Tracer:
    """Samples requests under the trace settings and hands finished traces to the exporter."""

    def __init__(self, settings: TraceSettings) -> None:
        self.settings = settings
        self.forward: ForwardTraces | None = None  # set in a worker of `--workers N`
        self._ids = itertools.count(1)
        # mode, file and exporter options are the server's (the protocol cannot change them)
        self._exporter: TraceExporter | None = (
            create_exporter(settings.default) if settings.default.mode == "opentelemetry" else None
        )

    @property
    def active(self) -> bool:
        return self.settings.active

    def start(self, model: str, version: str, request: InferenceRequest) -> RequestTrace | None:
        """A trace for this request when it is sampled (an ensemble step: when its ensemble
        request is traced), else None."""
        parent = _STEP_PARENT.get()
        if parent is not None:
            if not isinstance(parent, RequestTrace):
                return None
            return RequestTrace(
                next(self._ids),
                parent.setting,
                model,
                version,
                request,
                time.time_ns(),
                time.perf_counter(),
                parent=parent,
            )
        setting = self.settings.sample(model, bool(request.traceparent))
        if setting is None:
            return None
        return RequestTrace(
            next(self._ids), setting, model, version, request, time.time_ns(), time.perf_counter()
        )

    def finish(self, trace: RequestTrace) -> None:
        """Export a finished trace (a step's goes with its ensemble request's, unless that one
        is gone already); an exporter's failure is logged, never raised."""
        if trace.parent is not None and not trace.parent.exported:
            trace.parent.children.append(trace)
            return
        trace.exported = True
        try:
            if self._exporter is None:
                self._exporter = create_exporter(trace.setting, self.forward)
            self._exporter.export(trace)
        except Exception:
            logger.exception("exporting a trace failed")

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()


def create_exporter(setting: TraceSetting, forward: ForwardTraces | None = None) -> TraceExporter:
    """The exporter of the setting's mode (Triton's file: through `forward` when given)."""
    if setting.mode == "opentelemetry":
        return OpenTelemetryExporter(setting.options)
    if forward is not None:
        return ForwardingExporter(forward)
    return TritonFileExporter(setting.file, setting.log_frequency)


class OpenTelemetryExporter:
    """Spans through the OpenTelemetry SDK, batched and sent over OTLP/HTTP in the background."""

    def __init__(self, options: dict[str, str] | Any) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attributes: dict[str, str] = {"service.name": SERVICE_NAME}
        for pair in filter(None, options.get("resource", "").split(",")):
            key, _, value = pair.partition("=")
            attributes[key] = value
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=options["url"]),
                max_queue_size=int(options["bsp_max_queue_size"]),
                schedule_delay_millis=float(options["bsp_schedule_delay"]),
                max_export_batch_size=int(options["bsp_max_export_batch_size"]),
            )
        )
        self._tracer = self._provider.get_tracer("ferry")
        self._propagator = TraceContextTextMapPropagator()

    def export(self, trace: RequestTrace) -> None:
        from opentelemetry import trace as otel
        from opentelemetry.trace import SpanKind, Status, StatusCode

        request = trace.request
        wall = {name: trace.wall_ns(at) for name, at in trace.timestamps()}
        parent = (
            self._propagator.extract({"traceparent": request.traceparent})
            if request.traceparent
            else None
        )
        root = self._tracer.start_span(
            "InferRequest",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=wall["REQUEST_START"],
            attributes={"ferry.protocol": request.protocol, "client.address": request.client},
        )
        error = self._model_spans(trace, otel.set_span_in_context(root))
        if error is not None:
            root.set_status(Status(StatusCode.ERROR, error))
        root.end(end_time=wall["REQUEST_END"])

    def _model_spans(self, trace: RequestTrace, context: Any) -> str | None:
        """The model span of one trace under `context`, its queue and compute spans, and the
        model spans of its steps under it; the error message when the request failed."""
        from opentelemetry import trace as otel
        from opentelemetry.trace import SpanKind, Status, StatusCode

        wall = {name: trace.wall_ns(at) for name, at in trace.timestamps()}
        model_span = self._tracer.start_span(
            trace.model,
            context=context,
            kind=SpanKind.SERVER,
            start_time=wall["REQUEST_START"],
            attributes={
                "triton.model_name": trace.model,
                "triton.model_version": int(trace.version),
                "triton.trace_id": trace.trace_id,
                "triton.trace_parent_id": trace.parent.trace_id if trace.parent else 0,
                "triton.request_id": trace.request.id,
                "ferry.cache_hit": trace.cache_hit,
            },
        )
        for name in ("REQUEST_START", "QUEUE_START"):
            if name in wall:
                model_span.add_event(name, timestamp=wall[name])
        if "COMPUTE_START" in wall:
            model_context = otel.set_span_in_context(model_span)
            self._span("queue", model_context, wall["QUEUE_START"], wall["COMPUTE_START"])
            compute = self._tracer.start_span(
                "compute",
                context=model_context,
                kind=SpanKind.SERVER,
                start_time=wall["COMPUTE_START"],
                attributes={"ferry.batch_size": trace.timing.batch_size if trace.timing else 0},
            )
            for name in (
                "COMPUTE_START",
                "COMPUTE_INPUT_END",
                "COMPUTE_OUTPUT_START",
                "COMPUTE_END",
            ):
                compute.add_event(name, timestamp=wall[name])
            compute_context = otel.set_span_in_context(compute)
            for name, start, end in (
                ("compute_input", "COMPUTE_START", "COMPUTE_INPUT_END"),
                ("compute_infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
                ("compute_output", "COMPUTE_OUTPUT_START", "COMPUTE_END"),
            ):
                self._span(name, compute_context, wall[start], wall[end])
            compute.end(end_time=wall["COMPUTE_END"])
        for child in trace.children:
            self._model_spans(child, otel.set_span_in_context(model_span))
        model_span.add_event("REQUEST_END", timestamp=wall["REQUEST_END"])
        message = None
        if trace.error is not None:
            message = (
                trace.error.message if isinstance(trace.error, ServingError) else repr(trace.error)
            )
            model_span.set_status(Status(StatusCode.ERROR, message))
        model_span.end(end_time=wall["REQUEST_END"])
        return message

    def _span(self, name: str, context: Any, start_ns: int, end_ns: int) -> None:
        span = self._tracer.start_span(name, context=context, start_time=start_ns)
        span.end(end_time=end_ns)

    def close(self) -> None:
        self._provider.shutdown()  # flushes the spans still queued


class TritonFileExporter:
    """Triton's JSON trace file: every `log_frequency` traces to `FILE.<n>`, or all of them to
    FILE at shutdown when it is 0. Timestamps are steady-clock nanoseconds, as Triton's."""

    def __init__(self, path: str, log_frequency: int) -> None:
        self.path = path
        self.log_frequency = log_frequency
        self._entries: list[dict[str, Any]] = []
        self._traces = 0
        self._index = 0

    def export(self, trace: RequestTrace) -> None:
        self.add(trace_entries(trace))

    def add(self, entries: TraceEntries) -> None:
        """One trace's entries (with its steps')."""
        self._entries.extend(entries)
        self._traces += 1
        if self.log_frequency and self._traces >= self.log_frequency:
            self._write(f"{self.path}.{self._index}")
            self._index += 1

    def _write(self, path: str) -> None:
        Path(path).write_text(json.dumps(self._entries))
        self._entries, self._traces = [], 0

    def close(self) -> None:
        if self._entries:
            self._write(self.path if not self.log_frequency else f"{self.path}.{self._index}")


def trace_entries(trace: RequestTrace) -> TraceEntries:
    """A trace's entries in Triton's trace file, then its steps' (each with the ensemble's id as
    parent_id)."""
    header: dict[str, Any] = {
        "id": trace.trace_id,
        "model_name": trace.model,
        "model_version": int(trace.version),
    }
    if trace.request.id:
        header["request_id"] = trace.request.id
    if trace.parent is not None:
        header["parent_id"] = trace.parent.trace_id
    entries = [header]
    for name, at in trace.timestamps():
        entries.append({"id": trace.trace_id, "timestamps": [{"name": name, "ns": int(at * 1e9)}]})
    for child in trace.children:
        entries.extend(trace_entries(child))
    return entries


class ForwardingExporter:
    """A worker's Triton-mode traces, each handed to `forward` (to the supervisor, which writes
    the one trace file of the server, as Triton's single process does)."""

    def __init__(self, forward: ForwardTraces) -> None:
        self._forward = forward

    def export(self, trace: RequestTrace) -> None:
        self._forward(trace.setting, trace_entries(trace))

    def close(self) -> None:
        """Nothing kept here: the supervisor writes what is left when the workers are gone."""
