"""A Python-backend model instance (Triton's `backend: "python"`) in a process of its own.

The batcher hands each instance a whole batch as a list of requests; the instance sends it to its
process (ipc.py: tensors by shared memory or in the frame, never pickled arrays) and gets one
outcome per request back: outputs, a per-request error, or, for a decoupled model, a stream of
responses that may outlive `execute`. BLS calls and model control calls from the model come back
over the same channel and go to the server's inference entry (the data plane), so they pass
through the called model's scheduler like any request.

A process that dies fails its in-flight requests with a clear error and is started again (its
`initialize` runs again); the server and the other instances never notice. `aclose` runs the
model's `finalize` and waits for the process to exit.

Under `ferry serve --workers N` (shared batching) the instance's process runs in the model's
owner worker and listens for the other workers (SharedInstances, server/runtimes/__init__.py);
there, the instance attaches to that process instead of starting one: it sends its worker's
batches and gets their answers, and when the process goes away (a crash, the owner's restart)
it fails its in-flight requests and connects again once the owner has started it again. Model
control and BLS calls only ever come from the owner's channel.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import socket
import struct
import subprocess
import uuid
from asyncio.subprocess import Process
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import ErrorKind, ServingError
from server.repository_format import ModelConfig, config_to_json
from server.runtimes import RuntimeContext, SharedExecutionOutcomes
from server.runtimes.python import ipc
from server.runtimes.python.calls import SEQUENCE_END, SEQUENCE_START, ModelCalls, parameters_of
from server.runtimes.python.config import (
    instance_kind,
    model_file,
    reject_unsupported,
    stub_command,
    stub_environment,
)
from server.streams import ResponseStream, StreamedResponse
from server.types import InferenceRequest

logger = logging.getLogger(__name__)

FINALIZE_TIMEOUT_S = 30.0  # finalize may release resources; then the process is killed
EXIT_TIMEOUT_S = 5.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
ATTACH_TIMEOUT_S = 30.0  # the owner answered READY: its process listens already
REATTACH_WAIT_S = 10.0  # requests wait this long for the owner's process to come back
REATTACH_RETRY_S = 0.05


class PythonRuntime:
    """One instance of a Python model: its process, its channel, its in-flight work."""

    executes_requests = True

    def __init__(
        self,
        config: ModelConfig,
        version_path: Path,
        instance_index: int,
        context: RuntimeContext | None = None,
    ) -> None:
        reject_unsupported(config)
        if context is None or context.loop is None:
            raise ServingError(ErrorKind.INTERNAL, "a Python model needs the server's event loop")
        self.model_name = str(config.name)
        self.instance_name = f"{config.name}_{instance_index}"
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        self.output_names = [output.name for output in config.output]
        self._loop = context.loop
        self._services = context.services
        self._model_file = model_file(config, version_path)
        self._settings = {
            "model_file": str(self._model_file),
            "version": version_path.name,
            "instance_name": self.instance_name,
            "decoupled": self.decoupled,
            "shm_prefix": "",
            "args": {
                "model_config": json.dumps(config_to_json(config)),
                "model_instance_kind": instance_kind(config),
                "model_instance_name": self.instance_name,
                "model_instance_device_id": "0",
                "model_repository": str(version_path.parent),
                "model_version": version_path.name,
                "model_name": str(config.name),
            },
        }
        self._shm_prefix = f"ferry-py-{uuid.uuid4().hex[:12]}"
        self._process: Process | None = None
        self._channel: _Channel | None = None
        self._init_result: asyncio.Future[Any] | None = None
        self._finalized: asyncio.Future[str] | None = None
        self._batch_ids = itertools.count()
        self._batches: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[tuple[int, int], ResponseStream] = {}
        self._background: set[asyncio.Task[None]] = set()  # crash handling
        self._bls_calls: set[asyncio.Task[None]] = set()
        self._running = asyncio.Event()  # set while a process serves requests
        self._attempt_done = asyncio.Event()  # the latest start attempt ended (either way)
        self._start_error = ""  # why the latest (re)start failed
        self._restarter: asyncio.Task[None] | None = None
        self._closing = False
        sharing = context.shared_instances
        # where the process takes other workers' batches (its owner's side), or where this
        # instance sends its own (the other workers' side)
        self._shared_path = None if sharing is None else str(sharing.socket_path(instance_index))
        self._attached = sharing is not None and sharing.attach
        # a shared process runs the batches that wait for it together: with a second batch of
        # each worker waiting there while one runs, it finds what one batcher would have formed
        # (with one, the workers' batches would only take turns)
        self.concurrent_batches = 1 if sharing is None else 2
        self._connection = 0  # the latest connection to the owner's process (attached)
        self._owner_unloading = False  # that process said it is finalizing (attached)
        start = self._attach(ATTACH_TIMEOUT_S) if self._attached else self._start()
        asyncio.run_coroutine_threadsafe(start, self._loop).result()

    # --- process lifecycle ---------------------------------------------------------------------

    async def _start(self) -> None:
        """Spawn the process, connect the channel, run `initialize`; raise if it fails."""
        parent_sock, child_sock = socket.socketpair()
        listen = () if self._shared_path is None else ("--listen", self._shared_path)
        try:
            process = await asyncio.create_subprocess_exec(
                *stub_command("--fd", str(child_sock.fileno()), *listen),
                pass_fds=[child_sock.fileno()],
                env=stub_environment(),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent_sock.close()
            raise ServingError(
                ErrorKind.INTERNAL, f"cannot start the Python model process: {exc}"
            ) from exc
        finally:
            child_sock.close()
        self._process = process
        initialized: asyncio.Future[str] = self._loop.create_future()
        self._init_result = initialized
        try:
            await self._connect_and_initialize(process, parent_sock, initialized)
        finally:
            self._attempt_done.set()
        logger.info("Python model instance '%s' started (pid %d)", self.instance_name, process.pid)

    async def _connect_and_initialize(
        self, process: Process, parent_sock: socket.socket, initialized: asyncio.Future[str]
    ) -> None:
        parent_sock.setblocking(False)
        _, channel = await self._loop.connect_accepted_socket(
            lambda: _Channel(self._on_message, lambda: self._on_lost(process), self._shm_prefix),
            sock=parent_sock,
        )
        self._channel = channel
        channel.send((ipc.INIT, {**self._settings, "shm_prefix": self._shm_prefix}))
        error = await initialized
        if error:
            self._start_error = error
            self._process = None  # its exit is expected: no crash handling, no restart
            await self._stop_process(process, finalize=False)
            raise ServingError(ErrorKind.INTERNAL, f"Internal: {error}")
        self._start_error = ""
        self._running.set()

    # --- an instance attached to its owner worker's process -------------------------------------

    async def _attach(self, timeout_s: float) -> None:
        """Connect to the owner's process of this instance; raise when it does not listen
        within `timeout_s`."""
        assert self._shared_path is not None
        deadline = self._loop.time() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await self._loop.sock_connect(sock, self._shared_path)
                break
            except OSError as exc:
                sock.close()
                if self._closing or self._loop.time() >= deadline:
                    raise ServingError(
                        ErrorKind.UNAVAILABLE,
                        f"the process of Python model instance '{self.instance_name}' in its "
                        f"owner worker is not running ({exc.strerror or exc})",
                    ) from exc
                await asyncio.sleep(REATTACH_RETRY_S)
        self._connection += 1
        number = self._connection
        pid = _peer_pid(sock)
        _, channel = await self._loop.connect_accepted_socket(
            lambda: _Channel(
                self._on_message, lambda: self._on_detached(number, pid), self._shm_prefix
            ),
            sock=sock,
        )
        self._channel = channel
        self._start_error = ""
        self._running.set()
        self._attempt_done.set()
        logger.info(
            "Python model instance '%s' attached to its process in the owner worker",
            self.instance_name,
        )

    def _on_detached(self, number: int, pid: int) -> None:
        """The owner's process closed this instance's connection: it crashed, or its worker
        stopped, or the model is unloading there."""
        if number != self._connection or self._closing:  # (an older connection's)
            return
        self._running.clear()
        self._channel = None
        if self._owner_unloading:  # this worker unloads the version too (the same call)
            self._start_error = "the model is unloading in its owner worker"
            self._attempt_done.set()
            self._fail_in_flight(ServingError(ErrorKind.UNAVAILABLE, "the model is unloading"))
            return
        self._attempt_done.clear()
        # (the owner, its parent, says how it ended)
        self._after_crash(pid, "went away in the model's owner worker", self._reattach)

    async def _reattach(self) -> None:
        """Connect again once the owner has started the process again. Requests wait for the
        first REATTACH_WAIT_S, then fail (UNAVAILABLE) until it is back."""
        try:
            await self._attach(REATTACH_WAIT_S)
            return
        except ServingError as exc:
            self._start_error = exc.message
            self._attempt_done.set()
        while not self._closing:
            try:
                await self._attach(REATTACH_WAIT_S)
                return
            except ServingError as exc:
                self._start_error = exc.message

    def _on_lost(self, process: Process) -> None:
        """The channel closed: the process exited or was killed."""
        if self._process is not process:
            return
        self._running.clear()
        self._attempt_done.clear()
        self._channel = None
        task = self._loop.create_task(self._after_exit(process))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after_exit(self, process: Process) -> None:
        reason = await _exit_reason(process)
        if self._init_result is not None and not self._init_result.done():
            self._init_result.set_result(f"the model process {reason} during initialize")
            return
        if self._finalized is not None and not self._finalized.done():
            self._finalized.set_result("")
        if self._closing:
            return
        self._after_crash(process.pid, reason, self._restart)

    def _after_crash(
        self, pid: int, how: str, restart: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """The process ended (`how`): fail the requests in flight, remove the shared memory
        segments it left, and start `restart` (the owner starts it again, the others attach
        again)."""
        message = (
            f"Python model instance '{self.instance_name}' (pid {pid}) {how}; "
            "its in-flight requests failed and it is being restarted"
        )
        logger.error("%s", message)
        self._fail_in_flight(ServingError(ErrorKind.INTERNAL, message))
        ipc.sweep_segments(self._shm_prefix)
        if self._restarter is None or self._restarter.done():
            self._restarter = self._loop.create_task(restart())

    def _fail_in_flight(self, error: ServingError) -> None:
        for future in self._batches.values():
            if not future.done():
                future.set_exception(error)
        self._batches.clear()
        for stream in self._streams.values():
            stream.fail(error)
        self._streams.clear()
        for task in self._bls_calls:
            task.cancel()

    async def _restart(self) -> None:
        for attempt in itertools.count():
            if self._closing:
                return
            try:
                await self._start()
                return
            except ServingError as exc:
                self._start_error = exc.message
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                logger.error(
                    "Python model instance '%s' failed to restart (retrying in %.1fs): %s",
                    self.instance_name,
                    delay,
                    exc.message,
                )
                await asyncio.sleep(delay)

    async def _stop_process(self, process: Process, finalize: bool) -> None:
        if finalize and self._channel is not None and process.returncode is None:
            self._finalized = self._loop.create_future()
            self._channel.send((ipc.FINALIZE,))
            try:
                error = await asyncio.wait_for(self._finalized, FINALIZE_TIMEOUT_S)
                if error:
                    logger.error("finalize of '%s' raised: %s", self.instance_name, error)
            except TimeoutError:
                logger.error("finalize of '%s' timed out; killing it", self.instance_name)
        if self._channel is not None:
            self._channel.close()
        try:
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        ipc.sweep_segments(self._shm_prefix)

    async def aclose(self) -> None:
        """Wait for open response streams, run `finalize`, stop the process."""
        self._closing = True
        if self._restarter is not None:
            self._restarter.cancel()
        if self._streams:  # a decoupled model may still be answering: let it finish
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(s.wait_finished() for s in list(self._streams.values()))),
                    FINALIZE_TIMEOUT_S,
                )
            except TimeoutError:
                logger.error(
                    "'%s' left %d response streams open (no FINAL flag); closing them",
                    self.instance_name,
                    len(self._streams),
                )
        if self._attached and self._channel is not None:
            self._channel.close()  # (the owner's process finalizes when the owner unloads it)
        if self._process is not None:
            await self._stop_process(self._process, finalize=True)
        self._fail_in_flight(ServingError(ErrorKind.UNAVAILABLE, "the model is unloading"))

    def close(self) -> None:
        """Blocking close, from a thread other than the event loop's."""
        asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result()

    # --- execution -------------------------------------------------------------------------

    async def execute(self, requests: Sequence[InferenceRequest]) -> list[Any]:
        """Send one batch to the process; one outcome per request."""
        if not self._running.is_set() and not self._start_error:
            await self._attempt_done.wait()  # a restart is under way: wait for its outcome
        channel = self._channel
        if not self._running.is_set() or channel is None:
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"Python model instance '{self.instance_name}' is restarting after a crash"
                + (f": {self._start_error}" if self._start_error else ""),
            )
        batch_id = next(self._batch_ids)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._batches[batch_id] = future
        streams = []
        if self.decoupled:
            for index in range(len(requests)):
                stream = ResponseStream()
                self._streams[(batch_id, index)] = stream
                streams.append(stream)
        try:
            channel.send((ipc.EXECUTE, batch_id, [self._payload(r) for r in requests]))
        except ServingError:  # the process has just gone; its channel is not closed yet
            self._batches.pop(batch_id, None)
            for index in range(len(streams)):
                self._streams.pop((batch_id, index), None)
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"Python model instance '{self.instance_name}' is restarting after a crash",
            ) from None
        try:
            executed = await future
        finally:
            self._batches.pop(batch_id, None)
        if self.decoupled:
            return streams
        result = executed[2]
        if isinstance(result, str):
            error = ServingError(
                ErrorKind.INTERNAL,
                f"Failed to process the request(s) for model '{self.instance_name}', "
                f"message: {result}",
            )
            outcomes: list[Any] = [error] * len(requests)
        else:
            outcomes = [_outcome(payload) for payload in result]
        if len(executed) > 3:  # run with other workers' batches: (rows, requests, reports)
            rows, count, reports = executed[3]
            return SharedExecutionOutcomes(outcomes, rows, count, reports)
        return outcomes

    def _payload(self, request: InferenceRequest) -> tuple[Any, ...]:
        requested = (
            [r.name for r in request.requested_outputs]
            if request.requested_outputs
            else self.output_names
        )
        parameters = "{}"
        if request.parameters:  # most requests have none: skip the JSON work
            parameters = json.dumps(request.parameters, separators=(",", ":"))
        flags = request.sequence_start * SEQUENCE_START | request.sequence_end * SEQUENCE_END
        return (
            request.id,
            request.sequence_id,
            list(request.inputs.items()),
            requested,
            parameters,
            flags,
        )

    # --- messages from the process -------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        tag = message[0]
        if tag == ipc.EXECUTED:
            future = self._batches.get(message[1])
            if future is not None and not future.done():
                future.set_result(message)
        elif tag == ipc.RESPONSE:
            self._on_response(message[1], message[2], message[3], message[4])
        elif tag == ipc.CALL:
            channel = self._channel
            if channel is None:
                return
            calls = ModelCalls(self._services, channel.send, self._running.is_set())
            task = self._loop.create_task(calls.answer(message[1], message[2], message[3]))
            self._bls_calls.add(task)
            task.add_done_callback(self._bls_calls.discard)
        elif tag in (ipc.READY, ipc.FAILED):
            _settle(self._init_result, message[1] if tag == ipc.FAILED else "")
        elif tag == ipc.FINALIZED:
            _settle(self._finalized, message[1])
        elif tag == ipc.FINALIZE:  # (attached) the owner's process is finalizing
            self._owner_unloading = True

    def _on_response(self, batch_id: int, index: int, payload: Any, flags: int) -> None:
        key = (batch_id, index)
        stream = self._streams.get(key)
        if stream is None:
            return
        final = bool(flags & 1)  # TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if payload is None:
            stream.put(StreamedResponse(None, final))
        else:
            outcome = _outcome(payload)
            if isinstance(outcome, ServingError):
                stream.put(StreamedResponse(None, final, outcome))
            else:
                stream.put(StreamedResponse(outcome, final, parameters=parameters_of(payload[2])))
        if final:
            self._streams.pop(key, None)


class _Channel(asyncio.Protocol):
    """The parent's end of an instance's socket."""

    def __init__(self, on_message: Any, on_lost: Any, shm_prefix: str) -> None:
        self._reader = ipc.FrameReader(on_message)
        self._on_lost = on_lost
        self._shm_prefix = shm_prefix
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
        except Exception:
            logger.exception("a Python model process sent a bad frame; closing its channel")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_lost()

    def send(self, message: Any) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ServingError(ErrorKind.UNAVAILABLE, "the Python model process is not running")
        data = ipc.to_write(ipc.encode(message, self._shm_prefix))
        if len(data) == 1:
            self._transport.write(data[0])
        else:
            self._transport.writelines(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _peer_pid(sock: socket.socket) -> int:
    """The process at the other end of a connected Unix socket (Linux: SO_PEERCRED)."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", credentials)[0]
    return pid


async def _exit_reason(process: Process) -> str:
    """How the process ended, in words (waits up to 2 s for it to be reaped)."""
    try:
        code = await asyncio.wait_for(process.wait(), 2.0)
    except TimeoutError:
        return "closed its channel"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _settle(future: asyncio.Future[str] | None, value: str) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _outcome(payload: Any) -> dict[str, np.ndarray] | ServingError:
    outputs, error, _ = payload
    if error is not None:
        return ServingError(ErrorKind[error[0]], error[1])
    return dict(outputs)
