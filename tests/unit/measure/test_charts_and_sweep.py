"""Charts (SVG parses, PNG decodes), the CSV layout, the sweep's candidates, frontier and pick."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from measure.charts import Chart, Series, nice_ticks, png, svg
from measure.model_info import BenchError
from measure.report import csv_text
from measure.sweep import SweepOptions, candidates, pareto_frontier, pick
from server.repository_format import parse_config

CHART = Chart(
    "t <&> title",
    "throughput",
    "latency",
    (
        Series("p50", ((10.0, 1.0), (20.0, 1.5)), "#1f77b4", labels=("c=1", "c=8")),
        Series("p99", ((10.0, 2.0), (20.0, float("nan"))), "#d62728", line=False),
    ),
    ((1.8, "budget"),),
)


def test_nice_ticks_cover_the_range() -> None:
    assert nice_ticks(0, 7.2) == [0, 2, 4, 6, 8]
    assert nice_ticks(0.95, 1.0)[0] <= 0.95 and nice_ticks(0.95, 1.0)[-1] >= 1.0


def test_svg_is_well_formed_with_one_circle_per_finite_point() -> None:
    root = ET.fromstring(svg(CHART))
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle[@class='point']")
    assert len(circles) == 3  # the NaN point is left out
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "t <&> title" in texts and "budget" in texts and "c=8" in texts


def test_png_decodes_to_the_requested_size() -> None:
    data = png(CHART, width=300, height=200)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, color) == (300, 200, 8, 2)
    length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41 : 41 + length])
    assert len(raw) == height * (1 + width * 3)
    pixels = bytes(raw)
    assert pixels.count(b"\xff\xff\xff") < width * height  # something was drawn


def test_csv_follows_perf_analyzer_order() -> None:
    def level(concurrency: int, throughput: float) -> dict:
        return {
            "concurrency": concurrency,
            "throughput_infer_s": throughput,
            "throughput_req_s": throughput,
            "latency_ms": {"avg": 1.0, "p50": 1.0, "p90": 2.0, "p95": 2.5, "p99": 3.0},
            "errors": {"HTTP 503": 2},
            "stable": True,
            "server": None,
        }

    text = csv_text({"levels": [level(8, 200.0), level(1, 100.0)]})
    lines = text.splitlines()
    assert lines[0].split(",")[:2] == ["Concurrency", "Inferences/Second"]
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "8"]  # by throughput
    assert lines[1].split(",")[9] == "1000"  # p50 in microseconds


CONFIG = parse_config(
    'max_batch_size: 16 input [{ name: "x" data_type: TYPE_FP32 dims: [4] }] '
    'output [{ name: "y" data_type: TYPE_FP32 dims: [2] }] '
    "instance_group [{ kind: KIND_CPU count: 1 }] dynamic_batching { }"
)


def test_candidates_are_the_product_of_the_axes() -> None:
    found = candidates(CONFIG, SweepOptions(repository=None, queue_delays_us=(0, 500)))  # type: ignore[arg-type]
    assert [c.label for c in found] == [
        "instances=1 preferred=- delay=0us",
        "instances=1 preferred=- delay=500us",
        "instances=1 preferred=8 delay=0us",
        "instances=1 preferred=8 delay=500us",
        "instances=2 preferred=- delay=0us",
        "instances=2 preferred=- delay=500us",
        "instances=2 preferred=8 delay=0us",
        "instances=2 preferred=8 delay=500us",
    ]
    last = found[-1].config
    assert (
        last.instance_group[0].count == 2
        and last.instance_group[0].kind == CONFIG.instance_group[0].kind
    )
    assert list(last.dynamic_batching.preferred_batch_size) == [8]
    assert last.dynamic_batching.max_queue_delay_microseconds == 500
    assert [i.name for i in last.input] == ["x"] and CONFIG.instance_group[0].count == 1
    with pytest.raises(BenchError, match="no candidate"):
        candidates(CONFIG, SweepOptions(None, (1,), (32,), (0,)))  # type: ignore[arg-type]


def point(config: str, throughput: float, p99: float, errors: int = 0) -> dict:
    return {
        "config": config,
        "concurrency": 1,
        "throughput_infer_s": throughput,
        "p99_ms": p99,
        "errors": errors,
    }


def test_frontier_and_pick() -> None:
    points = [point("a", 100, 10), point("b", 200, 30), point("c", 150, 40), point("d", 300, 90, 1)]
    assert [p["config"] for p in pareto_frontier(points)] == ["a", "b", "d"]
    assert pick(points, 35)["config"] == "b"
    assert pick(points, 5) is None
    assert pick(points, None)["config"] == "b"  # d had errors
