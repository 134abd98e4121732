"""Server settings, built once from the command line and passed down explicitly."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from server.logs import LogSettings
from server.response_cache import CacheSettings
from server.restrictions import RestrictedApis
from server.trace_settings import TraceSetting


class ModelControlMode(enum.StrEnum):
    """Triton's model control modes."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


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
    allow_client_shm: bool = False
    default_max_batch_size: int = 4
    drift_enabled: bool = True
    drift_window: int = 1000
    drift_alpha: float = 0.05
    drift_baseline_samples: int = 0
    log_level: str = "info"
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
