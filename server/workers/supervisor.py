"""`ferry serve --workers N`: a supervisor process and N worker processes, each a full ferry
server whose HTTP and gRPC listeners share the ports (SO_REUSEPORT), behaving as one server.

The supervisor serves the metrics port (every worker's families, merged), runs the control
channels (server/workers/hub.py), restarts a worker that dies (its open connections close, so
its in-flight requests fail with a closed connection; the other workers keep serving and the
server stays ready), polls the repository in poll mode on every worker at once, and on
SIGTERM/SIGINT forwards SIGTERM so every worker drains its accepted requests, then exits.
It also starts the one drift evaluator every worker feeds (monitoring/drift_service.py), and
starts it again if it dies, and asks every worker for its statistics and metrics every
REFRESH_S, so that what a worker counted stays in the totals when it dies
(server/workers/retired.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import Metric

from server.logs import LogControl
from server.settings import ModelControlMode, ServerSettings
from server.workers.budgets import worker_budgets
from server.workers.hub import ControlHub
from server.workers.retired import REFRESH_S
from server.workers.sampling_table import SamplingTable

logger = logging.getLogger("ferry.workers")

RESTART_DELAY_S = 1.0  # doubles while a worker keeps dying young, up to MAX_RESTART_DELAY_S
MAX_RESTART_DELAY_S = 30.0
YOUNG_S = 10.0


class Listener(Protocol):
    """The metrics listener the composition root builds (a uvicorn server)."""

    started: bool
    should_exit: bool

    async def serve(self) -> None: ...


class SideProcess(Protocol):
    """A process the workers share (the drift evaluator)."""

    def ensure_running(self) -> bool: ...

    def stop(self) -> None: ...


# builds the side process in the supervisor's private folder; with the worker settings that
# point the workers at it
SideProcessFactory = Callable[[Path], tuple[SideProcess, dict[str, Any]]]
SIDE_PROCESS_CHECK_S = 1.0
MetricsRender = Callable[[], Awaitable[tuple[bytes, str]]]
ListenerFactory = Callable[[MetricsRender], Listener]
FamiliesRender = Callable[[list[Metric]], tuple[bytes, str]]


class Supervisor:
    """Starts, watches, restarts and stops the workers."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics_listener: ListenerFactory,
        render: FamiliesRender,
        log_control: LogControl | None = None,
        drift_service: SideProcessFactory | None = None,
    ) -> None:
        self.settings = settings
        self.drift_service = drift_service
        self.hub = ControlHub(settings.workers, log_control)
        self.metrics_listener, self.render = metrics_listener, render
        self.stopping = asyncio.Event()
        self.failed = False
        self.processes: dict[int, asyncio.subprocess.Process] = {}

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or a worker that cannot start); the exit code."""
        runtime = Path(tempfile.mkdtemp(prefix="ferry-workers-"))
        control = runtime / "control.sock"
        side, side_settings = (
            self.drift_service(runtime) if self.drift_service is not None else (None, {})
        )
        worker_settings = dataclasses.replace(
            self.settings,
            reuse_port=True,
            worker_control=control,
            **side_settings,
            **worker_budgets(self.settings),
        )
        settings_path = runtime / "settings.pickle"
        settings_path.write_bytes(pickle.dumps(worker_settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        sampling = self.hub.sampling = SamplingTable(runtime)  # before any worker opens it
        server = await asyncio.start_unix_server(self.hub.on_connect, path=str(control))
        listener, metrics_task, side_task = None, None, None
        try:
            if side is not None:
                side_task = asyncio.create_task(_keep_running(side))
            if self.settings.allow_metrics:
                listener = self.metrics_listener(self._render_metrics)
                metrics_task = asyncio.create_task(listener.serve())
                if not await _started(listener, metrics_task):
                    logger.error("cannot start the metrics listener (is the port in use?)")
                    return 1
            watchers = [
                asyncio.create_task(self._watch(slot, settings_path))
                for slot in range(self.settings.workers)
            ]
            refresher = asyncio.create_task(self._refresh_forever())
            poller = (
                asyncio.create_task(self._poll_forever())
                if self.settings.model_control_mode == ModelControlMode.POLL
                else None
            )
            logger.info(
                "supervisor %d: %d workers on HTTP %s:%d and gRPC %s:%d (SO_REUSEPORT), "
                "metrics %s:%d",
                os.getpid(),
                self.settings.workers,
                self.settings.http_address,
                self.settings.http_port,
                self.settings.grpc_address,
                self.settings.grpc_port,
                self.settings.metrics_address,
                self.settings.metrics_port,
            )
            await self.stopping.wait()
            refresher.cancel()
            if poller is not None:
                poller.cancel()
            logger.info("supervisor: stopping every worker (each drains its requests)")
            self._signal_all(signal.SIGTERM)
            try:
                await asyncio.wait_for(
                    asyncio.gather(*watchers), self.settings.exit_timeout_secs + 30
                )
            except TimeoutError:
                self._signal_all(signal.SIGKILL)
                await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            if side_task is not None:
                side_task.cancel()
            if side is not None:
                await asyncio.to_thread(side.stop)
            if listener is not None:
                listener.should_exit = True
            if metrics_task is not None:
                await asyncio.gather(metrics_task, return_exceptions=True)
            server.close()
            self.hub.traces.close()  # the workers are gone: their traces are all in
            sampling.close()
            shutil.rmtree(runtime, ignore_errors=True)
        logger.info("supervisor: stopped")
        return 1 if self.failed else 0

    async def _render_metrics(self) -> tuple[bytes, str]:
        return self.render(await self.hub.families())

    async def _watch(self, slot: int, settings_path: Path) -> None:
        """Run the worker of `slot`; restart it when it dies, until the server stops."""
        delay = RESTART_DELAY_S
        while not self.stopping.is_set():
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server.workers.worker", str(settings_path), str(slot)
            )
            self.processes[slot] = process
            code = await process.wait()
            if self.stopping.is_set():
                break
            if slot not in self.hub.ever_ready and not self.hub.every_worker_ready:
                logger.error("worker %d exited with %d before it was ready: stopping", slot, code)
                self.failed = True
                self.stopping.set()
                break
            young = time.monotonic() - started < YOUNG_S
            delay = min(delay * 2, MAX_RESTART_DELAY_S) if young else RESTART_DELAY_S
            logger.warning(
                "worker %d (pid %d) exited with %d; its open connections closed; the other "
                "workers keep serving; restarting it in %.0f s",
                slot,
                process.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _signal_all(self, sig: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)

    async def _refresh_forever(self) -> None:
        """Remember every worker's numbers every REFRESH_S (a worker killed loses at most the
        requests it answered since)."""
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.hub.refresh()
            except Exception:
                logger.exception("refreshing the workers' counts failed")

    async def _poll_forever(self) -> None:
        """Poll mode: every worker rescans the repository at the same moment."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.hub.control({"op": "poll"})
            except Exception:
                logger.exception("repository poll failed")


async def _keep_running(side: SideProcess) -> None:
    """Start the side process, and again whenever it has exited."""
    while True:
        await asyncio.to_thread(side.ensure_running)
        await asyncio.sleep(SIDE_PROCESS_CHECK_S)


async def _started(listener: Listener, task: asyncio.Task[None]) -> bool:
    while not listener.started:
        if task.done():
            return False
        await asyncio.sleep(0.01)
    return True


def run_supervisor(
    settings: ServerSettings,
    metrics_listener: ListenerFactory,
    render: FamiliesRender,
    log_control: LogControl | None = None,
    drift_service: SideProcessFactory | None = None,
) -> int:
    """Entry point of `ferry serve --workers N` (N > 1); the exit code."""
    supervisor = Supervisor(settings, metrics_listener, render, log_control, drift_service)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(supervisor.run())
    return uvloop.run(supervisor.run())
