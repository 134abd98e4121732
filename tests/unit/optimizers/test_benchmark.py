"""The benchmark interleaves candidates by blocks, each after an untimed settling call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from optimizers.benchmark import benchmark


class Recorder:
    """A Runtime that logs its calls in a shared list."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        return {name: inputs["x"] for name in output_names}

    def close(self) -> None:
        pass


def test_blocks_alternate_and_the_settling_call_is_not_timed() -> None:
    log: list[str] = []
    runtimes = {"a": Recorder("a", log), "b": Recorder("b", log)}
    batch = {"x": np.zeros((2, 3), np.float32)}
    timings = benchmark(
        runtimes, {2: batch}, ["y"], warmup=1, min_iterations=6, budget_s=0.0, block=3
    )
    assert log[:2] == ["a", "b"]  # warm-up
    assert log[2:] == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4
    for name in runtimes:
        assert len(timings[name][2].seconds) == 6  # 2 blocks of 3; settling calls not timed


def test_spread_is_half_the_10_90_range_of_block_medians() -> None:
    from optimizers.benchmark import Timing

    steady = Timing(1, [0.010] * 20, block=5)
    assert steady.spread() == 0.0
    # blocks with medians 9, 10, 10, 11 ms: 10-90 % range 9.3-10.7 ms around a 10 ms median
    noisy = Timing(1, [0.009] * 5 + [0.010] * 10 + [0.011] * 5, block=5)
    assert abs(noisy.spread() - 0.07) < 1e-9
    summary = noisy.summary()
    assert summary["blocks"] == 4 and summary["spread"] == noisy.spread()
    assert Timing(1, [0.01, 0.02], block=5).spread() == 0.0  # one (partial) block
