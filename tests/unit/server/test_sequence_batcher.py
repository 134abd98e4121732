"""Sequence batcher semantics with a numpy RNN cell as the runtime (a recording test double)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from server.errors import ErrorKind, ServingError
from server.repository_format import parse_config
from server.sequence import SequenceBatcher, SequencePolicy
from server.types import InferenceRequest
from tests.support.sequence_models import INPUT_SIZE, cell_weights, rnn_cell_config, rnn_reference

OUTPUTS = ["OUTPUT", "FLAGS", "CORRID_OUT"]


class CellRuntime:
    """The RNN cell of tests.support.sequence_models in numpy; records each batch's controls;
    `hold` keeps executions waiting so requests pile up."""

    def __init__(self) -> None:
        self.w, self.u, self.b = cell_weights()
        self.batches: list[list[tuple[int, int]]] = []  # per row: (flags, corrid)
        self.hold = threading.Event()
        self.hold.set()

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        self.hold.wait(5)
        h = np.tanh(inputs["INPUT"] @ self.w + inputs["STATE_IN"] @ self.u + self.b)
        flags = inputs["START"] + 2 * inputs["END"] + 4 * inputs["READY"]
        self.batches.append(
            [(int(f), int(c)) for f, c in zip(flags[:, 0], inputs["CORRID"][:, 0], strict=True)]
        )
        outputs = {
            "OUTPUT": h.astype(np.float32),
            "STATE_OUT": h.astype(np.float32),
            "FLAGS": flags,
            "CORRID_OUT": inputs["CORRID"],
        }
        return {name: outputs[name] for name in output_names}

    def close(self) -> None:
        pass


def make_policy(tmp_path: Path | None = None, **options: object) -> SequencePolicy:
    config = parse_config(rnn_cell_config("rnn", **options))  # type: ignore[arg-type]
    return SequencePolicy.from_config(config, tmp_path)


def step_request(
    sequence_id: int | str, x: np.ndarray, start: bool = False, end: bool = False
) -> InferenceRequest:
    return InferenceRequest(
        "rnn",
        "1",
        {"INPUT": x.reshape(-1, INPUT_SIZE)},
        sequence_id=sequence_id,
        sequence_start=start,
        sequence_end=end,
    )


async def send(
    batcher: SequenceBatcher,
    sequence_id: int | str,
    x: np.ndarray,
    start: bool = False,
    end: bool = False,
) -> dict[str, np.ndarray]:
    request = step_request(sequence_id, x, start, end)
    outputs, _ = await batcher.submit(request.inputs, 1, request=request)
    return outputs  # type: ignore[no-any-return]


async def run_sequence(batcher: SequenceBatcher, sequence_id: int, steps: np.ndarray) -> np.ndarray:
    outputs = []
    for t, x in enumerate(steps):
        await asyncio.sleep(random.random() * 0.002)  # interleave with the other sequences
        result = await send(batcher, sequence_id, x, start=t == 0, end=t == len(steps) - 1)
        outputs.append(result["OUTPUT"][0])
    return np.stack(outputs)


@pytest.mark.parametrize(
    ("strategy", "instances"),
    [("direct { }", 1), ("direct { }", 2), ("oldest { max_candidate_sequences: 16 }", 1)],
)
def test_interleaved_sequences_each_equal_their_run_alone(strategy: str, instances: int) -> None:
    async def scenario() -> None:
        runtimes = [CellRuntime() for _ in range(instances)]
        batcher = SequenceBatcher(runtimes, make_policy(strategy=strategy), OUTPUTS)
        rng = np.random.default_rng(0)
        sequences = {
            100 + i: rng.standard_normal((int(rng.integers(3, 12)), INPUT_SIZE)).astype(np.float32)
            for i in range(24)  # more than the slots: the rest wait in the backlog
        }
        results = await asyncio.gather(
            *(run_sequence(batcher, sid, steps) for sid, steps in sequences.items())
        )
        for steps, got in zip(sequences.values(), results, strict=True):
            np.testing.assert_allclose(got, rnn_reference(steps), rtol=1e-5, atol=1e-6)
        assert any(len(batch) > 1 for r in runtimes for batch in r.batches)
        assert batcher.live_count == 0 and batcher.counts().starts == 24 == batcher.counts().ends
        await batcher.drain()

    asyncio.run(scenario())


def test_direct_fills_empty_slots_with_null_rows() -> None:
    async def scenario() -> None:
        runtime = CellRuntime()
        batcher = SequenceBatcher([runtime], make_policy(), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await asyncio.gather(*(send(batcher, sid, x, start=True) for sid in (1, 2, 3)))
        runtime.batches.clear()
        await send(batcher, 3, x, end=True)  # slot 2 only: slots 0 and 1 are null rows
        assert runtime.batches == [[(0, 0), (0, 0), (2 + 4, 3)]]
        await batcher.drain()

    asyncio.run(scenario())


def test_controls_and_corrid_reach_the_model() -> None:
    async def scenario() -> None:
        batcher = SequenceBatcher([CellRuntime()], make_policy(), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        first = await send(batcher, 2**63 + 5, x, start=True)
        middle = await send(batcher, 2**63 + 5, x)
        last = await send(batcher, 2**63 + 5, x, end=True)
        alone = await send(batcher, 9, x, start=True, end=True)
        assert [int(r["FLAGS"][0, 0]) for r in (first, middle, last, alone)] == [5, 4, 6, 7]
        assert int(first["CORRID_OUT"][0, 0]) == 2**63 + 5
        await batcher.drain()

    asyncio.run(scenario())


def error_of(coroutine: object) -> ServingError:
    async def scenario() -> ServingError:
        with pytest.raises(ServingError) as caught:
            await coroutine  # type: ignore[misc]
        return caught.value

    return asyncio.run(scenario())


def test_triton_errors() -> None:
    async def scenario() -> None:
        batcher = SequenceBatcher([CellRuntime()], make_policy(), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        cases = {
            "unknown": (step_request(7, x), 1),
            "zero": (step_request(0, x, start=True), 1),
            "string on UINT64": (step_request("abc", x, start=True), 1),
            "batch of two": (step_request(7, np.ones((2, INPUT_SIZE), np.float32), True), 2),
            "beyond uint64": (step_request(2**64, x, start=True), 1),
        }
        messages = {}
        for label, (request, rows) in cases.items():
            with pytest.raises(ServingError) as caught:
                await batcher.submit(request.inputs, rows, request=request)
            assert caught.value.kind == ErrorKind.INVALID_ARG
            messages[label] = caught.value.message
        assert messages["unknown"] == (
            "inference request for sequence 7 to model 'rnn' must specify the START flag on the "
            "first request of the sequence"
        )
        assert messages["zero"] == (
            "inference request to model 'rnn' must specify a non-zero or non-empty correlation ID"
        )
        assert messages["string on UINT64"] == (
            "sequence batching control 'CORRID' data-type is 'BYTES', but model 'rnn' expects "
            "'UINT64'"
        )
        assert messages["batch of two"] == (
            "inference request to model 'rnn' must specify batch-size 1 due to requirements of "
            "sequence batcher"
        )
        # after END the id is unknown again; a second START on a live id restarts it
        await send(batcher, 7, x, start=True, end=True)
        with pytest.raises(ServingError, match="must specify the START flag"):
            await send(batcher, 7, x)
        await send(batcher, 8, x * 3, start=True)
        restarted = await send(batcher, 8, x, start=True)
        np.testing.assert_allclose(
            restarted["OUTPUT"][0], rnn_reference(x[np.newaxis])[0], rtol=1e-6
        )
        await batcher.drain()

    asyncio.run(scenario())


def test_string_ids_with_a_string_corrid() -> None:
    async def scenario() -> None:
        policy = make_policy(corrid_type="TYPE_STRING")
        runtime = CellRuntime()
        runtime.infer = _string_corrid(runtime.infer)  # type: ignore[method-assign]
        batcher = SequenceBatcher([runtime], policy, OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        result = await send(batcher, "session-a", x, start=True)
        with pytest.raises(ServingError, match="must specify a non-zero or non-empty correlation"):
            await send(batcher, "", x, start=True)
        assert result["CORRID_OUT"][0, 0] == b"session-a"
        with pytest.raises(
            ServingError, match="data-type is 'UINT64', but model 'rnn' expects 'BYTES'"
        ):
            await send(batcher, 5, x, start=True)
        await batcher.drain()

    asyncio.run(scenario())


def _string_corrid(infer):  # type: ignore[no-untyped-def]
    def wrapped(inputs, output_names):  # type: ignore[no-untyped-def]
        ids = inputs["CORRID"]
        outputs = infer({**inputs, "CORRID": np.zeros(ids.shape, np.uint64)}, output_names)
        outputs["CORRID_OUT"] = ids
        return outputs

    return wrapped


def test_idle_sequence_is_released_and_its_next_request_refused() -> None:
    async def scenario() -> None:
        batcher = SequenceBatcher([CellRuntime()], make_policy(idle_us=50_000), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await send(batcher, 11, x, start=True)
        await send(batcher, 12, x, start=True)
        for _ in range(6):  # 12 stays active, 11 goes idle
            await asyncio.sleep(0.02)
            await send(batcher, 12, x)
        with pytest.raises(ServingError, match="must specify the START flag"):
            await send(batcher, 11, x)
        assert batcher.counts().idle_releases == 1 and batcher.live_count == 1
        await send(batcher, 11, x, start=True)  # a new sequence takes the freed slot
        await batcher.drain()

    asyncio.run(scenario())


def test_backlog_waits_for_a_free_slot_and_times_out() -> None:
    async def scenario() -> None:
        batcher = SequenceBatcher([CellRuntime()], make_policy(max_batch_size=1), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await send(batcher, 1, x, start=True)  # holds the only slot
        waiting = asyncio.ensure_future(send(batcher, 2, x, start=True, end=True))
        await asyncio.sleep(0.05)
        assert not waiting.done() and batcher.pending_count == 1
        await send(batcher, 1, x, end=True)  # frees the slot
        flags = await asyncio.wait_for(waiting, 5)
        assert int(flags["FLAGS"][0, 0]) == 7
        await send(batcher, 3, x, start=True)
        expiring = step_request(4, x, start=True)
        timed = asyncio.ensure_future(batcher.submit(expiring.inputs, 1, 0, 20_000, expiring))
        with pytest.raises(ServingError) as caught:
            await asyncio.wait_for(timed, 5)
        assert caught.value.kind == ErrorKind.UNAVAILABLE
        assert caught.value.message == "timeout of the corresponding sequence has been expired"
        await batcher.drain()

    asyncio.run(scenario())


def test_oldest_forms_batches_up_to_the_preferred_size() -> None:
    async def scenario() -> None:
        runtime = CellRuntime()
        policy = make_policy(
            strategy="oldest { max_candidate_sequences: 8 preferred_batch_size: [4] "
            "max_queue_delay_microseconds: 200000 }"
        )
        batcher = SequenceBatcher([runtime], policy, OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await asyncio.gather(*(send(batcher, sid, x, start=True) for sid in range(1, 9)))
        assert [len(b) for b in runtime.batches] == [4, 4]
        assert all(flags == 5 for batch in runtime.batches for flags, _ in batch)  # no null rows
        await batcher.drain()

    asyncio.run(scenario())


def test_direct_waits_for_minimum_slot_utilization() -> None:
    async def scenario() -> None:
        runtime = CellRuntime()
        policy = make_policy(
            strategy="direct { max_queue_delay_microseconds: 300000 minimum_slot_utilization: 0.5 }"
        )
        batcher = SequenceBatcher([runtime], policy, OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        first = [asyncio.ensure_future(send(batcher, sid, x, start=True)) for sid in (1, 2, 3)]
        await asyncio.sleep(0.05)
        assert runtime.batches == []  # 3 of 8 slots: waits for 4 or the delay
        await send(batcher, 4, x, start=True)
        await asyncio.gather(*first)
        assert [len(b) for b in runtime.batches] == [4]
        await batcher.drain()

    asyncio.run(scenario())


def test_stop_refuses_new_sequences_and_serves_live_ones() -> None:
    async def scenario() -> None:
        batcher = SequenceBatcher([CellRuntime()], make_policy(), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await send(batcher, 1, x, start=True)
        batcher.stop()
        with pytest.raises(ServingError) as caught:
            await send(batcher, 2, x, start=True)
        assert caught.value.kind == ErrorKind.UNAVAILABLE
        assert caught.value.message == (
            "Server is stopping, scheduler for model has stopped accepting new inference requests"
        )
        assert batcher.continues_live_sequence(step_request(1, x))
        await send(batcher, 1, x, end=True)
        assert batcher.live_count == 0
        await batcher.drain()

    asyncio.run(scenario())


def test_drain_runs_backlogged_sequences_past_idle_live_ones() -> None:
    async def scenario() -> None:
        runtime = CellRuntime()
        batcher = SequenceBatcher([runtime], make_policy(max_batch_size=1), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await send(batcher, 1, x, start=True)  # live, holds the slot, sends nothing more
        backlogged = asyncio.ensure_future(send(batcher, 2, x, start=True))
        await asyncio.sleep(0.02)
        await asyncio.wait_for(batcher.drain(), 5)
        assert int((await backlogged)["FLAGS"][0, 0]) == 5

    asyncio.run(scenario())


def test_failed_batch_fails_its_requests_and_keeps_the_state() -> None:
    async def scenario() -> None:
        runtime = CellRuntime()
        batcher = SequenceBatcher([runtime], make_policy(), OUTPUTS)
        x = np.ones(INPUT_SIZE, np.float32)
        await send(batcher, 1, x, start=True)
        original = runtime.infer

        def failing(inputs, output_names):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

        runtime.infer = failing  # type: ignore[method-assign]
        with pytest.raises(ServingError, match="boom"):
            await send(batcher, 1, x * 5)
        runtime.infer = original  # type: ignore[method-assign]
        second = await send(batcher, 1, x, end=True)
        np.testing.assert_allclose(
            second["OUTPUT"][0], rnn_reference(np.stack([x, x]))[1], rtol=1e-6
        )
        await batcher.drain()

    asyncio.run(scenario())


def test_initial_state_from_a_data_file(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    start = np.arange(6, dtype=np.float32) / 10
    (tmp_path / "initial_state" / "h0.bin").write_bytes(start.tobytes())
    config = rnn_cell_config("rnn").replace("zero_data: true", 'data_file: "h0.bin"')
    policy = SequencePolicy.from_config(parse_config(config), tmp_path)
    np.testing.assert_array_equal(policy.states[0].initial, start[np.newaxis])


BAD_CONFIGS = {
    "int32_false_true: [0, 1]": (
        "int32_false_true: [0]",
        "sequence batching control 'int32_false_true' must have exactly 2 entries for "
        "CONTROL_SEQUENCE_START for rnn",
    ),
    "CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64": (
        "CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32",
        "unexpected data type for control CONTROL_SEQUENCE_CORRID for rnn. Allowed data types "
        "are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING",
    ),
    'name: "zeros" ': (
        "",
        "Field 'name' must be set when using initial_state for state input 'STATE_IN'.",
    ),
    "zero_data: true": (
        'data_file: "missing.bin"',
        "failed to read initial_state file",
    ),
    "direct { }": (
        "direct { minimum_slot_utilization: 1.5 }",
        "sequence batching minimum slot utilization must be in range (0.0, 1.0] for rnn",
    ),
}


@pytest.mark.parametrize("original", list(BAD_CONFIGS))
def test_bad_sequence_configs_get_tritons_messages(original: str, tmp_path: Path) -> None:
    replacement, message = BAD_CONFIGS[original]
    config = rnn_cell_config("rnn")
    assert original in config
    with pytest.raises(ValueError) as caught:
        SequencePolicy.from_config(parse_config(config.replace(original, replacement, 1)), tmp_path)
    assert message in str(caught.value)


class GrowingRuntime:
    """STATE_OUT = STATE_IN with the step's first input value appended (the state grows)."""

    def __init__(self) -> None:
        self.widths: list[list[int]] = []

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        state = np.concatenate([inputs["STATE_IN"], inputs["INPUT"][:, :1]], axis=1)
        self.widths.append([state.shape[1]] * len(state))
        return {"OUTPUT": state.sum(axis=1, keepdims=True), "STATE_OUT": state}

    def close(self) -> None:
        pass


def test_variable_size_states_batch_only_with_their_own_size() -> None:
    config = parse_config(
        """
name: "grow"
max_batch_size: 8
input [{ name: "INPUT" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT" data_type: TYPE_FP32 dims: [1] }]
sequence_batching {
  state [{ input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [-1] }]
}
"""
    )

    async def scenario() -> None:
        runtime = GrowingRuntime()
        batcher = SequenceBatcher([runtime], SequencePolicy.from_config(config), ["OUTPUT"])
        x = np.ones(INPUT_SIZE, np.float32)
        await send(batcher, 1, x, start=True)
        await send(batcher, 1, x)  # sequence 1 now has a longer state than a new one
        one, two = await asyncio.gather(send(batcher, 1, x), send(batcher, 2, x, start=True))
        # the initial state is one zero (a variable dim starts at 1); each step appends a 1
        assert float(one["OUTPUT"][0, 0]) == 3.0 and float(two["OUTPUT"][0, 0]) == 1.0
        assert all(len(set(widths)) == 1 for widths in runtime.widths)
        # slot 1 alone: slot 0 is a null row, its state shaped as slot 1's
        three = await send(batcher, 2, x)
        assert float(three["OUTPUT"][0, 0]) == 2.0 and runtime.widths[-1] == [3, 3]
        await batcher.drain()

    asyncio.run(scenario())
