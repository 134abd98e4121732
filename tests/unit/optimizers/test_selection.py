"""The pick: the fastest passing variant that beats FP32; near-ties go to the simpler one."""

from __future__ import annotations

from typing import Any

from optimizers.selection import choose


def row(variant: str, throughput: float, p95: float = 1.0, passed: bool = True) -> dict[str, Any]:
    return {"variant": variant, "passed": passed, "throughput": throughput, "p95_ms": p95}


def test_fastest_wins() -> None:
    rows = [row("ort-fp32", 110), row("int8-dynamic", 200), row("int8-static", 150)]
    assert choose(row("fp32", 100), rows, "throughput", 1.05) == "int8-dynamic"
    assert rows[1]["speedup"] == 2.0 and rows[1]["reason"].startswith("published")
    assert rows[2]["reason"].startswith("passed: 1.50x")


def test_near_tie_goes_to_the_simpler_variant() -> None:
    rows = [row("int8-static", 201), row("int8-dynamic", 200)]
    assert choose(row("fp32", 100), rows, "throughput", 1.05) == "int8-dynamic"


def test_nothing_beats_fp32() -> None:
    rows = [row("ort-fp32", 102), row("int8-dynamic", 300, passed=False)]
    assert choose(row("fp32", 100), rows, "throughput", 1.05) is None
    assert rows[0]["reason"].startswith("too slow")


def test_latency_objective_uses_p95() -> None:
    rows = [row("ort-fp32", 100, p95=0.5), row("int8-dynamic", 500, p95=0.9)]
    assert choose(row("fp32", 100, p95=1.0), rows, "latency", 1.05) == "ort-fp32"


def test_a_speedup_within_the_run_to_run_spread_is_not_published() -> None:
    reference = {**row("fp32", 100), "throughput_spread": 0.05}
    noisy = {**row("int8-dynamic", 108), "throughput_spread": 0.05}
    assert choose(reference, [noisy], "throughput", 1.05) is None
    assert noisy["reason"].startswith("within noise: 1.08x") and noisy["noise"] == 0.1
    clear = {**row("int8-dynamic", 120), "throughput_spread": 0.05}
    assert choose(reference, [clear], "throughput", 1.05) == "int8-dynamic"


def test_min_gain_below_one_asks_for_no_speedup() -> None:
    reference = {**row("fp32", 100), "throughput_spread": 0.2}
    slower = {**row("ort-fp32", 95), "throughput_spread": 0.2}
    assert choose(reference, [slower], "throughput", 0.0) == "ort-fp32"
