"""The supervisor's side of the control channels: which workers are connected and ready, and
the calls that reach every one of them (gathered statistics, metrics and shared memory status,
repository control, shared-state changes).

Repository control calls run one at a time and are remembered (the last one per model name), so
a worker that (re)starts later replays them and ends with the models the others have. Changes of
the shared state (server/workers/shared_state.py: client shared memory, log and trace settings)
run one at a time too, apart from repository control (a long model load does not hold them up),
are made on every worker or undone, and are remembered for a worker that starts later.

Every worker's answer to a statistics or metrics call is remembered (server/workers/retired.py):
when a worker dies, what it answered last stays in the totals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client.core import Metric

from server.errors import ServingError
from server.logs import LogControl
from server.workers.channel import Channel, ChannelClosed, Message, RemoteError
from server.workers.merge import WireFamily, merge_regions
from server.workers.retired import RetiredCounts
from server.workers.sampling_table import SamplingTable
from server.workers.shared_state import CHANGES, Reply, StateRecord
from server.workers.trace_file import TraceFileWriter

logger = logging.getLogger("ferry.workers")


class ControlHub:
    """Every worker's control channel, by slot."""

    def __init__(self, workers: int, log_control: LogControl | None = None) -> None:
        self.workers = workers
        self.log_control = log_control  # the supervisor's own log lines follow the workers'
        self.channels: dict[int, Channel] = {}
        self.ever_ready: set[int] = set()
        self.every_worker_ready = False
        self._control = asyncio.Lock()
        self._replay: dict[str, Message] = {}
        # control calls are numbered: under --shared-batching a worker asks a model's owner how
        # its load ended in a given call (server/repository.py settled_state)
        self._control_seq = 0
        self._state = asyncio.Lock()
        self.state = StateRecord()
        self.traces = TraceFileWriter()  # the workers' Triton-mode traces
        self.sampling: SamplingTable | None = None  # the server's sampling counters
        self.counts = RetiredCounts()
        self._asking: dict[Channel, set[asyncio.Task[Any]]] = {}  # remembering asks, per worker

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's connection, for as long as it lasts."""
        slot: list[int] = []

        async def handle(message: Message) -> Any:
            if message["op"] == "hello":
                # No state change between the replay and joining. A control call may be under
                # way: it is recorded and sent in one step, so this worker either replays it or
                # is sent it. (Waiting for it instead could wait forever under
                # --shared-batching: the call's load on another worker may wait for a model
                # this one owns and has not loaded yet.)
                async with self._state:
                    slot.append(int(message["slot"]))
                    self.channels[slot[0]] = channel
                    self.counts.join(channel)
                    return {
                        "repository": list(self._replay.values()),
                        "state": self.state.replay(),
                        "control_seq": self._control_seq,
                        # a worker restarted later is ready as soon as it listens (it listens
                        # once it has its models): its first probe must not say not-ready
                        "every_worker_ready": self.every_worker_ready,
                    }
            return await self._handle(slot[0], message)

        channel = Channel(reader, writer, handle)
        await channel.run()
        if slot and self.channels.get(slot[0]) is channel:
            del self.channels[slot[0]]
        # its answers that came before it died are remembered first (a reader may have them)
        await asyncio.gather(*self._asking.pop(channel, ()), return_exceptions=True)
        self.counts.retire(channel)

    async def _handle(self, slot: int, message: Message) -> Any:
        op = message["op"]
        if op == "ready":
            self.ever_ready.add(slot)
            if not self.every_worker_ready and len(self.ever_ready) == self.workers:
                self.every_worker_ready = True
                logger.info("all %d workers are ready", self.workers)
                others = [c for s, c in self.channels.items() if s != slot]
                await self._each(others, {"op": "every_worker_ready"})
            return self.every_worker_ready
        if op == "statistics":
            return await self.statistics(message["name"], message["version"])
        if op in ("load", "unload"):
            return await self.control(message)
        if op in CHANGES:
            return await self.change(slot, message)
        if op == "trace":
            self.traces.add(message["file"], int(message["log_frequency"]), message["entries"])
            return True
        if op == "shm_status":
            replies: list[Reply] = await self.gather(message)
            return merge_regions(reply["answer"] for reply in replies)
        raise ValueError(f"unknown control request '{op}'")

    async def _each(self, channels: list[Channel], message: Message) -> list[Any]:
        """Ask each channel; a worker that died meanwhile is left out, a failure is returned."""
        return await _kept(channel.request(message) for channel in channels)

    async def _remembered(
        self, message: Message, remember: Callable[[Channel, Any, int], None]
    ) -> list[Any]:
        """Every connected worker's answer, each remembered as it comes with the epoch it was
        asked in (those that failed are left out); a worker's death waits until its answers are
        remembered, and the answer of a worker that died meanwhile is left out too (it is in
        the retired counts now)."""
        asked = self.counts.epoch

        async def ask(channel: Channel) -> tuple[Channel, Any]:
            answer = await channel.request(message)
            remember(channel, answer, asked)
            return channel, answer

        tasks = []
        for channel in self.channels.values():
            task = asyncio.create_task(ask(channel))
            asking = self._asking.setdefault(channel, set())
            asking.add(task)
            task.add_done_callback(asking.discard)
            tasks.append(task)
        answers = [r for r in await _kept(tasks) if not isinstance(r, RemoteError)]
        return [answer for channel, answer in answers if self.counts.is_live(channel)]

    async def statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        """Triton statistics of every worker, merged, with what dead workers had counted."""
        answers: list[list[dict[str, Any]]] = await self._remembered(
            {"op": "statistics", "name": name, "version": version},
            lambda channel, entries, asked: self.counts.remember_statistics(
                channel, name, version, entries, asked
            ),
        )
        return self.counts.merged_statistics(answers)

    async def gather(self, message: Message) -> list[Any]:
        """Every connected worker's answer (those that failed are left out)."""
        results = await self._each(list(self.channels.values()), message)
        return [r for r in results if not isinstance(r, RemoteError)]

    async def control(self, message: Message) -> None:
        """A repository control call on every worker; raises the first failure (every worker
        runs it: they all hold the same repository, so they fail alike)."""
        async with self._control:
            self._control_seq += 1
            message = {**message, "seq": self._control_seq}
            # recorded and sent with no await between: a worker joining meanwhile (`on_connect`,
            # which does not wait for this call) replays it or is sent it
            if message["op"] != "poll":
                self._replay.pop(message["name"], None)
                self._replay[message["name"]] = message
            results = await self._each(list(self.channels.values()), message)
            self._forget_reset(message, results)
        for result in results:
            if isinstance(result, RemoteError):
                raise result

    def _forget_reset(self, message: Message, results: list[Any]) -> None:
        """The numbers a control call reset on the workers no longer count (each worker says
        which; where one failed, everything of the model is forgotten, to be safe)."""
        statistics: set[tuple[str, str]] = set()
        series: set[tuple[str, str]] = set()
        for result in results:
            if isinstance(result, RemoteError):
                if message["op"] != "poll":
                    self.counts.forget_model(message["name"])
            elif result is not None:
                statistics.update((name, version) for name, version in result["statistics"])
                series.update((name, version) for name, version in result["series"])
        self.counts.forget(statistics, series)

    async def families(self) -> list[Metric]:
        """The server's metric families: every worker's, merged, with what dead workers had
        counted."""
        answers: list[list[WireFamily]] = await self._remembered(
            {"op": "families"}, self.counts.remember_families
        )
        return self.counts.merged_families(answers)

    async def refresh(self) -> None:
        """Remember every worker's numbers now (the supervisor's timer)."""
        await asyncio.gather(
            self._remembered(
                {"op": "statistics", "name": "", "version": ""},
                lambda channel, entries, asked: self.counts.remember_statistics(
                    channel, "", "", entries, asked
                ),
            ),
            self._remembered({"op": "families"}, self.counts.remember_families),
        )

    async def change(self, asker: int, message: Message) -> Any:
        """A shared-state change on every worker, before the asking worker answers its client;
        where some workers refuse it, it is undone on the others and the client gets the
        refusal (the asking worker's own, else the first)."""
        async with self._state:
            channels = dict(self.channels)
            outcomes = await asyncio.gather(
                *(channel.request(message) for channel in channels.values()),
                return_exceptions=True,
            )
            replies: dict[int, Reply] = {}
            for slot, outcome in zip(channels, outcomes, strict=True):
                if isinstance(outcome, ChannelClosed):
                    continue  # a worker that died: its replacement replays the record
                if isinstance(outcome, RemoteError):  # a worker's bug, not a refusal
                    outcome = Reply(
                        answer=None, error=[outcome.kind, outcome.message], undo=None, redo=None
                    )
                elif isinstance(outcome, BaseException):
                    raise outcome
                replies[slot] = outcome
            refused = {slot: reply["error"] for slot, reply in replies.items() if reply["error"]}
            if refused and len(refused) < len(replies):
                await self._undo(channels, replies, message["op"])
            else:  # every worker did the same
                redo = next(iter(replies.values()))["redo"] if replies else None
                if redo is not None:
                    self.state.remember(redo)
                if not refused and message["op"] == "log_settings":
                    self._log_like_workers(message["changes"])
            changed = any(reply["undo"] is not None for reply in replies.values())
            if message["op"] == "trace_settings" and changed and self.sampling is not None:
                # every worker has its new samplers (or, undone, its old settings' new ones):
                # the server's counters start again, as one process's would
                self.sampling.restart_traces(message["model"])
        if refused:
            kind, text = refused.get(asker) or next(iter(refused.values()))
            raise RemoteError(kind, text)
        mine = replies.get(asker) or next(iter(replies.values()), None)
        return None if mine is None else mine["answer"]

    async def _undo(self, channels: dict[int, Channel], replies: dict[int, Reply], op: str) -> None:
        for slot, reply in replies.items():
            if reply["undo"] is None:
                continue
            try:
                undone: Reply = await channels[slot].request(reply["undo"])
            except ChannelClosed:
                continue
            except RemoteError as exc:
                undone = Reply(answer=None, error=[exc.kind, exc.message], undo=None, redo=None)
            if undone["error"]:
                logger.error("worker %d could not undo %s: %s", slot, op, undone["error"][1])
            else:
                logger.warning("%s: refused by another worker, undone on worker %d", op, slot)

    def _log_like_workers(self, changes: dict[str, Any]) -> None:
        if self.log_control is not None:
            try:
                self.log_control.update(changes)
            except ServingError as exc:  # the workers took it: not expected
                logger.error("the supervisor could not change its log settings: %s", exc.message)


async def _kept(asks: Iterable[Awaitable[Any]]) -> list[Any]:
    """The answers; a worker that died meanwhile is left out, a failure (RemoteError) is
    returned, anything else is raised."""
    results = await asyncio.gather(*asks, return_exceptions=True)
    kept: list[Any] = []
    for result in results:
        if isinstance(result, ChannelClosed):
            continue
        if isinstance(result, BaseException) and not isinstance(result, RemoteError):
            raise result
        kept.append(result)
    return kept
