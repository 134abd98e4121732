"""What every worker of `ferry serve --workers N` holds alike besides its models: the client
shared memory regions registered, and the log and trace settings changed at run time.

A change reaches every worker through the supervisor, one change at a time, before the client
is answered, so the next request on any connection sees it. Each worker answers a change with
how to undo it (unregister what it registered; restore the settings it had) and how to redo it
on a worker that starts later (`StateRecord`, replayed before that worker loads its models).

Where some workers fail a change that others made (a region still held by a request on one
worker, a shared memory object gone meanwhile), the supervisor undoes it where it was made and
the client gets the failure: a change is made on every worker or on none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from server.errors import ServingError
from server.shared_memory import require_enabled
from server.workers.channel import Message

if TYPE_CHECKING:
    from server.dataplane import DataPlane

logger = logging.getLogger("ferry.workers")


class Reply(TypedDict):
    """A worker's answer to a shared-state call: the client's answer or the error (kind,
    message) the client should get, and the calls that undo and redo what it changed (None:
    it changed nothing)."""

    answer: Any
    error: list[str] | None
    undo: Message | None
    redo: Message | None


def _reply(answer: Any = None, undo: Message | None = None, redo: Message | None = None) -> Reply:
    return Reply(answer=answer, error=None, undo=undo, redo=redo)


def _failed(exc: ServingError, undo: Message | None = None, redo: Message | None = None) -> Reply:
    return Reply(answer=None, error=[exc.kind.value, exc.message], undo=undo, redo=redo)


def _shm_register(dataplane: DataPlane, message: Message) -> Reply:
    name = message["name"]
    require_enabled(dataplane.shared_memory).register(
        name, message["key"], message["offset"], message["byte_size"]
    )
    return _reply(undo={"op": "shm_unregister", "name": name}, redo=message)


def _shm_unregister(dataplane: DataPlane, message: Message) -> Reply:
    if dataplane.shared_memory is not None:  # else nothing is ever registered
        dataplane.shared_memory.unregister(message["name"])
    return _reply(redo=message)


def _shm_status(dataplane: DataPlane, _: Message) -> Reply:
    shared_memory = dataplane.shared_memory
    return _reply(shared_memory.status() if shared_memory is not None else [])


def _log_call(settings: dict[str, Any]) -> Message:
    """The log settings call that sets every setting the protocol may change."""
    return {"op": "log_settings", "changes": {k: v for k, v in settings.items() if k != "log_file"}}


def _log_settings(dataplane: DataPlane, message: Message) -> Reply:
    before = dataplane.ops.log_settings()
    answer = dataplane.ops.update_log_settings(message["changes"])  # checks all, then sets
    return _reply(answer, _log_call(before), _log_call(answer))


def _trace_settings(dataplane: DataPlane, message: Message) -> Reply:
    ops = dataplane.ops
    before = ops.trace_snapshot()
    undo: Message = {"op": "trace_restore", "snapshot": before}
    try:
        answer = ops.update_trace_settings(message["model"], message["changes"])
    except ServingError as exc:  # as in Triton, a global update can fail half-way
        after = ops.trace_snapshot()
        if after == before:
            raise
        return _failed(exc, undo, {"op": "trace_restore", "snapshot": after})
    return _reply(answer, undo, {"op": "trace_restore", "snapshot": ops.trace_snapshot()})


def _trace_restore(dataplane: DataPlane, message: Message) -> Reply:
    dataplane.ops.restore_trace_settings(message["snapshot"])
    return _reply()


_APPLY: dict[str, Callable[[DataPlane, Message], Reply]] = {
    "shm_register": _shm_register,
    "shm_unregister": _shm_unregister,
    "shm_status": _shm_status,
    "log_settings": _log_settings,
    "trace_settings": _trace_settings,
    "trace_restore": _trace_restore,
}
STATE_OPS = frozenset(_APPLY)  # the calls a worker answers with apply_state
# the changes a worker asks the supervisor to make on every worker, one at a time
CHANGES = frozenset({"shm_register", "shm_unregister", "log_settings", "trace_settings"})


def apply_state(dataplane: DataPlane, message: Message) -> Reply:
    """Run one shared-state call on this worker; a refusal is in the reply, not raised."""
    try:
        return _APPLY[message["op"]](dataplane, message)
    except ServingError as exc:
        return _failed(exc)


def replay_state(dataplane: DataPlane, calls: list[Message]) -> None:
    """Bring a (re)started worker to the shared state the others have; a call that fails here
    (a shared memory object the client removed meanwhile) is logged and left out."""
    for call in calls:
        error = apply_state(dataplane, call)["error"]
        if error is not None:
            logger.error("replaying %s '%s': %s", call["op"], call.get("name", ""), error[1])


class StateRecord:
    """What a worker that starts later replays: the live registrations, the latest settings."""

    def __init__(self) -> None:
        self.regions: dict[str, Message] = {}
        self.settings: dict[str, Message] = {}  # by op: log_settings, trace_restore

    def remember(self, redo: Message) -> None:
        """Every worker ran a call whose effect `redo` reproduces."""
        op = redo["op"]
        if op == "shm_register":
            self.regions.pop(redo["name"], None)
            self.regions[redo["name"]] = redo
        elif op == "shm_unregister":
            if redo["name"]:
                self.regions.pop(redo["name"], None)
            else:
                self.regions.clear()
        else:
            self.settings[op] = redo

    def replay(self) -> list[Message]:
        return [*self.settings.values(), *self.regions.values()]
