"""The process one Python model instance runs in: `python -m server.runtimes.python.stub --fd N`.

It imports model.py, calls `initialize`, then `execute` for each batch the server sends, and
`finalize` before it exits. One thread reads the channel (batches to execute, answers to the
model's BLS calls); the main thread runs the model, so a blocking `exec()` inside `execute` waits
for its answer while the reader keeps going. An `async def execute` runs on an event loop of its
own thread. The process exits when the server closes the channel or asks it to finalize.

With `--listen PATH` (a model whose instances other workers of `ferry serve --workers N` share),
other workers connect at PATH and send their batches too, each read by a thread of its own. The
batches that wait when the model is free run together in one `execute`, up to the model's
max_batch_size in rows; each sender gets its own requests' responses, and the whole execution's
size, which exactly one of them reports (its statistics).

`--auto-complete` instead runs the model's static `auto_complete_config` on the config JSON read
from stdin and writes the completed config JSON to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import inspect
import itertools
import json
import os
import queue
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from server.runtimes.python import ipc
from server.runtimes.python import triton_python_backend_utils as pb_utils

OWN_FOLDER = Path(__file__).resolve().parent


def error_text(exc: BaseException) -> str:
    """`Type: message`, then the model's frames innermost first (the form Triton reports)."""
    text = f"{type(exc).__name__}: {exc}"
    frames = []
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if Path(code.co_filename).parent != OWN_FOLDER:  # the model's frames, not ferry's
            frames.append(f"  {code.co_filename}({tb.tb_lineno}): {code.co_name}\n")
        tb = tb.tb_next
    if frames:
        text += "\n\nAt:\n" + "".join(reversed(frames))
    return text


def import_model(model_file: Path, version: str) -> ModuleType:
    """Import REPO/NAME/<version>/model.py as Triton does: module `<version>.model`, with the
    version folder and the model folder on sys.path."""
    version_dir, model_dir = model_file.parent, model_file.parent.parent
    for folder in (str(version_dir), str(model_dir)):
        if folder not in sys.path:
            sys.path.append(folder)
    return importlib.import_module(f"{version}.{model_file.stem}")


class Peer:
    """Another worker's connection (`--listen`): its socket, and a lock for whole frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.closed = False


class FromPeer:
    """A message a peer sent, as it waits in ModelProcess.pending."""

    __slots__ = ("message", "peer")

    def __init__(self, peer: Peer, message: Any) -> None:
        self.peer, self.message = peer, message


# a batch to run: who sent it (None: the primary channel), its id, its request payloads
Batch = tuple["Peer | None", int, list[Any]]


class ModelProcess:
    """One model instance: the channel to the server and the model object.

    No reader thread: whichever thread waits for something (the main thread for the next batch,
    model code for a BLS answer) reads the channel itself when no other thread is reading, and
    dispatches every answer it reads to its waiter; one reader at a time (a condition variable
    hands the role over). A batch reaches the model without a thread hand-off, and a model that
    makes BLS calls from its own threads while `execute` waits for them still gets its answers.
    A coroutine that finishes without a frame (`async def execute`) wakes the reader through a
    pipe.
    """

    def __init__(self, sock: socket.socket, listen_path: str | None = None) -> None:
        self.sock = sock
        self.listen_path = listen_path  # other workers' batches come here once initialized
        self.send_lock = threading.Lock()
        self.frames = ipc.read_messages(sock.recv_into)
        self.pending: collections.deque[Any] = collections.deque()  # batches and control
        self.calls: dict[int, Any] = {}
        self.call_ids = itertools.count(1)
        self.turn = threading.Condition()  # who reads the channel, and news for the waiters
        self.reading = False
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake_read, self.wake_write = os.pipe()
        self.shm_prefix = "ferry"
        self.instance_name = "model"
        self.decoupled = False
        self.model: Any = None
        self.max_batch_size = 0
        self.merges = False  # whether waiting batches run together (`execute_together`)
        self.listening = False  # other workers may send batches (`listen`)
        self.peers: list[Peer] = []

    # --- other workers' connections (--listen) ---------------------------------------------

    def listen(self, path: str) -> None:
        """Take other workers' connections at `path` (a Unix socket in the server's private
        folder; an earlier process of this instance may have left it behind)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        self.listening = True
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="peers").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            peer = Peer(sock)
            self.peers.append(peer)
            threading.Thread(target=self._read_peer, args=(peer,), daemon=True).start()

    def _read_peer(self, peer: Peer) -> None:
        """Queue what a peer sends (batches) for the main thread, and wake it."""
        try:
            for message in ipc.read_messages(peer.sock.recv_into):
                with self.turn:
                    self.pending.append(FromPeer(peer, message))
                    self.turn.notify_all()
                os.write(self.wake_write, b".")
        except (ipc.ChannelClosed, OSError):
            pass
        finally:
            with peer.send_lock:
                peer.closed = True
                peer.sock.close()
            with contextlib.suppress(ValueError):
                self.peers.remove(peer)

    def send_to(self, peer: Peer | None, message: Any) -> None:
        """Send on the primary channel (None) or to a peer (dropped once it has gone)."""
        if peer is None:
            self.send(message)
            return
        chunks = ipc.encode(message, self.shm_prefix)
        with peer.send_lock:
            if peer.closed:
                return
            try:
                ipc.send_frame(peer.sock, chunks)
            except OSError:
                peer.closed = True

    # --- channel ---------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        chunks = ipc.encode(message, self.shm_prefix)
        with self.send_lock:
            ipc.send_frame(self.sock, chunks)

    def next_message(self) -> Any:
        """The next batch or control message for the main loop (answers are dispatched)."""
        self.wait_for(lambda: bool(self.pending))
        return self.pending.popleft()

    def wait_for(self, done: Callable[[], bool]) -> None:
        """Until `done()`: read and dispatch frames when no other thread reads, else wait for
        what the reader dispatches."""
        while True:
            with self.turn:
                while not done() and self.reading and not self.closed:
                    self.turn.wait()
                if done():
                    return
                if self.closed:
                    raise ipc.ChannelClosed("the server closed the channel")
                self.reading = True
            try:
                self._read_one()
            finally:
                with self.turn:
                    self.reading = False
                    self.turn.notify_all()

    def _read_one(self) -> None:
        # a coroutine may end without a frame, and a peer's batch arrives on another socket:
        # watch the wake pipe too
        if self.loop is not None or self.listening:
            sock_fd = self.sock.fileno()
            ready, _, _ = select.select([sock_fd, self.wake_read], [], [])
            if self.wake_read in ready:
                os.read(self.wake_read, 4096)
            if sock_fd not in ready:
                return
        try:
            message = next(self.frames)
        except (ipc.ChannelClosed, OSError):
            self.closed = True
            raise
        if not self._dispatch(message):
            self.pending.append(message)

    def _dispatch(self, message: Any) -> bool:
        """Deliver an answer to its waiter; False for anything else."""
        tag = message[0]
        if tag == ipc.CALL_RESULT:
            self._resolve(message[1], message[2])
        elif tag == ipc.CALL_STREAM:
            slot = self.calls.get(message[1])
            if slot is not None:
                slot.put((message[2], message[3]))
                if message[3]:
                    self.calls.pop(message[1], None)
        else:
            return False
        return True

    def _resolve(self, call_id: int, result: Any) -> None:
        slot = self.calls.pop(call_id, None)
        if slot is None:
            return
        if isinstance(slot, queue.Queue):
            slot.put((result, True))
        elif isinstance(slot, asyncio.Future):
            slot.get_loop().call_soon_threadsafe(_settle, slot, result)
        else:
            slot.append(result)

    # --- pb_utils backend ------------------------------------------------------------------

    def call(self, kind: str, payload: Any) -> Any:
        """A blocking call to the server (BLS infer, model control), from any thread."""
        if kind == "infer_stream":
            return self._stream(payload)
        call_id = next(self.call_ids)
        slot: list[Any] = []
        self.calls[call_id] = slot
        self.send((ipc.CALL, call_id, kind, payload))
        self.wait_for(lambda: bool(slot))
        return _unwrap(kind, slot[0])

    def _stream(self, payload: Any) -> Iterator[Any]:
        call_id = next(self.call_ids)
        items: queue.Queue[Any] = queue.Queue()
        self.calls[call_id] = items
        self.send((ipc.CALL, call_id, "infer_stream", payload))

        def responses() -> Iterator[Any]:
            while True:
                self.wait_for(lambda: not items.empty())
                item, final = items.get()
                if final and isinstance(item, tuple) and len(item) == 2:  # (False, message)
                    raise pb_utils.TritonModelException(item[1])
                if item is not None:
                    yield item
                if final:
                    return

        return responses()

    def call_async(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        call_id = next(self.call_ids)
        self.calls[call_id] = future
        self.send((ipc.CALL, call_id, kind, payload))
        return future

    def send_response(self, key: tuple[int, int], response: Any, flags: int) -> None:
        self.send((ipc.RESPONSE, key[0], key[1], _payload(response, None), flags))

    def log(self, level: str, message: str) -> None:
        print(f"{level} {self.instance_name}: {message}", file=sys.stderr, flush=True)

    # --- model lifecycle -------------------------------------------------------------------

    def run_coroutine(self, value: Any) -> Any:
        """Await `value` on the process's event loop when it is a coroutine; the main thread
        keeps reading the channel meanwhile (the coroutine may await BLS answers)."""
        if not inspect.isawaitable(value):
            return value
        future = asyncio.run_coroutine_threadsafe(_awaitable(value), self._event_loop())
        future.add_done_callback(lambda _: os.write(self.wake_write, b"."))
        self.wait_for(future.done)
        return future.result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, daemon=True, name="model-loop").start()
        return self.loop

    def initialize(self, settings: dict[str, Any]) -> None:
        self.shm_prefix = settings["shm_prefix"]
        self.instance_name = settings["instance_name"]
        self.decoupled = settings["decoupled"]
        config = json.loads(settings["args"]["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        # batches run together only for a model with dynamic batching: without it, each
        # request is an execution of its own, as in Triton
        self.merges = "dynamic_batching" in config and self.max_batch_size > 0
        module = import_model(Path(settings["model_file"]), settings["version"])
        self.model = module.TritonPythonModel()
        if hasattr(self.model, "initialize"):
            self.run_coroutine(self.model.initialize(settings["args"]))

    @staticmethod
    def _request(payload: Any, key: tuple[int, int], on_send: Any) -> Any:
        request_id, correlation_id, inputs, requested, parameters, flags = payload
        wrap = pb_utils.Tensor._wrap
        return pb_utils.InferenceRequest._received(
            request_id,
            correlation_id,
            [wrap(name, array) for name, array in inputs],
            set(requested),  # Triton hands the model a set
            parameters,
            flags,
            (key, on_send),
        )

    def execute(self, batch_id: int, payloads: list[Any]) -> None:
        senders: list[pb_utils.InferenceResponseSender] = []
        collected: dict[int, Any] = {}
        requests = []
        on_send = self.send_response if self.decoupled else _collect_into(collected)
        for index, payload in enumerate(payloads):
            requests.append(self._request(payload, (batch_id, index), on_send))
        if self.decoupled:  # their senders end the streams the model leaves open
            senders = [request.get_response_sender() for request in requests]
        try:
            result = self.model.execute(requests)
            if inspect.isawaitable(result):
                if self.decoupled:  # runs beside later batches; the instance is free now
                    future = asyncio.run_coroutine_threadsafe(
                        _awaitable(result), self._event_loop()
                    )
                    future.add_done_callback(lambda done: self._finish_async(done, senders))
                    self.send((ipc.EXECUTED, batch_id, None))
                    return
                result = self.run_coroutine(result)
        except Exception as exc:
            message = error_text(exc)
            if self.decoupled:
                self._fail_open_senders(senders, message)
                self.send((ipc.EXECUTED, batch_id, None))
            else:
                self.send((ipc.EXECUTED, batch_id, message))
            return
        if self.decoupled:
            self.send((ipc.EXECUTED, batch_id, None))
            return
        self.send((ipc.EXECUTED, batch_id, self._responses(requests, result, collected)))

    def execute_together(self, first: Batch) -> None:
        """Run `first` with the batches that wait now, in order, while their rows fit the
        model's max_batch_size: one `execute`, each sender answered with its own responses and
        the execution's size (only the first batch reports it)."""
        batches = [first, *self._waiting_batches(_rows(first[2], self.max_batch_size))]
        if len(batches) == 1 and first[0] is None:
            self.execute(first[1], first[2])
            return
        collected: dict[int, Any] = {}
        on_send = _collect_into(collected)
        requests: list[Any] = []
        for _, batch_id, payloads in batches:
            for payload in payloads:
                requests.append(self._request(payload, (batch_id, len(requests)), on_send))
        try:
            result = self.run_coroutine(self.model.execute(requests))
            answer: Any = self._responses(requests, result, collected)
        except Exception as exc:
            answer = error_text(exc)
        rows = sum(_rows(payloads, self.max_batch_size) for _, _, payloads in batches)
        start = 0
        for index, (peer, batch_id, payloads) in enumerate(batches):
            share = answer if isinstance(answer, str) else answer[start : start + len(payloads)]
            start += len(payloads)
            self.send_to(peer, (ipc.EXECUTED, batch_id, share, (rows, len(requests), index == 0)))

    def _read_arrived(self) -> None:
        """Queue the frames that have arrived on the primary channel (the peers' threads queue
        theirs as they come), unless another thread reads it now."""
        with self.turn:
            if self.reading or self.closed:
                return
            self.reading = True
        try:
            while select.select([self.sock], [], [], 0)[0]:
                message = next(self.frames)
                if not self._dispatch(message):
                    self.pending.append(message)
        except (ipc.ChannelClosed, OSError):
            self.closed = True
        finally:
            with self.turn:
                self.reading = False
                self.turn.notify_all()

    def _waiting_batches(self, rows: int) -> list[Batch]:
        """Take the batches queued now (any sender), in order, while the rows fit (none for a
        model without dynamic batching); stop at the first that does not, or at anything
        else."""
        taken: list[Batch] = []
        if not self.merges:
            return taken
        self._read_arrived()
        with self.turn:
            while self.pending:
                item = self.pending[0]
                peer, message = (
                    (item.peer, item.message) if type(item) is FromPeer else (None, item)
                )
                if message[0] != ipc.EXECUTE:
                    break
                more = _rows(message[2], self.max_batch_size)
                if rows + more > self.max_batch_size:
                    break
                self.pending.popleft()
                rows += more
                taken.append((peer, message[1], message[2]))
        return taken

    def _responses(self, requests: list[Any], result: Any, collected: dict[int, Any]) -> Any:
        """The response payloads of a default-mode execute, or the error for all of them."""
        if result is None:  # responses went through the senders (allowed since 24.06)
            result = [collected.get(index) for index in range(len(requests))]
        try:
            count = len(result)
        except TypeError:
            return f"execute must return a list of InferenceResponse, got {type(result).__name__}"
        if count != len(requests):
            return (
                "Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{len(requests)}, "
                f"and InferenceResponse(s) size is:{count}\n"
            )
        payloads = []
        for request, response in zip(requests, result, strict=True):
            if not isinstance(response, pb_utils.InferenceResponse):
                return (
                    "Expected an 'InferenceResponse' object in the execute function return "
                    f"list, found type '{type(response).__name__}'."
                )
            payloads.append(_payload(response, request._requested))
        return payloads

    def _finish_async(self, done: Any, senders: list[Any]) -> None:
        exc = done.exception()
        if exc is not None:
            self._fail_open_senders(senders, error_text(exc))

    def _fail_open_senders(self, senders: list[Any], message: str) -> None:
        error = pb_utils.TritonError(message)
        for sender in senders:
            if not sender.closed:
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )

    def finalize(self) -> None:
        for peer in list(self.peers):  # the model is unloading: no crash for them to report
            self.send_to(peer, (ipc.FINALIZE,))
        error = ""
        if self.model is not None and hasattr(self.model, "finalize"):
            try:
                self.run_coroutine(self.model.finalize())
            except Exception as exc:
                error = error_text(exc)
        self.send((ipc.FINALIZED, error))

    def serve(self) -> int:
        """Initialize, then execute batches until FINALIZE or the channel closes."""
        try:
            first = self.next_message()
            if first[0] != ipc.INIT:
                return 1
            try:
                self.initialize(first[1])
            except Exception as exc:
                self.send((ipc.FAILED, error_text(exc)))
                traceback.print_exc()
                return 1
            if self.listen_path is not None:
                self.listen(self.listen_path)
            self.send((ipc.READY,))
            while True:
                message = self.next_message()
                peer = None
                if type(message) is FromPeer:
                    peer, message = message.peer, message.message
                if message[0] == ipc.EXECUTE and self.listening and not self.decoupled:
                    self.execute_together((peer, message[1], message[2]))
                elif message[0] == ipc.EXECUTE:
                    self.execute(message[1], message[2])
                elif peer is not None:
                    continue  # a peer sends batches only
                elif message[0] == ipc.FINALIZE:
                    self.finalize()
                    return 0
        except (ipc.ChannelClosed, OSError):
            return 0  # the server went away (or closed the channel): nothing left to do


def _payload(response: Any, requested: set[str] | None) -> Any:
    """A response as the wire's payload; outputs not requested are dropped, as in Triton."""
    if response is None:
        return None
    error = response.error()
    if error is not None:
        return ([], (pb_utils.ERROR_CODE_NAMES[error.code()], error.message()), "{}")
    outputs = [
        (tensor.name(), tensor.as_numpy())
        for tensor in response.output_tensors()
        if not requested or tensor.name() in requested
    ]
    return (outputs, None, response.parameters())


def _rows(payloads: list[Any], max_batch_size: int) -> int:
    """A batch's rows: each request's first input's first dimension (1 without batching)."""
    if max_batch_size <= 0:
        return len(payloads)
    return sum(int(payload[2][0][1].shape[0]) if payload[2] else 1 for payload in payloads)


def _collect_into(collected: dict[int, Any]) -> Callable[[tuple[int, int], Any, int], None]:
    """Default-mode models may answer through the sender too: keep the response for the batch."""

    def collect(key: tuple[int, int], response: Any, flags: int) -> None:
        if response is not None:
            collected[key[1]] = response

    return collect


def _unwrap(kind: str, result: Any) -> Any:
    ok, value = result
    if not ok:
        raise pb_utils.TritonModelException(value)
    return value


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    ok, value = result
    if ok:
        future.set_result(value)
    else:
        future.set_exception(pb_utils.TritonModelException(value))


async def _awaitable(value: Any) -> Any:
    return await value


def auto_complete(model_file: Path, version: str) -> int:
    """Run `auto_complete_config` on the config JSON from stdin; print the result as JSON."""
    config = pb_utils.ModelConfig(sys.stdin.read())
    try:
        model_class = import_model(model_file, version).TritonPythonModel
        method = getattr(model_class, "auto_complete_config", None)
        if method is not None:
            completed = method(config)
            config = completed if completed is not None else config
    except Exception as exc:
        print(error_text(exc), file=sys.stderr)
        return 2
    json.dump(config.as_dict(), sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, help="the channel's socket")
    parser.add_argument("--auto-complete", type=Path, help="model.py to auto-complete")
    parser.add_argument("--version", default="1")
    parser.add_argument("--listen", help="a Unix socket other workers send batches to")
    args = parser.parse_args(argv)
    sys.modules["triton_python_backend_utils"] = pb_utils
    # the server decides when an instance stops (it runs finalize first): a Ctrl+C or a SIGTERM
    # sent to the whole process group must not kill it before the server drains. A no-op handler,
    # not SIG_IGN, so processes the model starts get the default dispositions back at exec.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda number, frame: None)
    if args.auto_complete is not None:
        return auto_complete(args.auto_complete, args.version)
    sock = socket.socket(fileno=args.fd)
    process = ModelProcess(sock, args.listen)
    pb_utils._backend = process
    code = process.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # model threads (daemon or not) must not keep the instance alive


if __name__ == "__main__":
    sys.exit(main())
