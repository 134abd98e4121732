"""Small scatter/line charts as inline SVG or PNG, without a plotting library.

Reports must open anywhere with nothing fetched (no script, no font, no network): SVG is text
that browsers, GitHub and editors render, so HTML reports inline it. `--plot FILE.png` is drawn
by the tiny rasterizer below (numpy + zlib, a 5x7 bitmap font) so PNG needs no matplotlib;
its text is upper-case and plain, SVG is the sharper choice.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from dataclasses import dataclass, field
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Series:
    """Points of one kind; `labels` name each point; `line` joins them in order."""

    name: str
    points: tuple[tuple[float, float], ...]
    color: str
    line: bool = True
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    guides: tuple[tuple[float, str], ...] = field(default=())  # horizontal lines: (y, label)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _format(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class _Frame:
    """Plot area and the data-to-pixel mapping."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_ticks: tuple[float, ...]
    y_ticks: tuple[float, ...]

    def x(self, value: float) -> float:
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - low) / (high - low) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (value - low) / (high - low) * span


def _frame(chart: Chart, width: int, height: int) -> _Frame:
    xs = [x for s in chart.series for x, _ in s.points if math.isfinite(x)]
    ys = [y for s in chart.series for _, y in s.points if math.isfinite(y)]
    ys += [y for y, _ in chart.guides if math.isfinite(y)]
    x_low = min([*xs, 0.0]) if xs else 0.0
    y_low = min(ys) if ys else 0.0
    y_low = 0.0 if y_low >= 0 and (not ys or y_low < 0.5 * max(ys)) else y_low
    x_ticks = nice_ticks(x_low, max(xs) if xs else 1.0)
    y_ticks = nice_ticks(y_low, max(ys) if ys else 1.0)
    return _Frame(width, height, 80, 170, 40, 56, tuple(x_ticks), tuple(y_ticks))


def svg(chart: Chart, width: int = 760, height: int = 440) -> str:
    """The chart as a standalone <svg> element."""
    frame = _frame(chart, width, height)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(chart.title)}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2 - 40:.0f}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(chart.title)}</text>',
    ]
    plot_right = width - frame.right
    plot_bottom = height - frame.bottom
    for tick in frame.x_ticks:
        x = frame.x(tick)
        out.append(
            f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{plot_bottom}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{x:.1f}" y="{plot_bottom + 16}" text-anchor="middle">'
            f"{_format(tick)}</text>"
        )
    for tick in frame.y_ticks:
        y = frame.y(tick)
        out.append(
            f'<line x1="{frame.left}" y1="{y:.1f}" x2="{plot_right}" y2="{y:.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_format(tick)}</text>'
        )
    out.append(
        f'<rect x="{frame.left}" y="{frame.top}" width="{plot_right - frame.left}" '
        f'height="{plot_bottom - frame.top}" fill="none" stroke="#333"/>'
        f'<text x="{(frame.left + plot_right) / 2:.0f}" y="{height - 14}" '
        f'text-anchor="middle">{escape(chart.x_label)}</text>'
        f'<text transform="translate(18 {(frame.top + plot_bottom) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(chart.y_label)}</text>'
    )
    for value, label in chart.guides:
        y = frame.y(value)
        out.append(
            f'<line class="guide" x1="{frame.left}" y1="{y:.1f}" x2="{plot_right}" y2="{y:.1f}" '
            f'stroke="#888" stroke-dasharray="6 4"/>'
            f'<text x="{plot_right - 4}" y="{y - 5:.1f}" text-anchor="end" fill="#555">'
            f"{escape(label)}</text>"
        )
    for index, series in enumerate(chart.series):
        points = [(frame.x(x), frame.y(y)) for x, y in series.points if _finite(x, y)]
        if series.line and len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{series.color}" stroke-width="2"/>'
            )
        labels = series.labels or ("",) * len(series.points)
        for (x, y), label in zip(points, labels, strict=False):
            out.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{series.color}">'
                f"<title>{escape(series.name)} {escape(label)}</title></circle>"
            )
            if label:
                out.append(
                    f'<text x="{x + 7:.1f}" y="{y - 7:.1f}" font-size="11">{escape(label)}</text>'
                )
        legend_y = frame.top + 8 + index * 20
        out.append(
            f'<circle cx="{plot_right + 16}" cy="{legend_y}" r="5" fill="{series.color}"/>'
            f'<text x="{plot_right + 26}" y="{legend_y + 4}">{escape(series.name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _finite(x: float, y: float) -> bool:
    return math.isfinite(x) and math.isfinite(y)


# --- PNG ---------------------------------------------------------------------------------------

# 5x7 glyphs, one 5-bit row per number, top row first; lower case is drawn upper case.
_GLYPHS: dict[str, tuple[int, ...]] = {
    "0": (14, 17, 19, 21, 25, 17, 14),
    "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2),
    "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14),
    "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 31, 17, 17, 17),
    "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (28, 18, 17, 17, 17, 18, 28),
    "E": (31, 16, 16, 30, 16, 16, 31),
    "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15),
    "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12),
    "K": (17, 18, 20, 24, 20, 18, 17),
    "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17),
    "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16),
    "Q": (14, 17, 17, 17, 21, 18, 13),
    "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30),
    "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4),
    "W": (17, 17, 17, 21, 21, 21, 10),
    "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4),
    "Z": (31, 1, 2, 4, 8, 16, 31),
    " ": (0, 0, 0, 0, 0, 0, 0),
    ".": (0, 0, 0, 0, 0, 12, 12),
    ",": (0, 0, 0, 0, 12, 4, 8),
    ":": (0, 12, 12, 0, 12, 12, 0),
    "/": (0, 1, 2, 4, 8, 16, 0),
    "(": (2, 4, 8, 8, 8, 4, 2),
    ")": (8, 4, 2, 2, 2, 4, 8),
    "-": (0, 0, 0, 31, 0, 0, 0),
    "_": (0, 0, 0, 0, 0, 0, 31),
    "=": (0, 0, 31, 0, 31, 0, 0),
    "+": (0, 4, 4, 31, 4, 4, 0),
    "%": (24, 25, 2, 4, 8, 19, 3),
    "[": (14, 8, 8, 8, 8, 8, 14),
    "]": (14, 2, 2, 2, 2, 2, 14),
    "<": (2, 4, 8, 16, 8, 4, 2),
    ">": (8, 4, 2, 1, 2, 4, 8),
    "?": (14, 17, 1, 2, 4, 0, 4),
    "'": (4, 4, 8, 0, 0, 0, 0),
    "*": (0, 4, 21, 14, 21, 4, 0),
    "#": (10, 10, 31, 10, 31, 10, 10),
}


def _text_mask(text: str, scale: int) -> np.ndarray:
    """A boolean bitmap of `text` in the 5x7 font, `scale` pixels per font pixel."""
    text = text.upper().replace("µ", "U")
    mask = np.zeros((7, max(1, len(text) * 6)), dtype=bool)
    for index, char in enumerate(text):
        rows = _GLYPHS.get(char, _GLYPHS["?"])
        for row, bits in enumerate(rows):
            for column in range(5):
                if bits & (1 << (4 - column)):
                    mask[row, index * 6 + column] = True
    return np.kron(mask, np.ones((scale, scale), dtype=bool))


def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.pixels = np.full((height, width, 3), 255, dtype=np.uint8)

    def dot(self, x: float, y: float, radius: float, color: tuple[int, int, int]) -> None:
        height, width, _ = self.pixels.shape
        r = math.ceil(radius)
        cx, cy = round(x), round(y)
        ys, xs = np.ogrid[
            max(0, cy - r) : min(height, cy + r + 1), max(0, cx - r) : min(width, cx + r + 1)
        ]
        disk = (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
        region = self.pixels[
            max(0, cy - r) : min(height, cy + r + 1), max(0, cx - r) : min(width, cx + r + 1)
        ]
        region[disk] = color

    def line(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        color: tuple[int, int, int],
        width: float = 1.0,
        dash: int = 0,
    ) -> None:
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) * 2))
        for step in range(steps + 1):
            if dash and (step // (dash * 2)) % 2:
                continue
            t = step / steps
            self.dot(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, width / 2, color)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        color: tuple[int, int, int],
        scale: int = 2,
        anchor: str = "start",
        vertical: bool = False,
    ) -> None:
        mask = _text_mask(text, scale)
        if vertical:
            mask = np.rot90(mask)
        height, width = mask.shape
        left = x - (width / 2 if anchor == "middle" else width if anchor == "end" else 0)
        top = y - height / 2 if vertical else y - height
        x0, y0 = round(left), round(top)
        canvas_h, canvas_w, _ = self.pixels.shape
        sx0, sy0 = max(0, -x0), max(0, -y0)
        x0, y0 = max(0, x0), max(0, y0)
        w = min(width - sx0, canvas_w - x0)
        h = min(height - sy0, canvas_h - y0)
        if w > 0 and h > 0:
            self.pixels[y0 : y0 + h, x0 : x0 + w][mask[sy0 : sy0 + h, sx0 : sx0 + w]] = color

    def png(self) -> bytes:
        height, width, _ = self.pixels.shape
        raw = b"".join(b"\x00" + self.pixels[row].tobytes() for row in range(height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data))
            )

        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def png(chart: Chart, width: int = 900, height: int = 520) -> bytes:
    """The chart as PNG bytes (same layout as the SVG, bitmap text)."""
    frame = _frame(chart, width, height)
    canvas = _Canvas(width, height)
    grey, dark, black = (225, 225, 225), (90, 90, 90), (0, 0, 0)
    plot_right, plot_bottom = width - frame.right, height - frame.bottom
    for tick in frame.x_ticks:
        x = frame.x(tick)
        canvas.line(x, frame.top, x, plot_bottom, grey)
        canvas.text(x, plot_bottom + 20, _format(tick), black, anchor="middle")
    for tick in frame.y_ticks:
        y = frame.y(tick)
        canvas.line(frame.left, y, plot_right, y, grey)
        canvas.text(frame.left - 6, y + 7, _format(tick), black, anchor="end")
    for left, top, right, bottom in (
        (frame.left, frame.top, plot_right, frame.top),
        (frame.left, plot_bottom, plot_right, plot_bottom),
        (frame.left, frame.top, frame.left, plot_bottom),
        (plot_right, frame.top, plot_right, plot_bottom),
    ):
        canvas.line(left, top, right, bottom, dark)
    canvas.text(width / 2 - 40, 26, chart.title, black, anchor="middle")
    canvas.text((frame.left + plot_right) / 2, height - 8, chart.x_label, black, anchor="middle")
    canvas.text(14, (frame.top + plot_bottom) / 2, chart.y_label, black, vertical=True)
    for value, label in chart.guides:
        y = frame.y(value)
        canvas.line(frame.left, y, plot_right, y, (140, 140, 140), dash=6)
        canvas.text(plot_right - 4, y - 4, label, dark, anchor="end")
    for index, series in enumerate(chart.series):
        color = _rgb(series.color)
        points = [(frame.x(x), frame.y(y)) for x, y in series.points if _finite(x, y)]
        if series.line:
            for (x0, y0), (x1, y1) in itertools.pairwise(points):
                canvas.line(x0, y0, x1, y1, color, width=2.0)
        labels = series.labels or ("",) * len(points)
        for (x, y), label in zip(points, labels, strict=False):
            canvas.dot(x, y, 4.5, color)
            if label:
                canvas.text(x + 7, y - 6, label, black)
        legend_y = frame.top + 10 + index * 22
        canvas.dot(plot_right + 16, legend_y, 5, color)
        canvas.text(plot_right + 26, legend_y + 7, series.name, black)
    return canvas.png()
