"""`ferry serve` (flags named like Triton's, so ferry is a drop-in for tritonserver scripts) and
`ferry check` (the same load-time validation, without serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from server.gc_policy import GcPolicy
from server.logs import LogSettings, log_format_name, settings_for_level
from server.response_cache import CacheConfigError, CacheSettings, parse_cache_config
from server.restrictions import (
    API_GROUPS,
    GRPC_HEADER_PREFIX,
    RestrictedApis,
    RestrictionError,
    parse_restricted_apis,
)
from server.settings import (
    DriftEvaluator,
    GrpcLimits,
    GrpcTls,
    GrpcTransport,
    ModelControlMode,
    ServerSettings,
)
from server.trace_settings import TraceConfigError, TraceSetting, parse_trace_config

_LIMITS = GrpcLimits()  # the defaults shown in --help

ModelRepositoryOption = Annotated[
    Path,
    typer.Option(
        help="Triton-layout model repository: REPO/NAME/config.pbtxt + "
        "REPO/NAME/<version>/model.onnx|model.plan (an existing directory)."
    ),
]
DefaultMaxBatchSizeOption = Annotated[
    int, typer.Option(help="max_batch_size given to auto-completed batching models.")
]


def serve(
    model_repository: ModelRepositoryOption,
    http_port: Annotated[int, typer.Option(help="HTTP/REST (KServe v2) port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC (KServe v2) port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port.")] = 8002,
    http_address: Annotated[str, typer.Option(help="HTTP bind address.")] = "0.0.0.0",
    grpc_address: Annotated[str, typer.Option(help="gRPC bind address.")] = "0.0.0.0",
    metrics_address: Annotated[str, typer.Option(help="Metrics bind address.")] = "0.0.0.0",
    grpc_transport: Annotated[
        GrpcTransport,
        typer.Option(
            help="ferry: ferry's own HTTP/2 layer on the event loop (fast; batches "
            "form across concurrent calls); grpcio: grpc.aio (about a third of the "
            "throughput). Both serve TLS and restricted protocols."
        ),
    ] = GrpcTransport.FERRY,
    grpc_max_message_bytes: Annotated[
        int,
        typer.Option(
            help="Largest gRPC request or response message, after decompression "
            "(RESOURCE_EXHAUSTED beyond it; Triton's fixed limit is the default)."
        ),
    ] = _LIMITS.max_message_bytes,
    grpc_max_buffered_request_bytes: Annotated[
        int,
        typer.Option(
            help="Request bytes the server buffers across all gRPC calls and connections "
            "(received, decompressed, not yet handled). A call that would pass it gets "
            "RESOURCE_EXHAUSTED at once; so does a message larger than it."
        ),
    ] = _LIMITS.max_buffered_request_bytes,
    grpc_max_concurrent_streams: Annotated[
        int,
        typer.Option(
            help="Open gRPC calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS; "
            "more are refused with REFUSED_STREAM)."
        ),
    ] = _LIMITS.max_concurrent_streams,
    grpc_max_connections: Annotated[
        int, typer.Option(help="Open gRPC connections; more are closed at once.")
    ] = _LIMITS.max_connections,
    grpc_max_header_list_bytes: Annotated[
        int,
        typer.Option(
            help="Largest gRPC header list (metadata), as HTTP/2 measures it: over it the call "
            "gets RESOURCE_EXHAUSTED, over twice it the connection is closed."
        ),
    ] = _LIMITS.max_header_list_bytes,
    grpc_http2_max_resets_per_second: Annotated[
        int,
        typer.Option(
            help="RST_STREAM frames a client may send per second, in bursts of 200 "
            "(rapid reset; over it: GOAWAY ENHANCE_YOUR_CALM). 0: no limit."
        ),
    ] = _LIMITS.max_resets_per_second,
    grpc_http2_max_control_frames_per_second: Annotated[
        int,
        typer.Option(
            help="SETTINGS entries, PING, PRIORITY, empty and unknown frames a client may "
            "send per second, in bursts of 1000 (over it: GOAWAY ENHANCE_YOUR_CALM). 0: no limit."
        ),
    ] = _LIMITS.max_control_frames_per_second,
    grpc_handshake_timeout: Annotated[
        int,
        typer.Option(help="Milliseconds a new gRPC connection has to send its preface."),
    ] = _LIMITS.handshake_timeout_ms,
    grpc_max_connection_idle: Annotated[
        int,
        typer.Option(
            help="Milliseconds a gRPC connection may stay without calls before it gets "
            "GOAWAY (clients reconnect when they next call). 0: no limit."
        ),
    ] = _LIMITS.max_connection_idle_ms,
    grpc_request_receive_timeout: Annotated[
        int,
        typer.Option(
            help="Milliseconds a gRPC request message may take to arrive once its call (or, on "
            "a stream, the message) has begun; then DEADLINE_EXCEEDED. 0: no limit."
        ),
    ] = _LIMITS.request_receive_timeout_ms,
    grpc_keepalive_time: Annotated[
        int,
        typer.Option(help="Milliseconds without reads after which a keepalive PING is sent."),
    ] = _LIMITS.keepalive_time_ms,
    grpc_keepalive_timeout: Annotated[
        int,
        typer.Option(help="Milliseconds to wait for a keepalive PING's ACK before closing."),
    ] = _LIMITS.keepalive_timeout_ms,
    grpc_keepalive_permit_without_calls: Annotated[
        bool,
        typer.Option(help="Keepalive pings (sent and received) also while no call is open."),
    ] = _LIMITS.keepalive_permit_without_calls,
    grpc_http2_max_pings_without_data: Annotated[
        int,
        typer.Option(
            help="Keepalive pings sent while no DATA/HEADERS frame is sent (0: no limit)."
        ),
    ] = _LIMITS.http2_max_pings_without_data,
    grpc_http2_min_recv_ping_interval_without_data: Annotated[
        int,
        typer.Option(
            help="Milliseconds expected between a client's PINGs while the server sends "
            "nothing; a sooner PING is a strike."
        ),
    ] = _LIMITS.http2_min_recv_ping_interval_without_data_ms,
    grpc_http2_max_ping_strikes: Annotated[
        int,
        typer.Option(
            help="Strikes tolerated before GOAWAY ENHANCE_YOUR_CALM (too_many_pings); 0: any."
        ),
    ] = _LIMITS.http2_max_ping_strikes,
    grpc_max_connection_age: Annotated[
        int | None,
        typer.Option(help="Milliseconds after which a connection gets GOAWAY (±10 %)."),
    ] = _LIMITS.max_connection_age_ms,
    grpc_max_connection_age_grace: Annotated[
        int | None,
        typer.Option(help="Milliseconds calls get after that GOAWAY before being cut."),
    ] = _LIMITS.max_connection_age_grace_ms,
    allow_http: Annotated[bool, typer.Option(help="Serve HTTP.")] = True,
    allow_grpc: Annotated[bool, typer.Option(help="Serve gRPC.")] = True,
    allow_metrics: Annotated[bool, typer.Option(help="Serve Prometheus metrics.")] = True,
    model_control_mode: Annotated[
        ModelControlMode,
        typer.Option(
            help="none: load everything at start; poll: rescan the repository every "
            "--repository-poll-secs; explicit: load/unload only via the API and "
            "--load-model."
        ),
    ] = ModelControlMode.NONE,
    load_model: Annotated[
        list[str] | None,
        typer.Option(help="Model to load at start in explicit mode ('*' loads all). Repeatable."),
    ] = None,
    repository_poll_secs: Annotated[
        float, typer.Option(help="Seconds between repository scans in poll mode.")
    ] = 15.0,
    strict_readiness: Annotated[
        bool, typer.Option(help="Ready only when every loaded model is ready.")
    ] = True,
    exit_timeout_secs: Annotated[
        float, typer.Option(help="On SIGTERM, how long to wait for accepted requests.")
    ] = 30.0,
    http_max_request_bytes: Annotated[
        int,
        typer.Option(
            help="Largest HTTP request body, in bytes, as sent (413 past it; a declared "
            "Content-Length over it is refused before the body is read).",
            rich_help_panel="HTTP limits",
        ),
    ] = 512 * 1024 * 1024,
    http_max_buffered_bytes: Annotated[
        int,
        typer.Option(
            help="Server-wide budget, in bytes, of HTTP request bodies being received or "
            "decoded, across all connections (503 at once past it). At least "
            "--http-max-request-bytes.",
            rich_help_panel="HTTP limits",
        ),
    ] = 1024 * 1024 * 1024,
    http_max_input_size: Annotated[
        int,
        typer.Option(
            help="Triton's flag: largest JSON part of a request, JSON input tensor (by "
            "shape), raw binary input and decompressed body, in bytes (400 past it).",
            rich_help_panel="HTTP limits",
        ),
    ] = 64 * 1024 * 1024,
    http_max_json_elements: Annotated[
        int,
        typer.Option(
            help="Most elements in a JSON request body (numbers and strings count 1, arrays "
            "and objects 3), counted before parsing (400 past it); send large tensors in "
            "binary.",
            rich_help_panel="HTTP limits",
        ),
    ] = 1 << 18,
    http_max_bytes_elements: Annotated[
        int,
        typer.Option(
            help="Most BYTES tensor elements in one HTTP request (400 past it).",
            rich_help_panel="HTTP limits",
        ),
    ] = 1 << 20,
    http_max_header_bytes: Annotated[
        int,
        typer.Option(
            help="Largest HTTP request line + header block (and trailers), in bytes (431 past it).",
            rich_help_panel="HTTP limits",
        ),
    ] = 64 * 1024,
    http_max_header_count: Annotated[
        int,
        typer.Option(
            help="Most header fields in an HTTP request (431 past it).",
            rich_help_panel="HTTP limits",
        ),
    ] = 100,
    http_header_timeout_secs: Annotated[
        float,
        typer.Option(
            help="Seconds from the first read of a request to the end of its headers (408 "
            "and close past it).",
            rich_help_panel="HTTP limits",
        ),
    ] = 10.0,
    http_body_timeout_secs: Annotated[
        float,
        typer.Option(
            help="Seconds from the end of a request's headers to the end of its body (408 "
            "and close past it).",
            rich_help_panel="HTTP limits",
        ),
    ] = 60.0,
    http_keepalive_timeout_secs: Annotated[
        float,
        typer.Option(
            help="Seconds an HTTP connection may sit idle (fresh or between requests) "
            "before it is closed.",
            rich_help_panel="HTTP limits",
        ),
    ] = 75.0,
    allow_client_shm: Annotated[
        bool,
        typer.Option(
            help="Let clients register POSIX shared memory regions and pass "
            "tensors through them (Triton's system shared memory extension; "
            "off by default, as in Triton: any client can then make the "
            "server read and write shared memory objects it can open)."
        ),
    ] = False,
    default_max_batch_size: DefaultMaxBatchSizeOption = 4,
    workers: Annotated[
        int,
        typer.Option(
            help="Serving processes sharing the HTTP and gRPC ports (SO_REUSEPORT), so protocol "
            "work uses every core; they behave as one server (statistics, metrics, model "
            "control, client shared memory, log and trace settings, readiness, drain, the "
            "response cache). 0 (the default): one per CPU this process may use (affinity and "
            "cgroup quota), at most 8; a single process on one CPU or with a port of 0. 1: a "
            "single process, which holds less memory and serves stateful sequences faster. "
            "Each model is loaded and batched by one worker, its owner, unless "
            "--no-shared-batching; one drift evaluator serves every worker; trace and "
            "request-log sampling count the server's requests.",
            min=0,
        ),
    ] = 0,
    shared_batching: Annotated[
        bool,
        typer.Option(
            help="With --workers N (the default there): load each model in one worker, its "
            "owner, whose batcher runs every worker's requests (the others send it the validated "
            "inputs over a Unix socket): one dynamic batcher, one set of instances and one copy "
            "of the weights per model version, as in a single process, for a hop per request; a "
            "sequence model too, with every sequence (one sequence batcher); while an owner "
            "restarts its models answer 503. --no-shared-batching: every worker loads every "
            "model (instance_group count instances each) and batches its own requests; a "
            "sequence runs on the worker its correlation ID names.",
        ),
    ] = True,
    drift: Annotated[
        bool, typer.Option(help="Online drift detection for models with a reference.npz.")
    ] = True,
    drift_window: Annotated[int, typer.Option(help="Rows per drift evaluation window.")] = 1000,
    drift_alpha: Annotated[
        float, typer.Option(help="Per-window false-alarm rate of the drift test.")
    ] = 0.05,
    drift_baseline_samples: Annotated[
        int,
        typer.Option(
            help="Take the drift reference from the first N production rows "
            "instead of reference.npz (0: off)."
        ),
    ] = 0,
    drift_sample_rate: Annotated[
        float,
        typer.Option(
            help="Fraction of requests whose rows drift monitoring takes, evenly spread (0.1: "
            "every tenth); below 1 it costs that fraction at high request rates.",
            min=0.0,
            max=1.0,
        ),
    ] = 1.0,
    drift_evaluator: Annotated[
        DriftEvaluator,
        typer.Option(
            help="process: evaluate drift windows in a process of their own (one for every "
            "worker), off the serving event loop; thread: on a thread of each serving process."
        ),
    ] = DriftEvaluator.PROCESS,
    log_level: Annotated[
        str,
        typer.Option(
            help="debug, info, warning or error (debug also lets third-party libraries log)."
        ),
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option(
            help="text or json (one JSON object per line); Triton's default and ISO8601 are text."
        ),
    ] = "text",
    log_requests: Annotated[
        bool,
        typer.Option(
            help="One log line per inference request: protocol, model, version, status, "
            "latency, batch size, request id, client address."
        ),
    ] = False,
    log_requests_rate: Annotated[
        float,
        typer.Option(
            help="Share of successful requests that --log-requests logs, in (0, 1]; "
            "failures are always logged."
        ),
    ] = 1.0,
    log_verbose: Annotated[
        int | None, typer.Option(help="Triton's verbose level (>= 1: debug lines).")
    ] = None,
    log_info: Annotated[bool | None, typer.Option(help="Log INFO lines (Triton's flag).")] = None,
    log_warning: Annotated[
        bool | None, typer.Option(help="Log WARNING lines (Triton's flag).")
    ] = None,
    log_error: Annotated[bool | None, typer.Option(help="Log ERROR lines (Triton's flag).")] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="Write the log to this file instead of stderr.")
    ] = None,
    trace_config: Annotated[
        list[str] | None,
        typer.Option(
            metavar="[MODE,]SETTING=VALUE",
            help="Request tracing, Triton's flag (repeatable): rate=N, level=TIMESTAMPS, "
            "count=N, mode=opentelemetry|triton; opentelemetry,url=http://HOST:4318/v1/traces; "
            "opentelemetry,resource=KEY=VALUE; triton,file=PATH; triton,log-frequency=N.",
        ),
    ] = None,
    cache_config: Annotated[
        list[str] | None,
        typer.Option(
            metavar="local,size=BYTES",
            help="Response cache for models with response_cache { enable: true } "
            "(Triton's flag; an LRU of BYTES shared by all models).",
        ),
    ] = None,
    http_restricted_api: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GROUPS:KEY=VALUE",
            help="Put API groups behind a header, as Triton: requests to GROUPS "
            f"(comma-separated: {', '.join(API_GROUPS)}) need header KEY with VALUE, else 403. "
            "Repeatable; a group may be in one restriction only.",
        ),
    ] = None,
    grpc_restricted_protocol: Annotated[
        list[str] | None,
        typer.Option(
            metavar="GROUPS:KEY=VALUE",
            help="The same for gRPC: calls to GROUPS need metadata "
            f"'{GRPC_HEADER_PREFIX}KEY' with VALUE, else UNAVAILABLE. Repeatable.",
        ),
    ] = None,
    grpc_use_ssl: Annotated[
        bool,
        typer.Option(help="Serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)."),
    ] = False,
    grpc_use_ssl_mutual: Annotated[
        bool,
        typer.Option(
            help="Serve gRPC over mutual TLS: clients must present a certificate signed by "
            "--grpc-root-cert (implies --grpc-use-ssl)."
        ),
    ] = False,
    grpc_server_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain) of the gRPC server.")
    ] = None,
    grpc_server_key: Annotated[
        Path | None, typer.Option(help="PEM private key of --grpc-server-cert.")
    ] = None,
    grpc_root_cert: Annotated[
        Path | None,
        typer.Option(
            help="PEM CA certificate(s) that client certificates must chain to (mutual TLS)."
        ),
    ] = None,
    gc_policy: Annotated[
        GcPolicy,
        typer.Option(
            help="server: freeze start-up objects and collect garbage rarely (the request path "
            "makes no reference cycles; keeps garbage-collection pauses out of the tail "
            "latency); python: CPython's defaults."
        ),
    ] = GcPolicy.SERVER,
    loop_lag_probe: Annotated[
        bool,
        typer.Option(
            help="Measure event-loop stalls (a 1 ms timer's lateness) as "
            "ferry_event_loop_lag_seconds on the metrics port."
        ),
    ] = False,
) -> None:
    """Serve a model repository over KServe v2 HTTP and gRPC, with dynamic batching."""
    require_repository(model_repository)
    from server.app import check_settings, run_server
    from server.workers.count import auto_workers

    settings = ServerSettings(
        model_repository=model_repository,
        http_address=http_address,
        http_port=http_port,
        grpc_address=grpc_address,
        grpc_port=grpc_port,
        grpc_transport=grpc_transport,
        grpc_limits=GrpcLimits(
            max_message_bytes=grpc_max_message_bytes,
            max_buffered_request_bytes=grpc_max_buffered_request_bytes,
            max_concurrent_streams=grpc_max_concurrent_streams,
            max_connections=grpc_max_connections,
            max_header_list_bytes=grpc_max_header_list_bytes,
            max_resets_per_second=grpc_http2_max_resets_per_second,
            max_control_frames_per_second=grpc_http2_max_control_frames_per_second,
            handshake_timeout_ms=grpc_handshake_timeout,
            max_connection_idle_ms=grpc_max_connection_idle,
            request_receive_timeout_ms=grpc_request_receive_timeout,
            keepalive_time_ms=grpc_keepalive_time,
            keepalive_timeout_ms=grpc_keepalive_timeout,
            keepalive_permit_without_calls=grpc_keepalive_permit_without_calls,
            http2_max_pings_without_data=grpc_http2_max_pings_without_data,
            http2_min_recv_ping_interval_without_data_ms=(
                grpc_http2_min_recv_ping_interval_without_data
            ),
            http2_max_ping_strikes=grpc_http2_max_ping_strikes,
            max_connection_age_ms=grpc_max_connection_age,
            max_connection_age_grace_ms=grpc_max_connection_age_grace,
        ),
        metrics_address=metrics_address,
        metrics_port=metrics_port,
        allow_http=allow_http,
        allow_grpc=allow_grpc,
        allow_metrics=allow_metrics,
        model_control_mode=model_control_mode,
        load_models=tuple(load_model or ()),
        repository_poll_secs=repository_poll_secs,
        strict_readiness=strict_readiness,
        exit_timeout_secs=exit_timeout_secs,
        http_max_request_bytes=http_max_request_bytes,
        http_max_buffered_bytes=http_max_buffered_bytes,
        http_max_input_size=http_max_input_size,
        http_max_json_elements=http_max_json_elements,
        http_max_bytes_elements=http_max_bytes_elements,
        http_max_header_bytes=http_max_header_bytes,
        http_max_header_count=http_max_header_count,
        http_header_timeout_secs=http_header_timeout_secs,
        http_body_timeout_secs=http_body_timeout_secs,
        http_keepalive_timeout_secs=http_keepalive_timeout_secs,
        allow_client_shm=allow_client_shm,
        # workers share fixed ports: with a port left to the kernel (0), one process serves
        workers=workers or (auto_workers() if 0 not in (http_port, grpc_port) else 1),
        shared_batching=shared_batching,
        default_max_batch_size=default_max_batch_size,
        drift_enabled=drift,
        drift_window=drift_window,
        drift_alpha=drift_alpha,
        drift_sample_rate=drift_sample_rate,
        drift_baseline_samples=drift_baseline_samples,
        drift_evaluator=drift_evaluator,
        log_level=log_level,
        log=log_settings_option(
            log_level, log_format, log_verbose, log_info, log_warning, log_error, log_file
        ),
        log_requests=log_requests,
        log_requests_rate=log_requests_rate_option(log_requests_rate),
        trace=trace_config_option(trace_config),
        cache=cache_config_option(cache_config),
        http_restricted_apis=restricted_apis_option(http_restricted_api, "http-restricted-api"),
        grpc_restricted_protocols=restricted_apis_option(
            grpc_restricted_protocol, "grpc-restricted-protocol", GRPC_HEADER_PREFIX
        ),
        grpc_tls=grpc_tls_option(
            grpc_use_ssl, grpc_use_ssl_mutual, grpc_server_cert, grpc_server_key, grpc_root_cert
        ),
        gc_policy=gc_policy,
        loop_lag_probe=loop_lag_probe,
    )
    try:
        check_settings(settings)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run_server(settings))


def restricted_apis_option(
    specs: list[str] | None, option: str, prefix: str = ""
) -> RestrictedApis:
    """The parsed --http-restricted-api / --grpc-restricted-protocol values (k8s/validate.py
    checks manifests with it too); typer.BadParameter for a bad one."""
    try:
        return parse_restricted_apis(specs or (), option, prefix)
    except RestrictionError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{option}") from None


def log_settings_option(
    level: str,
    log_format: str,
    verbose: int | None,
    info: bool | None,
    warning: bool | None,
    error: bool | None,
    log_file: Path | None,
) -> LogSettings:
    """--log-level sets the severities; Triton's --log-verbose/-info/-warning/-error win."""
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(
            f"'{level}' is not one of debug, info, warning, error", param_hint="--log-level"
        )
    try:
        format_name = log_format_name(log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    if verbose is not None and verbose < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--log-verbose")
    base = settings_for_level(level)
    return LogSettings(
        log_file=str(log_file or ""),
        log_info=base.log_info if info is None else info,
        log_warning=base.log_warning if warning is None else warning,
        log_error=base.log_error if error is None else error,
        log_verbose_level=base.log_verbose_level if verbose is None else verbose,
        log_format=format_name,
    )


def log_requests_rate_option(rate: float) -> float:
    if not 0.0 < rate <= 1.0:
        raise typer.BadParameter("must be in (0, 1]", param_hint="--log-requests-rate")
    return rate


def trace_config_option(values: list[str] | None) -> TraceSetting:
    try:
        return parse_trace_config(values or ())
    except TraceConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--trace-config") from None


def cache_config_option(values: list[str] | None) -> CacheSettings:
    try:
        return parse_cache_config(values or ())
    except CacheConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--cache-config") from None


def grpc_tls_option(
    use_ssl: bool,
    mutual: bool,
    server_cert: Path | None,
    server_key: Path | None,
    root_cert: Path | None,
) -> GrpcTls | None:
    """Triton's TLS flags as one setting; --grpc-use-ssl-mutual implies --grpc-use-ssl.
    typer.BadParameter when a file the mode needs is not named."""
    if not (use_ssl or mutual):
        return None
    if server_cert is None or server_key is None:
        raise typer.BadParameter(
            "TLS needs --grpc-server-cert and --grpc-server-key", param_hint="--grpc-use-ssl"
        )
    if mutual and root_cert is None:
        raise typer.BadParameter(
            "mutual TLS needs --grpc-root-cert to verify client certificates",
            param_hint="--grpc-use-ssl-mutual",
        )
    return GrpcTls(server_cert, server_key, root_cert, mutual)


def check(
    model_repository: ModelRepositoryOption,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Check only this model (repeatable); default: every model."),
    ] = None,
    default_max_batch_size: DefaultMaxBatchSizeOption = 4,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the rows as JSON instead of a table.")
    ] = False,
) -> None:
    """Validate a model repository as `ferry serve` would load it, without serving.

    Each config.pbtxt is read (or auto-completed) and checked, and each selected version's
    model file is compared with it: every input and output must exist with the same datatype
    and a compatible shape. Exit code 0 when every model passes, 1 when any fails, 2 for a
    repository path that is not a directory. Models whose file cannot be read on this machine
    (a TensorRT plan without TensorRT) are SKIPPED, not failed.
    """
    require_repository(model_repository)
    from server.check import report_check

    raise typer.Exit(
        report_check(model_repository, tuple(model or ()), default_max_batch_size, json_output)
    )


def require_repository(path: Path) -> None:
    """A repository path that is not a directory is a usage error: exit code 2, with the reason.

    Checked when the command runs, not when its flags parse, so tools that parse `ferry serve`
    command lines elsewhere (k8s/validate.py) need not have the path.
    """
    from server.check import repository_problem

    problem = repository_problem(path)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Mount `ferry serve` and `ferry check` on the ferry app."""
    app.command("serve")(serve)
    app.command("check")(check)
