"""Render an HTML report in headless Chromium (Debian `chromium`) and measure what it drew.

The report itself carries no script; the test renders a copy with a probe script appended that
writes, into the DOM, the layout boxes of the chart's points and of every table row.
`--dump-dom` prints the DOM after the page has loaded and laid out, so the boxes are real layout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

PROBE = """<script>
const box = (element) => {
  const r = element.getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height};
};
const svg = document.querySelector("svg");
const result = {
  svg: svg ? box(svg) : null,
  points: [...document.querySelectorAll("svg circle.point")].map(
    (c) => ({...box(c), title: c.textContent.trim()})),
  rows: [...document.querySelectorAll("table tbody tr")].map(
    (tr) => ({...box(tr), cells: [...tr.cells].map((td) => td.textContent)})),
};
document.body.setAttribute("data-probe", JSON.stringify(result));
</script>
"""
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(html: Path, workdir: Path, screenshot: Path) -> dict[str, Any]:
    """Layout of the chart points and table rows of `html`; also saves a PNG screenshot."""
    binary = chromium_binary()
    assert binary is not None, "chromium is missing (scripts/install-system-deps.sh installs it)"
    probed = workdir / f"probed-{html.name}"
    probed.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    base = [binary, *FLAGS, "--window-size=1280,2000"]
    dom = subprocess.run(
        [*base, f"--user-data-dir={workdir / 'chromium-dom'}", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run(
        [
            *base,
            f"--user-data-dir={workdir / 'chromium-shot'}",
            f"--screenshot={screenshot}",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    marker = 'data-probe="'
    start = dom.stdout.index(marker) + len(marker)
    end = dom.stdout.index('"', start)
    import html as html_module

    result: dict[str, Any] = json.loads(html_module.unescape(dom.stdout[start:end]))
    return result
