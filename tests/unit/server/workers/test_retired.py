"""What a dead worker counted stays in the totals: folding its last answer into the retired
counts, adding them to later merges, forgetting them where a control call reset the numbers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from monitoring.families import render
from server.workers.channel import Channel, Message
from server.workers.hub import ControlHub
from server.workers.merge import WireFamily
from server.workers.retired import RetiredCounts
from tests.unit.server.workers.test_merge import stats

M = {"model": "m", "version": "1"}


def wire(success: float, ready: float = 1.0, pending: float = 0.0) -> list[WireFamily]:
    """One worker's families: a counter, two gauges, a histogram, a drift counter, process_*."""
    return [
        (
            "nv_inference_request_success",
            "doc",
            "counter",
            [("nv_inference_request_success", M, success)],
        ),
        ("ferry_model_ready", "doc", "gauge", [("ferry_model_ready", M, ready)]),
        (
            "nv_inference_pending_request_count",
            "doc",
            "gauge",
            [("nv_inference_pending_request_count", M, pending)],
        ),
        (
            "ferry_batch_size",
            "doc",
            "histogram",
            [
                ("ferry_batch_size_bucket", {**M, "le": "1"}, success),
                ("ferry_batch_size_bucket", {**M, "le": "+Inf"}, success),
                ("ferry_batch_size_count", M, success),
                ("ferry_batch_size_sum", M, success),
                ("ferry_batch_size_created", M, 1.7e9),
            ],
        ),
        ("ferry_drift_windows_total", "doc", "counter", [("ferry_drift_windows_total", M, 3.0)]),
        ("process_cpu_seconds_total", "doc", "counter", [("process_cpu_seconds_total", {}, 2.0)]),
    ]


def text(counts: RetiredCounts, *live: list[WireFamily]) -> str:
    return render(counts.merged_families(list(live))).decode()


def test_a_dead_workers_last_statistics_are_added_to_later_merges() -> None:
    counts = RetiredCounts()
    counts.join("w0")
    counts.join("w1")
    counts.remember_statistics("w0", "", "", [stats("m", 3, 300, 1000, {1: 2, 2: 1})], counts.epoch)
    counts.remember_statistics("w1", "", "", [stats("m", 4, 400, 500, {2: 1})], counts.epoch)
    counts.retire("w0")
    counts.join("w0 again")  # the restarted worker starts from nothing
    live = [[stats("m", 1, 10, 3000, {1: 1})], [stats("m", 4, 400, 500, {2: 1})]]
    (merged,) = counts.merged_statistics(live)
    assert merged["inference_stats"]["success"] == {"count": 8, "ns": 710}
    assert merged["inference_count"] == 8 and merged["execution_count"] == 5
    assert merged["last_inference"] == 3000
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in merged["batch_stats"]] == [
        (1, 3),
        (2, 2),
    ]
    # dying again adds its second life to the first
    counts.remember_statistics(
        "w0 again", "m", "1", [stats("m", 1, 10, 3000, {1: 1})], counts.epoch
    )
    counts.retire("w0 again")
    (merged,) = counts.merged_statistics([[stats("m", 4, 400, 500, {2: 1})]])
    assert merged["inference_stats"]["success"]["count"] == 8


def test_retired_statistics_go_only_to_versions_a_live_worker_serves() -> None:
    counts = RetiredCounts()
    counts.join("w0")
    counts.remember_statistics(
        "w0", "", "", [stats("m", 3, 3, 1, {1: 3}), stats("x", 2, 2, 1, {})], counts.epoch
    )
    counts.retire("w0")
    merged = counts.merged_statistics([[stats("m", 1, 1, 1, {1: 1})]])
    assert [(e["name"], e["inference_count"]) for e in merged] == [("m", 4)]
    assert counts.merged_statistics([]) == []  # no worker serves: no entry at all


def test_a_filtered_answer_replaces_only_what_it_covers() -> None:
    counts = RetiredCounts()
    counts.join("w0")
    counts.remember_statistics(
        "w0", "", "", [stats("m", 3, 3, 1, {}), stats("x", 2, 2, 1, {})], counts.epoch
    )
    counts.remember_statistics("w0", "m", "1", [stats("m", 5, 5, 1, {})], counts.epoch)
    counts.remember_statistics("w0", "x", "", [], counts.epoch)  # it no longer has x
    counts.retire("w0")
    counts.retire("w0")  # once only
    counts.remember_statistics(
        "w0", "", "", [stats("m", 50, 5, 1, {})], counts.epoch
    )  # too late: ignored
    live = [[stats("m", 0, 0, 1, {}), stats("x", 0, 0, 1, {})]]
    assert [e["inference_count"] for e in counts.merged_statistics(live)] == [5, 0]


def test_counters_and_histograms_are_retired_gauges_and_drift_figures_are_not() -> None:
    counts = RetiredCounts()
    counts.join("w0")
    counts.remember_families("w0", wire(success=5, ready=1, pending=7), counts.epoch)
    counts.retire("w0")
    merged = text(counts, wire(success=2, ready=0, pending=1))
    assert 'nv_inference_request_success{model="m",version="1"} 7\n' in merged
    assert 'ferry_batch_size_bucket{model="m",version="1",le="+Inf"} 7\n' in merged
    assert 'ferry_batch_size_count{model="m",version="1"} 7\n' in merged
    assert 'ferry_model_ready{model="m",version="1"} 0\n' in merged  # the live worker's
    assert 'nv_inference_pending_request_count{model="m",version="1"} 1\n' in merged
    assert 'ferry_drift_windows_total{model="m",version="1"} 3\n' in merged  # the evaluator's
    assert "process_cpu_seconds_total 4\n" in merged  # no model: always kept
    assert all(not s[0].endswith("_created") for f in counts.families for s in f[3])


def test_retired_series_need_a_live_version_but_not_the_same_series() -> None:
    counts = RetiredCounts()
    counts.join("w0")
    failure = {"model": "m", "version": "1", "reason": "OTHER"}
    dead = [
        *wire(success=5),
        (
            "nv_inference_request_failure",
            "doc",
            "counter",
            [("nv_inference_request_failure", failure, 2.0)],
        ),
        ("c", "doc", "counter", [("c", {"model": "gone", "version": "1"}, 9.0)]),
    ]
    counts.remember_families("w0", dead, counts.epoch)
    counts.retire("w0")
    merged = text(counts, wire(success=1))
    # a failure only the dead worker had counted stays; a model no worker serves does not show
    assert 'nv_inference_request_failure{model="m",version="1",reason="OTHER"} 2\n' in merged
    assert 'model="gone"' not in merged
    assert "nv_inference_request_success" not in text(counts)  # no live worker: no series


def test_forgetting_what_a_control_call_reset() -> None:
    counts = RetiredCounts()
    for worker in ("w0", "w1", "w2"):
        counts.join(worker)
        both = [stats("m", 3, 3, 1, {}), stats("k", 1, 1, 1, {})]
        counts.remember_statistics(worker, "", "", both, counts.epoch)
        counts.remember_families(worker, wire(success=3), counts.epoch)
    asked_before = counts.epoch
    counts.retire("w0")  # died before the reset was known
    # m reloaded from changed files: its statistics reset, its series stay (no unload)
    counts.forget([("m", "1")], [])
    counts.retire("w1")  # died during the reload, known after: its m numbers are from before
    merged = counts.merged_statistics([[stats("m", 1, 1, 1, {}), stats("k", 1, 1, 1, {})]])
    assert [e["inference_count"] for e in merged] == [1, 3]
    assert 'nv_inference_request_success{model="m",version="1"} 7\n' in text(counts, wire(1))
    # w2 answers again after the reload: what it counted since is kept
    counts.remember_statistics("w2", "m", "1", [stats("m", 2, 2, 1, {})], counts.epoch)
    counts.remember_families("w2", wire(success=5), asked_before)
    counts.forget([], [("m", "1")])  # unloaded: its series go, retired or asked before
    counts.retire("w2")
    merged = counts.merged_statistics([[stats("m", 0, 0, 1, {}), stats("k", 0, 0, 1, {})]])
    assert [e["inference_count"] for e in merged] == [2, 3]
    assert 'nv_inference_request_success{model="m",version="1"} 1\n' in text(counts, wire(1))
    counts.forget_model("k")
    assert counts.merged_statistics([[stats("k", 1, 1, 1, {})]])[0]["inference_count"] == 1


async def fake_worker(
    hub: ControlHub, slot: int, success: list[int], dies: asyncio.Event
) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """A worker on a real control channel, answering with `success[0]` requests counted; once
    `dies` is set, its connection ends right after its next answer. The task: the hub's side of
    the connection (done once the hub has retired the worker), and the worker's."""
    hub_end, worker_end = socket.socketpair()
    hub_side = asyncio.create_task(
        hub.on_connect(*await asyncio.open_unix_connection(sock=hub_end))
    )
    reader, writer = await asyncio.open_unix_connection(sock=worker_end)

    async def answer(message: Message) -> Any:
        if dies.is_set():  # the answer is written first, then the connection closes
            asyncio.get_running_loop().call_soon(writer.close)
        if message["op"] == "families":
            return wire(success[0])
        return [stats("m", success[0], 0, 0, {})]

    channel = Channel(reader, writer, answer)
    worker_side = asyncio.create_task(channel.run())
    await channel.request({"op": "hello", "slot": slot})
    return hub_side, worker_side


def test_the_hub_keeps_the_answer_a_worker_gave_just_before_it_died() -> None:
    async def scenario() -> None:
        hub = ControlHub(2)
        counted = [[3], [4]]
        dies = [asyncio.Event(), asyncio.Event()]
        sides = [await fake_worker(hub, slot, counted[slot], dies[slot]) for slot in (0, 1)]
        await hub.refresh()
        assert (await hub.statistics("", ""))[0]["inference_count"] == 7
        counted[0][0] = 5
        dies[0].set()
        # a reader is shown worker 0's last answer; its connection ends in the same breath
        assert (await hub.statistics("m", "1"))[0]["inference_count"] == 9
        await sides[0][0]
        assert 0 not in hub.channels
        assert (await hub.statistics("", ""))[0]["inference_count"] == 9
        metrics = render(await hub.families()).decode()  # its families from the refresh
        assert 'nv_inference_request_success{model="m",version="1"} 7\n' in metrics
        for task in (*sides[1], sides[0][1]):
            task.cancel()

    asyncio.run(scenario())


def test_a_worker_restarted_after_the_server_was_ready_is_told_so_when_it_joins() -> None:
    """The hub's hello answer says whether every worker has been ready: a worker (re)started
    later knows it before it listens, so its first readiness probe does not answer not-ready
    (it listens only once it has its models; before, it learned it from its `ready` call,
    made after it began to listen)."""

    tasks: list[asyncio.Task[None]] = []

    async def hello(hub: ControlHub, slot: int) -> tuple[Channel, Any]:
        hub_end, worker_end = socket.socketpair()
        connection = hub.on_connect(*await asyncio.open_unix_connection(sock=hub_end))
        tasks.append(asyncio.create_task(connection))

        async def unused(_: Message) -> Any:
            raise AssertionError("no request expected")

        channel = Channel(*await asyncio.open_unix_connection(sock=worker_end), unused)
        tasks.append(asyncio.create_task(channel.run()))
        return channel, await channel.request({"op": "hello", "slot": slot})

    async def scenario() -> None:
        hub = ControlHub(2)
        first, joined = await hello(hub, 0)
        second, _ = await hello(hub, 1)
        assert joined["every_worker_ready"] is False  # at start: until every worker is ready
        assert await first.request({"op": "ready", "slot": 0}) is False
        assert await second.request({"op": "ready", "slot": 1}) is True
        first.close()  # worker 0 dies; its replacement joins
        _, rejoined = await hello(hub, 0)
        assert rejoined["every_worker_ready"] is True
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())
