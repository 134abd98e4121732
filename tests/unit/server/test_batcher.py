"""Batcher semantics with a recording runtime (the project's FakeRuntime-style test double)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from server.batching import Batcher, BatchingPolicy, QueuePolicy
from server.errors import ServingError
from server.repository_format import parse_config


class RecordingRuntime:
    """Doubles its input; records every batch it ran; can be held to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        self.release.wait(5)
        x = inputs["x"]
        self.batches.append([int(v) for v in x[:, 0]])
        return {"y": x * 2}

    def close(self) -> None:
        pass


def policy(**overrides: object) -> BatchingPolicy:
    base = dict(
        max_batch_size=8,
        dynamic=True,
        preferred_batch_sizes=(8,),
        max_queue_delay_s=0.0,
        queue_policies={0: QueuePolicy()},
    )
    base.update(overrides)
    return BatchingPolicy(**base)  # type: ignore[arg-type]


def rows(value: int, n: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


def run(coroutine):
    return asyncio.run(coroutine)


def test_each_request_gets_its_own_rows() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        batcher = Batcher([runtime], policy(max_queue_delay_s=0.01), ["y"])
        results = await asyncio.gather(
            *(batcher.submit(rows(i, n=1 + i % 3), 1 + i % 3) for i in range(12))
        )
        for i, (outputs, timing) in enumerate(results):
            assert outputs["y"].shape == (1 + i % 3, 2)
            assert np.all(outputs["y"] == 2 * i)
            assert timing.batch_size >= 1 + i % 3
        assert len(runtime.batches) < 12
        assert all(len(b) <= 8 for b in runtime.batches)
        await batcher.drain()

    run(scenario())


def test_queued_requests_form_one_batch_up_to_max_batch_size() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        runtime.release.clear()
        batcher = Batcher([runtime], policy(), ["y"])
        first = asyncio.ensure_future(batcher.submit(rows(0), 1))
        await asyncio.sleep(0.05)  # the instance is busy with request 0
        rest = [asyncio.ensure_future(batcher.submit(rows(i), 1)) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        assert batcher.pending_count == 10
        runtime.release.set()
        await asyncio.gather(first, *rest)
        assert runtime.batches == [[0], [1, 2, 3, 4, 5, 6, 7, 8], [9, 10]]
        await batcher.drain()

    run(scenario())


def test_different_shapes_never_share_a_batch() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        runtime.release.clear()
        batcher = Batcher([runtime], policy(), ["y"])
        first = asyncio.ensure_future(batcher.submit(rows(0), 1))
        await asyncio.sleep(0.05)
        wide = [asyncio.ensure_future(batcher.submit(rows(i, width=3), 1)) for i in (1, 2)]
        narrow = [asyncio.ensure_future(batcher.submit(rows(i), 1)) for i in (3, 4)]
        runtime.release.set()
        await asyncio.gather(first, *wide, *narrow)
        assert runtime.batches == [[0], [1, 2], [3, 4]]
        await batcher.drain()

    run(scenario())


def test_preferred_batch_size_runs_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        batcher = Batcher(
            [runtime], policy(preferred_batch_sizes=(2, 8), max_queue_delay_s=30.0), ["y"]
        )
        done = await asyncio.wait_for(
            asyncio.gather(batcher.submit(rows(1), 1), batcher.submit(rows(2), 1)), timeout=5
        )
        assert len(done) == 2 and runtime.batches == [[1, 2]]
        await batcher.drain()

    run(scenario())


def test_delay_waits_for_a_fuller_batch_then_gives_up() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        batcher = Batcher([runtime], policy(max_queue_delay_s=0.2), ["y"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = asyncio.ensure_future(batcher.submit(rows(1), 1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(rows(2), 1))
        await asyncio.gather(first, second)
        assert runtime.batches == [[1, 2]]  # the delay let the second one join
        assert loop.time() - started >= 0.15
        await batcher.drain()

    run(scenario())


def test_priority_levels_run_high_priority_first() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        runtime.release.clear()
        levels = {0: QueuePolicy(), 1: QueuePolicy(), 2: QueuePolicy()}
        batcher = Batcher(
            [runtime],
            policy(
                max_batch_size=1,
                preferred_batch_sizes=(1,),
                priority_levels=2,
                default_priority_level=2,
                queue_policies=levels,
            ),
            ["y"],
        )
        first = asyncio.ensure_future(batcher.submit(rows(0), 1))
        await asyncio.sleep(0.05)
        low = [asyncio.ensure_future(batcher.submit(rows(i), 1)) for i in (1, 2)]
        high = asyncio.ensure_future(batcher.submit(rows(3), 1, priority=1))
        runtime.release.set()
        await asyncio.gather(first, *low, high)
        assert runtime.batches == [[0], [3], [1], [2]]
        await batcher.drain()

    run(scenario())


def test_max_queue_size_rejects_immediately() -> None:
    async def scenario() -> None:
        runtime = RecordingRuntime()
        runtime.release.clear()
        batcher = Batcher(
            [runtime], policy(queue_policies={0: QueuePolicy(max_queue_size=1)}), ["y"]
        )
        first = asyncio.ensure_future(batcher.submit(rows(0), 1))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit(rows(1), 1))
        await asyncio.sleep(0)
        with pytest.raises(ServingError, match="Exceeds maximum queue size"):
            await batcher.submit(rows(2), 1)
        runtime.release.set()
        await asyncio.gather(first, queued)
        await batcher.drain()

    run(scenario())


def test_timeout_override_only_shortens() -> None:
    queue_policy = QueuePolicy(default_timeout_s=0.5, allow_timeout_override=True)
    assert queue_policy.timeout_s(100_000) == 0.1
    assert queue_policy.timeout_s(900_000) == 0.5
    assert QueuePolicy(allow_timeout_override=True).timeout_s(100) == 0.0  # no default: ignored
    assert QueuePolicy(default_timeout_s=0.5).timeout_s(100) == 0.5  # override not allowed


def test_preserve_ordering_with_two_instances() -> None:
    async def scenario() -> None:
        slow, fast = RecordingRuntime(), RecordingRuntime()
        slow.release.clear()
        batcher = Batcher(
            [fast, slow],
            policy(max_batch_size=1, preferred_batch_sizes=(1,), preserve_ordering=True),
            ["y"],
        )
        order: list[int] = []

        async def tracked(i: int) -> None:
            await batcher.submit(rows(i), 1)
            order.append(i)

        tasks = [asyncio.ensure_future(tracked(i)) for i in range(2)]
        await asyncio.sleep(0.1)
        assert order == []  # request 1 finished first but waits for request 0
        slow.release.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1]
        await batcher.drain()

    run(scenario())


def test_policy_from_config() -> None:
    config = parse_config("""
        max_batch_size: 16
        dynamic_batching {
          preferred_batch_size: [4, 8]
          max_queue_delay_microseconds: 1500
          priority_levels: 2
          default_priority_level: 2
          default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 2000
                                 timeout_action: DELAY allow_timeout_override: true }
          priority_queue_policy { key: 1 value { max_queue_size: 3 } }
        }""")
    batching = BatchingPolicy.from_config(config)
    assert batching.dynamic and batching.preferred_batch_sizes == (4, 8)
    assert batching.max_queue_delay_s == pytest.approx(0.0015)
    assert batching.queue_policies[1].max_queue_size == 3
    assert batching.queue_policies[2] == QueuePolicy(7, 0.002, True, True)
    assert batching.level_of(0) == 2 and batching.level_of(1) == 1 and batching.level_of(9) == 2
    assert not BatchingPolicy.from_config(parse_config("max_batch_size: 8")).dynamic


class ThreadRecordingRuntime(RecordingRuntime):
    """Records the thread each execution ran on."""

    def __init__(self, inline_capable: bool) -> None:
        super().__init__()
        self.inline_capable = inline_capable
        self.threads: set[str] = set()

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        return super().infer(inputs, output_names)


@pytest.mark.parametrize("inline_capable", [True, False])
def test_fast_executions_run_on_the_loop_unless_the_runtime_opts_out(inline_capable: bool) -> None:
    async def scenario() -> set[str]:
        runtime = ThreadRecordingRuntime(inline_capable)
        batcher = Batcher([runtime], policy(), ["y"])
        for i in range(60):  # sequential: past the warm-up, every execution is tiny
            await batcher.submit(rows(i), 1)
        runtime.threads.clear()
        for i in range(5):
            await batcher.submit(rows(i), 1)
        await batcher.drain()
        return runtime.threads

    threads = run(scenario())
    loop_thread = threading.current_thread().name
    if inline_capable:
        assert threads == {loop_thread}
    else:
        assert loop_thread not in threads and threads
