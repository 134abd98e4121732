"""`ferry serve` (flags named like Triton's, so ferry is a drop-in for tritonserver scripts) and
`ferry check` (the same load-time validation, without serving)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from server.logs import LogSettings, log_format_name, settings_for_level
from server.response_cache import CacheConfigError, CacheSettings, parse_cache_config
from server.restrictions import (
    API_GROUPS,
    GRPC_HEADER_PREFIX,
    RestrictedApis,
    RestrictionError,
    parse_restricted_apis,
)
from server.settings import GrpcTls, GrpcTransport, ModelControlMode, ServerSettings
from server.trace_settings import TraceConfigError, TraceSetting, parse_trace_config

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
        int, typer.Option(help="Largest HTTP request body accepted (after decompression).")
    ] = 512 * 1024 * 1024,
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
            help="Request tracing, Triton's flag (repeatable): rate=N,level=TIMESTAMPS,"
            "count=N,mode=opentelemetry|triton; opentelemetry,url=http://HOST:4318/v1/traces; "
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
) -> None:
    """Serve a model repository over KServe v2 HTTP and gRPC, with dynamic batching."""
    require_repository(model_repository)
    from server.app import run_server

    settings = ServerSettings(
        model_repository=model_repository,
        http_address=http_address,
        http_port=http_port,
        grpc_address=grpc_address,
        grpc_port=grpc_port,
        grpc_transport=grpc_transport,
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
        allow_client_shm=allow_client_shm,
        default_max_batch_size=default_max_batch_size,
        drift_enabled=drift,
        drift_window=drift_window,
        drift_alpha=drift_alpha,
        drift_baseline_samples=drift_baseline_samples,
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
    )
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
