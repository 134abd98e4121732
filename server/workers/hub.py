"""The supervisor's side of the control channels: which workers are connected and ready, and
the calls that reach every one of them (gathered statistics and metrics, repository control).

Repository control calls run one at a time and are remembered (the last one per model name), so
a worker that (re)starts later replays them and ends with the models the others have.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client.core import Metric

from server.workers.channel import Channel, ChannelClosed, Message, RemoteError
from server.workers.merge import merge_families, merge_statistics

logger = logging.getLogger("ferry.workers")


class ControlHub:
    """Every worker's control channel, by slot."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.channels: dict[int, Channel] = {}
        self.ever_ready: set[int] = set()
        self.every_worker_ready = False
        self._control = asyncio.Lock()
        self._replay: dict[str, Message] = {}

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's connection, for as long as it lasts."""
        slot: list[int] = []

        async def handle(message: Message) -> Any:
            if message["op"] == "hello":
                async with self._control:  # no control call between the replay and joining
                    slot.append(int(message["slot"]))
                    self.channels[slot[0]] = channel
                    return list(self._replay.values())
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
