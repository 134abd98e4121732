"""The supervisor's side of the control channels: which workers are connected and ready, and
the calls that reach every one of them (gathered statistics, metrics and shared memory status,
repository control, shared-state changes).

Repository control calls run one at a time and are remembered (the last one per model name), so
a worker that (re)starts later replays them and ends with the models the others have. Changes of
the shared state (server/workers/shared_state.py: client shared memory, log and trace settings)
run one at a time too, apart from repository control (a long model load does not hold them up),
are made on every worker or undone, and are remembered for a worker that starts later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client.core import Metric

from server.errors import ServingError
from server.logs import LogControl
from server.workers.channel import Channel, ChannelClosed, Message, RemoteError
from server.workers.merge import merge_families, merge_regions, merge_statistics
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
        self._state = asyncio.Lock()
        self.state = StateRecord()
        self.traces = TraceFileWriter()  # the workers' Triton-mode traces

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's connection, for as long as it lasts."""
        slot: list[int] = []

        async def handle(message: Message) -> Any:
            if message["op"] == "hello":
                # no control call nor state change between the replay and joining
                async with self._control, self._state:
                    slot.append(int(message["slot"]))
                    self.channels[slot[0]] = channel
                    return {"repository": list(self._replay.values()), "state": self.state.replay()}
            return await self._handle(slot[0], message)

        channel = Channel(reader, writer, handle)
        await channel.run()
        if slot and self.channels.get(slot[0]) is channel:
            del self.channels[slot[0]]

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
            return merge_statistics(await self.gather(message))
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
        results = await asyncio.gather(
            *(channel.request(message) for channel in channels), return_exceptions=True
        )
        kept: list[Any] = []
        for result in results:
            if isinstance(result, ChannelClosed):
                continue
            if isinstance(result, BaseException) and not isinstance(result, RemoteError):
                raise result
            kept.append(result)
        return kept

    async def gather(self, message: Message) -> list[Any]:
        """Every connected worker's answer (those that failed are left out)."""
        results = await self._each(list(self.channels.values()), message)
        return [r for r in results if not isinstance(r, RemoteError)]

    async def control(self, message: Message) -> None:
        """A repository control call on every worker; raises the first failure (every worker
        runs it: they all hold the same repository, so they fail alike)."""
        async with self._control:
            if message["op"] != "poll":
                self._replay.pop(message["name"], None)
                self._replay[message["name"]] = message
            results = await self._each(list(self.channels.values()), message)
        for result in results:
            if isinstance(result, RemoteError):
                raise result

    async def families(self) -> list[Metric]:
        """The server's metric families: every worker's, merged."""
        return merge_families(await self.gather({"op": "families"}))

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
