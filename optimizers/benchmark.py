"""In-process benchmark of candidates: warm-up, interleaved blocks, percentiles, peak memory."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server.runtimes import Runtime


@dataclass
class Timing:
    """Latency samples of one runtime at one batch size, taken in blocks of `block` calls."""

    batch: int
    seconds: list[float] = field(default_factory=list)
    block: int = 5

    def block_medians(self) -> np.ndarray:
        """The median call time of each block: one figure per run of the interleaving."""
        values = np.asarray(self.seconds)
        count = len(values) // max(self.block, 1)
        if count == 0:
            return np.array([float(np.median(values))]) if len(values) else np.array([])
        medians: np.ndarray = np.median(
            values[: count * self.block].reshape(count, self.block), axis=1
        )
        return medians

    def spread(self) -> float:
        """Run-to-run spread: half the 10-90 percentile range of the block medians, relative to
        their median (0.05 reads "+/-5 %"); 0 with a single block."""
        medians = self.block_medians()
        if len(medians) < 2:
            return 0.0
        low, middle, high = np.percentile(medians, [10, 50, 90])
        return float((high - low) / (2 * middle)) if middle > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """p50/p95/p99 in ms; throughput (samples/s) from the median, robust to hiccups."""
        values = np.asarray(self.seconds) * 1000.0
        p50, p95, p99 = (float(np.percentile(values, q)) for q in (50, 95, 99))
        return {
            "batch": self.batch,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "throughput": self.batch * 1000.0 / p50,
            "spread": self.spread(),
            "iterations": len(values),
            "blocks": len(self.block_medians()),
        }


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return _status_kb("VmRSS") * 1024


def _status_kb(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next peak is one candidate's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last reset."""
    return _status_kb("VmHWM") * 1024


def benchmark(
    runtimes: Mapping[str, Runtime],
    batches: Mapping[int, Mapping[str, np.ndarray]],
    output_names: Sequence[str],
    *,
    warmup: int = 3,
    min_iterations: int = 20,
    budget_s: float = 20.0,
    block: int = 5,
) -> dict[str, dict[int, Timing]]:
    """Time every runtime at every batch size, interleaving them block by block.

    Interleaving spreads background load on a shared machine evenly over the candidates, so
    their ratios stay fair even when absolute numbers drift. It goes by blocks of `block` timed
    calls, each after one untimed call: an ONNX Runtime session's intra-op threads keep
    spinning for a while after a call returns, so switching sessions on every call makes each
    call share the cores with the previous session's spinning threads, which a served model
    never does (2-core box, encoder at batch 32: FP32 ~25 % slower, INT8/FP32 1.5x instead of
    1.9x). The untimed call absorbs the overlap with the previous candidate.
    """
    block = max(1, block)
    timings = {name: {batch: Timing(batch, block=block) for batch in batches} for name in runtimes}
    for batch, inputs in batches.items():
        for runtime in runtimes.values():
            for _ in range(warmup):
                runtime.infer(inputs, output_names)
        deadline = time.perf_counter() + budget_s / max(len(batches), 1)
        timed = 0
        while timed < min_iterations or (time.perf_counter() < deadline and timed < 200):
            for name, runtime in runtimes.items():
                runtime.infer(inputs, output_names)  # settles after the previous candidate
                for _ in range(block):
                    start = time.perf_counter()
                    runtime.infer(inputs, output_names)
                    timings[name][batch].seconds.append(time.perf_counter() - start)
            timed += block
            if timed >= min_iterations and time.perf_counter() >= deadline:
                break
    return timings
