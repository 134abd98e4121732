"""Calls to another worker (server/workers/sequences.py): what the caller gets when that worker
is not listening, and when it stops before it answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.errors import WorkerStopped, WorkerUnreachable
from server.workers.sequences import SequenceRouter, socket_path


def test_a_worker_that_stops_before_answering_fails_the_call_as_stopped(tmp_path: Path) -> None:
    """The owner reads the call and dies (its connection closes): the caller gets
    WorkerStopped, which a verdict asks again and a request reports; no owner listening at all
    is WorkerUnreachable (the request never left)."""

    async def scenario() -> None:
        router = SequenceRouter(tmp_path, slot=0, workers=2)
        with pytest.raises(WorkerUnreachable):
            await router.call_owner(1, {"verdict": ("m", "1", 0)})

        async def die_on_first_read(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.read(1)
            writer.close()

        server = await asyncio.start_unix_server(
            die_on_first_read, path=str(socket_path(tmp_path, 1))
        )
        async with server:
            with pytest.raises(WorkerStopped, match="stopped before it answered"):
                await router.call_owner(1, {"verdict": ("m", "1", 0)})

    asyncio.run(scenario())
