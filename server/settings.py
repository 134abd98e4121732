"""Server settings, built once from the command line and passed down explicitly."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from server.gc_policy import GcPolicy
from server.logs import LogSettings
from server.response_cache import CacheSettings
from server.restrictions import RestrictedApis
from server.trace_settings import TraceSetting


class DriftEvaluator(enum.StrEnum):
    """Where drift windows are evaluated (`ferry serve --drift-evaluator`)."""

    PROCESS = "process"  # an evaluator process (one for every worker of --workers N)
    THREAD = "thread"  # a thread of each serving process


class ModelControlMode(enum.StrEnum):
    """Triton's model control modes."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # Triton's (and grpcio's channel option) ceiling


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """What one gRPC client may make the server hold or do (`ferry serve --grpc-*` flags, on both
    transports where grpcio lets us). Times are milliseconds, as Triton's gRPC flags take them;
    0 turns a rate limit, timeout or idle limit off; None leaves a connection's age unlimited."""

    max_message_bytes: int = GRPC_MAX_MESSAGE_BYTES  # after decompression
    max_buffered_request_bytes: int = 1 << 30  # server-wide, every stream and connection
    max_concurrent_streams: int = 1000  # per connection, advertised in SETTINGS
    max_connections: int = 4096
    max_header_list_bytes: int = 16 * 1024  # gRPC core's hard metadata limit
    max_resets_per_second: int = 33  # a client's RST_STREAMs (rapid reset), burst 200
    max_control_frames_per_second: int = 1000  # SETTINGS/PING/PRIORITY/empty frames, burst 1000
    handshake_timeout_ms: int = 10_000  # the preface and SETTINGS of a new connection
    max_connection_idle_ms: int = 0  # a connection without calls gets GOAWAY after this
    request_receive_timeout_ms: int = 120_000  # a request message, once its call has begun
    keepalive_time_ms: int = 7_200_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2
    http2_min_recv_ping_interval_without_data_ms: int = 300_000
    http2_max_ping_strikes: int = 2
    max_connection_age_ms: int | None = None
    max_connection_age_grace_ms: int | None = None

    @property
    def max_receivable_message_bytes(self) -> int:
        """A message larger than the whole budget could never be buffered."""
        return min(self.max_message_bytes, self.max_buffered_request_bytes)


class GrpcTransport(enum.StrEnum):
    """Which implementation serves gRPC: ferry's own HTTP/2 layer, or grpcio's grpc.aio."""

    FERRY = "ferry"
    GRPCIO = "grpcio"


@dataclass(frozen=True)
class GrpcTls:
    """TLS on the gRPC port (Triton's --grpc-use-ssl[-mutual], --grpc-server-cert/-key,
    --grpc-root-cert): PEM files; `mutual` requires clients to present a certificate that
    `root_cert` signed."""

    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False


@dataclass(frozen=True)
class ServerSettings:
    """Everything `ferry serve` can be told; field names follow Triton's flags."""

    model_repository: Path
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    grpc_transport: GrpcTransport = GrpcTransport.FERRY
    grpc_limits: GrpcLimits = field(default_factory=GrpcLimits)
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    model_control_mode: ModelControlMode = ModelControlMode.NONE
    load_models: tuple[str, ...] = ()
    repository_poll_secs: float = 15.0
    strict_readiness: bool = True
    exit_timeout_secs: float = 30.0
    http_max_request_bytes: int = 512 * 1024 * 1024
    http_max_buffered_bytes: int = 1024 * 1024 * 1024
    http_max_input_size: int = 64 * 1024 * 1024
    http_max_json_elements: int = 1 << 18
    http_max_bytes_elements: int = 1 << 20
    http_max_header_bytes: int = 64 * 1024
    http_max_header_count: int = 100
    http_header_timeout_secs: float = 10.0
    http_body_timeout_secs: float = 60.0
    http_keepalive_timeout_secs: float = 75.0
    allow_client_shm: bool = False
    default_max_batch_size: int = 4
    drift_enabled: bool = True
    drift_window: int = 1000
    drift_alpha: float = 0.05
    drift_baseline_samples: int = 0
    drift_sample_rate: float = 1.0  # of the requests whose rows drift monitoring takes
    drift_evaluator: DriftEvaluator = DriftEvaluator.PROCESS
    # the shared drift evaluator of `--workers N` (set by the supervisor for its workers)
    drift_service_path: str | None = None
    drift_service_key: bytes | None = None
    log_level: str = "info"
    gc_policy: GcPolicy = GcPolicy.SERVER
    loop_lag_probe: bool = False
    # logs, traces and the response cache (Triton's --log-*, --trace-config, --cache-config)
    log: LogSettings = field(default_factory=LogSettings)
    log_requests: bool = False
    log_requests_rate: float = 1.0
    trace: TraceSetting = field(default_factory=TraceSetting)
    cache: CacheSettings = field(default_factory=CacheSettings)
    extra: dict[str, str] = field(default_factory=dict)
    # access control and TLS (Triton's flags)
    http_restricted_apis: RestrictedApis = field(default_factory=dict)
    grpc_restricted_protocols: RestrictedApis = field(default_factory=dict)
    grpc_tls: GrpcTls | None = None
    workers: int = 1  # serving processes (`--workers`); 1: this process serves, as always
    shared_batching: bool = True  # with workers > 1: each model's requests run in its owner
    # set on each worker of `ferry serve --workers N` by its supervisor: the HTTP and gRPC
    # listeners share their ports with the other workers (SO_REUSEPORT), the metrics port is the
    # supervisor's, and the worker joins the supervisor's control channel at this Unix socket
    reuse_port: bool = False
    worker_control: Path | None = None
    worker_slot: int = 0
