"""Composition root: builds the repository, data plane, monitors and transports, runs them on one
event loop, and shuts down gracefully.

SIGTERM/SIGINT: readiness goes false at once, new inference requests are refused (503), every
accepted request completes (up to --exit-timeout-secs), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.check import model_names, repository_problem
from server.connection_moves import GRPC, HTTP, ConnectionMover
from server.dataplane import DataPlane
from server.errors import ServingError
from server.gc_policy import apply_after_startup
from server.logs import LogControl, configure_logging
from server.observers import ObserverFanout
from server.operations import Operations
from server.protocol.grpc import create_grpc_server
from server.protocol.grpc_wire.server import GrpcWireServer
from server.protocol.http import create_http_app
from server.protocol.http_connection import limited_protocol
from server.protocol.http_limits import HttpLimits, http_limits
from server.protocol.status import status_text
from server.repository import ModelRepository
from server.request_log import ModelEventLog, RequestLog
from server.response_cache import ResponseCache
from server.sampling import local_counter
from server.settings import DriftEvaluator, GrpcTransport, ModelControlMode, ServerSettings
from server.shared_memory import SharedMemoryManager
from server.trace_settings import TraceSettings
from server.tracing import Tracer
from server.workers.byte_pool import SharedBytePool, SharedCachePool
from server.workers.count import model_cpu_threads
from server.workers.handoff import Adopt, ConnectionHandoff, MovesCollector
from server.workers.link import WorkerLink
from server.workers.remote_model import (
    SUBMIT,
    VERDICT,
    OwnerPlacement,
    RemoteScheduler,
    runs_in_owner,
)
from server.workers.sampling_table import SamplingTable
from server.workers.sequences import SequenceRouter, model_owner_of

if TYPE_CHECKING:
    from monitoring.drift_remote import DriftServiceAddress, DriftServiceProcess

logger = logging.getLogger("ferry")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: ferry's shutdown drains first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_server(
    app: Any, host: str, port: int, limits: HttpLimits, mover: ConnectionMover | None = None
) -> _Uvicorn:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        # the limits, timeouts and keep-alive (IdleConnections) are the protocol's: uvicorn's
        # own timeout_keep_alive is not read by it
        http=limited_protocol(limits, mover),
        # said, not guessed: uvicorn's guess needs `__call__` to be a coroutine function, and
        # InferFastPath's is a plain one returning its handler's coroutine
        interface="asgi3",
        ws="none",
        lifespan="off",
        # uvicorn's loggers go through ferry's handler, quiet unless verbose (server/logs.py)
        log_config=None,
        log_level=None,
        access_log=False,
        backlog=4096,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    return _Uvicorn(config)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT: every worker of `ferry serve --workers
    N` binds its own, and the kernel spreads new connections over them (a worker that exits
    leaves the group; its queued, not yet accepted, connections are reset)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def _metrics_app(render: Callable[[], Awaitable[tuple[bytes, str]]]) -> Starlette:
    async def metrics(_: Request) -> Response:
        body, content_type = await render()
        return Response(body, media_type=content_type)

    return Starlette(
        routes=[
            Route("/metrics", metrics, methods=["GET"]),
            Route("/metrics/", metrics, methods=["GET"]),
        ]
    )


def _metrics_server(
    settings: ServerSettings, render: Callable[[], Awaitable[tuple[bytes, str]]]
) -> _Uvicorn:
    """The metrics listener (of this process, or of the supervisor of several workers)."""
    return _uvicorn_server(
        _metrics_app(render),
        settings.metrics_address,
        settings.metrics_port,
        http_limits(settings),
    )


def _logs_model_events(settings: ServerSettings) -> Callable[[str], bool] | None:
    """Which models' state changes this process logs (None: all): under --shared-batching a
    worker logs those of the models it owns, so the server logs each change once."""
    if settings.worker_control is None or not settings.shared_batching:
        return None
    slot, workers = settings.worker_slot, settings.workers
    return lambda model: model_owner_of(model, workers) == slot


def _budget_pools(
    settings: ServerSettings,
) -> tuple[SharedBytePool | None, SharedBytePool | None]:
    """In a worker of `--workers N`: the pools of `--http-max-buffered-bytes` and
    `--grpc-max-buffered-request-bytes` that every worker leases from (else None, None). They
    stay mapped until the process exits: a late release (an inflation thread's) finds them."""
    if settings.worker_control is None:
        return None, None
    folder, workers, slot = settings.worker_control.parent, settings.workers, settings.worker_slot
    return (
        SharedBytePool(folder, "http", workers, slot, settings.http_max_buffered_bytes),
        SharedBytePool(
            folder, "grpc", workers, slot, settings.grpc_limits.max_buffered_request_bytes
        ),
    )


def _grpc_connection_pool(settings: ServerSettings) -> SharedBytePool | None:
    """In a worker of `--workers N` on ferry's gRPC transport: `--grpc-max-connections` as a pool
    of connections every worker leases from (one unit each), so the server, not each worker,
    holds at most that many (grpcio counts them in grpc core: split, server/workers/budgets.py)."""
    if settings.worker_control is None or settings.grpc_transport != GrpcTransport.FERRY:
        return None
    folder, workers, slot = settings.worker_control.parent, settings.workers, settings.worker_slot
    return SharedBytePool(
        folder, "grpc-connections", workers, slot, settings.grpc_limits.max_connections
    )


def _response_cache(settings: ServerSettings) -> ResponseCache | None:
    """The response cache (None: no --cache-config); in a worker of `--workers N`, leasing its
    bytes from the server's pool (server/response_cache.py), mapped until the process exits."""
    size = settings.cache.size_bytes
    if not size:
        return None
    if settings.worker_control is None:
        return ResponseCache(size)
    folder = settings.worker_control.parent
    return ResponseCache(
        size, SharedCachePool(folder, settings.workers, settings.worker_slot, size)
    )


def _operations(
    settings: ServerSettings, cache: ResponseCache | None, log_control: LogControl | None
) -> tuple[Operations, SamplingTable | None]:
    """Request log, tracer, response cache and log settings as the flags set them; in a worker
    of `--workers N`, the server's sampling counters they count with (to close on exit)."""
    sampling = (
        None if settings.worker_control is None else SamplingTable(settings.worker_control.parent)
    )
    counters = local_counter if sampling is None else sampling.counter
    operations = Operations(
        RequestLog(status_text, settings.log_requests, settings.log_requests_rate, counters),
        Tracer(TraceSettings(settings.trace, counters)),
        cache,
        log_control,
    )
    return operations, sampling


async def serve(settings: ServerSettings, log_control: LogControl | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    from monitoring import build_monitors

    repository_ref: list[ModelRepository] = []
    cache = _response_cache(settings)
    monitors = build_monitors(
        pending_requests=lambda: repository_ref[0].pending_request_counts(),
        sequence_counts=lambda: repository_ref[0].sequence_counts(),
        drift_enabled=settings.drift_enabled,
        drift_window=settings.drift_window,
        drift_alpha=settings.drift_alpha,
        drift_baseline_samples=settings.drift_baseline_samples,
        loop_lag_probe=settings.loop_lag_probe,
        cache_totals=cache.totals if cache is not None else None,
        drift_process=settings.drift_evaluator == DriftEvaluator.PROCESS,
        drift_service=_drift_service_address(settings),
        drift_sample_rate=settings.drift_sample_rate,
    )
    fanout = ObserverFanout([*monitors.observers, ModelEventLog(_logs_model_events(settings))])
    repository = ModelRepository(
        settings.model_repository,
        settings.model_control_mode,
        fanout,
        settings.default_max_batch_size,
        model_cpu_threads(settings.workers, settings.shared_batching),
    )
    repository_ref.append(repository)
    shared_memory = SharedMemoryManager() if settings.allow_client_shm else None
    link = (
        None
        if settings.worker_control is None
        else WorkerLink(settings.worker_control, settings.worker_slot)
    )
    operations, sampling = _operations(settings, cache, log_control)
    if link is not None:  # Triton-mode traces go to the supervisor's one trace file
        operations.tracer.forward = link.send_trace
    dataplane = DataPlane(
        repository, fanout, settings.strict_readiness, shared_memory, operations, link
    )
    sequences = (
        None
        if settings.worker_control is None
        else SequenceRouter(settings.worker_control.parent, settings.worker_slot, settings.workers)
    )
    dataplane.sequence_owners = sequences
    if settings.shared_batching and sequences is not None:  # one worker loads each model
        dataplane.shared_batching = True
        repository.placement = OwnerPlacement(
            sequences.call_owner,
            sequences.model_owner,
            None if settings.worker_control is None else settings.worker_control.parent,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    limits = http_limits(settings)
    # under --workers N the buffered-bytes budgets are the server's, leased by every worker
    http_pool, grpc_pool = _budget_pools(settings)
    http_servers: list[_Uvicorn] = []
    tasks: list[asyncio.Task[Any]] = []
    handoff = None  # connections moving to their models' owner (server/workers/handoff.py)
    if dataplane.shared_batching and settings.worker_control is not None:
        handoff = ConnectionHandoff(
            settings.worker_control.parent,
            settings.workers,
            settings.worker_slot,
            functools.partial(_owner_of, repository),
            functools.partial(_sole_owner, repository),
        )
        monitors.registry.register(MovesCollector(handoff))
    if settings.allow_http:
        http_servers.append(
            _uvicorn_server(
                create_http_app(
                    dataplane,
                    limits,
                    monitors.drift_detail,
                    settings.http_restricted_apis,
                    http_pool,
                ),
                settings.http_address,
                settings.http_port,
                limits,
                handoff,
            )
        )
    if settings.allow_metrics and settings.worker_control is None:

        async def render() -> tuple[bytes, str]:
            return await asyncio.to_thread(monitors.render_metrics)

        http_servers.append(_metrics_server(settings, render))

    async def load_models() -> None:
        monitors.start()
        if not model_names(settings.model_repository):
            logger.warning(
                "model repository '%s' is empty: no model folders (REPO/NAME/config.pbtxt + "
                "REPO/NAME/1/model.onnx); serving no models until some are added%s",
                settings.model_repository,
                ""
                if settings.model_control_mode != ModelControlMode.NONE
                else " and the server restarts",
            )
        await repository.start(settings.load_models)

    if link is not None:  # a worker listens once it has its models: none of its requests 503
        try:
            replay = await link.connect(dataplane, monitors.registry.collect)
        except OSError as exc:
            logger.error("cannot join the supervisor: %s", exc)
            return 1
        assert sequences is not None
        # before loading: under --shared-batching other workers ask this one how its loads end
        await sequences.start(
            dataplane.infer_forwarded,
            dataplane.infer_stream,
            {VERDICT: repository.settled_state},
            {SUBMIT: dataplane.submit_now},
        )
        if not await _unless_stopped(load_models(), stop):
            # told to stop before it was ready (another worker could not start): it accepted
            # nothing, and a load may wait minutes for an owner that is gone
            logger.info("stopped while loading models")
            await sequences.close()
            await repository.close()
            return 0
        await link.catch_up(replay)
        # ready before it listens: a restarted worker's first probe must not answer not-ready
        apply_after_startup(settings.gc_policy)
        dataplane.started = True
    grpc_server = None
    try:
        if settings.allow_grpc:
            grpc_server = create_grpc_server(
                dataplane,
                settings.grpc_address,
                settings.grpc_port,
                settings.grpc_transport,
                settings.grpc_limits,
                restricted=settings.grpc_restricted_protocols,
                tls=settings.grpc_tls,
                reuse_port=settings.reuse_port,
                mover=handoff,
                budget_pool=grpc_pool,
                connection_pool=_grpc_connection_pool(settings),
            )
            await grpc_server.start()
        for index, server in enumerate(http_servers):
            sockets = (
                [reuse_port_socket(settings.http_address, settings.http_port)]
                if settings.reuse_port and index == 0 and settings.allow_http
                else None
            )
            tasks.append(asyncio.create_task(server.serve(sockets=sockets)))
        await asyncio.sleep(0)
        while not all(s.started for s in http_servers):
            if any(t.done() for t in tasks):
                raise OSError("an HTTP listener failed to start (is the port in use?)")
            await asyncio.sleep(0.01)
    except (OSError, RuntimeError) as exc:
        logger.error("cannot start listeners: %s", exc)
        for server in http_servers:
            server.should_exit = True
        if grpc_server is not None:
            await grpc_server.stop(0)
        return 1

    if link is None:
        await load_models()
        apply_after_startup(settings.gc_policy)
        dataplane.started = True
    else:
        await link.announce_ready()
    if handoff is not None:
        adopt: dict[bytes, Adopt] = {}
        if settings.allow_http:
            adopt[HTTP] = functools.partial(_adopt, http_servers[0])
        if isinstance(grpc_server, GrpcWireServer):
            adopt[GRPC] = grpc_server.adopt
        handoff.start(adopt)
    loaded = [f"{v.name}:{v.version}" for v in repository.ready_versions()]
    logger.info("models ready: %s", ", ".join(loaded) or "none")
    logger.info(
        "serving: HTTP %s:%d, gRPC%s %s:%d, metrics %s:%d (model control mode %s)",
        settings.http_address,
        settings.http_port,
        ""
        if settings.grpc_tls is None
        else " (TLS, mutual)"
        if settings.grpc_tls.mutual
        else " (TLS)",
        settings.grpc_address,
        settings.grpc_port,
        settings.metrics_address,
        settings.metrics_port,
        settings.model_control_mode.value,
    )
    for transport, restricted in (
        ("HTTP", settings.http_restricted_apis),
        ("gRPC", settings.grpc_restricted_protocols),
    ):
        for group, restriction in restricted.items():
            logger.info("%s: '%s' needs header '%s'", transport, group, restriction.header)
    if shared_memory is not None:
        open_to = [
            transport
            for transport, restricted, on in (
                ("HTTP", settings.http_restricted_apis, settings.allow_http),
                ("gRPC", settings.grpc_restricted_protocols, settings.allow_grpc),
            )
            if on and "shared-memory" not in restricted
        ]
        logger.warning(
            "client shared memory is enabled (--allow-client-shm): clients can make "
            "the server read and write any shared memory object it can open%s",
            f" (unrestricted on {' and '.join(open_to)}: consider --http-restricted-api / "
            "--grpc-restricted-protocol shared-memory:<key>=<value>)"
            if open_to
            else "",
        )
    poller = None
    if settings.model_control_mode == ModelControlMode.POLL and link is None:
        poller = asyncio.create_task(repository.poll_forever(settings.repository_poll_secs))
    orphaned = None if link is None else asyncio.create_task(_set_when(link.closed, stop))

    await stop.wait()
    logger.info("shutting down: refusing new requests, draining accepted ones")
    if handoff is not None:
        handoff.stop()
    for task in (poller, orphaned):
        if task is not None:
            task.cancel()
    drain_started = time.monotonic()
    drained = await dataplane.drain(settings.exit_timeout_secs)
    if not drained:
        logger.warning(
            "exit timeout (%.0fs) reached with requests still running", settings.exit_timeout_secs
        )
    if sequences is not None:  # the other workers may still send what they accepted
        await sequences.close(settings.exit_timeout_secs - (time.monotonic() - drain_started))
    await repository.close()
    if grpc_server is not None:
        await grpc_server.stop(grace=5)
    for server in http_servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if link is not None:
        await link.flush_traces()
    monitors.close()
    operations.close()
    if sampling is not None:
        sampling.close()
    if shared_memory is not None:
        shared_memory.close()
    logger.info("stopped")
    return 0


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` until it ends (True) or `stop` is set first (False: `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        stopped.cancel()
        task.result()  # its exception, if it raised
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _owner_of(repository: ModelRepository, model: str, version: str) -> int | None:
    """The worker that runs (model, version) for this one under --shared-batching, or None
    (this worker runs it, or it is not loaded)."""
    try:
        scheduler = repository.get(model, version).scheduler
    except ServingError:
        return None
    return scheduler.owner if isinstance(scheduler, RemoteScheduler) else None


def _sole_owner(repository: ModelRepository) -> int | None:
    """The one worker that runs every model this one sends elsewhere, if this one runs none of
    those itself (a gRPC connection accepted here then calls that worker's models only)."""
    owners = set()
    for version in repository.ready_versions():
        scheduler = version.scheduler
        if isinstance(scheduler, RemoteScheduler):
            owners.add(scheduler.owner)
        elif runs_in_owner(version.config):  # this worker owns one
            return None
    return owners.pop() if len(owners) == 1 else None


async def _adopt(server: _Uvicorn, sock: socket.socket) -> None:
    """Serve a connection another worker moved here (server/workers/handoff.py) as if this
    worker's HTTP listener had accepted it; it does not move again."""

    def protocol() -> asyncio.Protocol:
        connection_class: Any = server.config.http_protocol_class  # limited_protocol's
        connection = connection_class(
            config=server.config, server_state=server.server_state, app_state=server.lifespan.state
        )
        connection.movable = False
        return cast(asyncio.Protocol, connection)

    await asyncio.get_running_loop().connect_accepted_socket(protocol, sock)


async def _set_when(event: asyncio.Event, target: asyncio.Event) -> None:
    """A worker whose supervisor is gone stops too."""
    await event.wait()
    if not target.is_set():
        logger.warning("the supervisor is gone: this worker stops")
        target.set()


def _drift_service_address(settings: ServerSettings) -> DriftServiceAddress | None:
    """The shared drift evaluator a worker of `--workers N` feeds (None: not a worker)."""
    if settings.drift_service_path is None or settings.drift_service_key is None:
        return None
    from monitoring.drift_remote import DriftServiceAddress

    return DriftServiceAddress(settings.drift_service_path, settings.drift_service_key)


def _drift_service_for_workers(
    settings: ServerSettings,
) -> Callable[[Path], tuple[DriftServiceProcess, dict[str, Any]]] | None:
    """What the supervisor starts for its workers: one drift evaluator, when drift runs in a
    process (the worker settings that point at it come with it)."""
    if not settings.drift_enabled or settings.drift_evaluator != DriftEvaluator.PROCESS:
        return None
    from monitoring.drift_remote import DriftServiceProcess, DriftSettings

    drift = DriftSettings(
        settings.drift_window, settings.drift_alpha, settings.drift_baseline_samples
    )

    def start(folder: Path) -> tuple[DriftServiceProcess, dict[str, Any]]:
        process = DriftServiceProcess(drift, folder)
        return process, {
            "drift_service_path": process.address.path,
            "drift_service_key": process.address.authkey,
        }

    return start


def check_settings(settings: ServerSettings) -> None:
    """Raise ValueError, naming the flag, for settings out of range (before anything starts)."""
    http_limits(settings)
    if settings.workers > 1 and 0 in (settings.http_port, settings.grpc_port):
        raise ValueError("--workers > 1 needs fixed --http-port and --grpc-port (not 0)")
    for wrong, flag in (
        (settings.drift_window < 2, "--drift-window must be at least 2"),
        (not 0.0 < settings.drift_alpha < 1.0, "--drift-alpha must be in (0, 1)"),
        (settings.drift_baseline_samples < 0, "--drift-baseline-samples must be >= 0"),
        (not 0.0 < settings.drift_sample_rate <= 1.0, "--drift-sample-rate must be in (0, 1]"),
    ):
        if wrong:
            raise ValueError(flag)


def run_server(settings: ServerSettings) -> int:
    """Entry point of `ferry serve`: logging, uvloop, and the event loop.

    Returns 2 (a usage error, as for a bad flag) when the repository path is not a directory.
    """
    log_control = configure_logging(
        settings.log, None if settings.worker_control is None else settings.worker_slot
    )
    problem = repository_problem(settings.model_repository)
    if problem is not None:
        logger.error("%s", problem)
        return 2
    if settings.workers > 1 and settings.worker_control is None:
        from monitoring.families import CONTENT_TYPE, render
        from server.workers.supervisor import run_supervisor

        return run_supervisor(
            settings,
            lambda metrics_render: _metrics_server(settings, metrics_render),
            lambda families: (render(families), CONTENT_TYPE),
            log_control,
            _drift_service_for_workers(settings),
        )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(settings, log_control))
    return uvloop.run(serve(settings, log_control))
