"""The report in a real browser: headless Chromium at a wide and a phone width.

A copy of the page gets a script that measures the laid-out page and posts what it found to a
frame around it (Chromium's headless window is at least 500 px wide, so the page is shown in a
frame of the width under test), which writes it into its DOM for ``chromium --dump-dom``: the page itself never scrolls sideways (wide
tables and the lineage graph scroll inside their own box), no plot, code block or table box
reaches past the viewport, no two blocks overlap, and a table's step column stays in view when
its box is scrolled. Screenshots land next to the page for a look by eye.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mergeflow.cli import main

from .conftest import FIXTURES, add_samples, manifest_dict

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's chromium best-effort)"
)

MEASURE = """
<script>
(function () {
  const problems = [];
  const width = window.innerWidth;
  const page = document.documentElement.scrollWidth;
  if (page > width + 1) problems.push(`page scrolls sideways: ${page} > ${width}`);
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (el.className && typeof el.className === "string" ? "." + el.className : "");
  for (const el of document.querySelectorAll("img, pre, .scroll, table, svg, h1, h2, h3, p, li, nav")) {
    if (el.closest(".scroll") && el.closest(".scroll") !== el) continue;  // scrolls in its box
    if (el.closest("details:not([open])")) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0) continue;
    if (box.left < -1 || box.right > width + 1)
      problems.push(`${name(el)} reaches past the viewport: ${box.left}..${box.right}`);
  }
  for (const el of document.querySelectorAll("pre, .scroll, td, th, h1, h2, h3, p")) {
    const style = getComputedStyle(el);
    if (el.closest("details:not([open])")) continue;
    const scrolls = ["auto", "scroll"].includes(style.overflowX);
    if (!scrolls && el.scrollWidth > el.clientWidth + 1 && style.overflowX !== "visible")
      problems.push(`${name(el)} clips its content: ${el.scrollWidth} > ${el.clientWidth}`);
  }
  // Blocks of the page's flow must not overlap their siblings.
  const blocks = Array.from(document.body.children).filter(
      (el) => el.tagName !== "SCRIPT" && getComputedStyle(el).position !== "sticky");
  for (let i = 1; i < blocks.length; i++) {
    const a = blocks[i - 1].getBoundingClientRect(), b = blocks[i].getBoundingClientRect();
    if (a.height && b.height && b.top < a.bottom - 1)
      problems.push(`${name(blocks[i])} overlaps ${name(blocks[i - 1])}`);
  }
  // Within the plot grid, no plot overlaps another.
  const plots = Array.from(document.querySelectorAll(".plots img")).map((i) => i.getBoundingClientRect());
  for (let i = 0; i < plots.length; i++) for (let j = i + 1; j < plots.length; j++) {
    const a = plots[i], b = plots[j];
    if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
      problems.push(`plots ${i} and ${j} overlap`);
  }
  // A wide table scrolls in its box, its first column staying put.
  let sticky = 0;
  for (const box of document.querySelectorAll(".scroll")) {
    const table = box.querySelector("table.sticky");
    if (!table || box.scrollWidth <= box.clientWidth) continue;
    const cell = table.querySelector("tbody td");
    box.scrollLeft = 120;
    const left = cell.getBoundingClientRect().left, edge = box.getBoundingClientRect().left;
    if (Math.abs(left - edge) > 2) problems.push(`step column scrolled away: ${left} vs ${edge}`);
    box.scrollLeft = 0;
    sticky++;
  }
  parent.postMessage(JSON.stringify({width, problems, sticky}), "*");
})();
</script>
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The fixture recipe's report (select, gates, report), once for this module."""
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(FIXTURES / "eval", root / "eval")
    for path in (root / "eval").glob("*.json"):
        path.write_text(json.dumps(add_samples(json.loads(path.read_text()))))
    shutil.copy(FIXTURES / "provenance.json", root / "provenance.json")
    (root / "manifest.json").write_text(json.dumps(manifest_dict()))
    old = Path.cwd()
    try:
        os.chdir(root)
        base = ["--manifest", "manifest.json"]
        assert (
            main(["select", *base, "--step", "step1", "--output", "out/step1/selected.json"]) == 0
        )
        for step in ("step1--w50", "step1--w75", "step1--w90", "step1", "step2"):
            assert main(["gate", *base, "--step", step, "--output", f"out/{step}/gate.json"]) == 0
        assert main(["report", *base, "--out-dir", "report"]) == 0
    finally:
        os.chdir(old)
    return root / "report" / "index.html"


FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{src}" style="width:{width}px;height:{height}px;border:0;display:block"></iframe>
<script>window.addEventListener("message", (e) => document.body.setAttribute("data-layout", e.data));
</script></body></html>"""


def framed(page: Path, src: Path, width: int, height: int) -> Path:
    frame = page.with_name(f"frame-{src.stem}-{height}.html")
    frame.write_text(FRAME.format(src=src.name, width=width, height=height))
    return frame


def chromium(*args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("width", [1400, 400])
def test_nothing_is_clipped_or_overlapping(page, width):
    probe = page.with_name(f"probe-{width}.html")
    html = page.read_text()
    # Every <details> open, so that what a reader unfolds is measured too.
    html = html.replace("<details>", "<details open>").replace("</body>", MEASURE + "</body>")
    probe.write_text(html)
    window = f"--window-size={max(width, 500)},1000"
    frame = framed(page, probe, width, 1000)
    done = chromium(window, "--virtual-time-budget=10000", "--dump-dom", frame.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = done.stdout.split('data-layout="', 1)[1].split('"', 1)[0]
    layout = json.loads(found.replace("&quot;", '"').replace("&amp;", "&"))
    assert layout["width"] == width
    assert layout["problems"] == []
    if width == 400:
        assert layout["sticky"] >= 1  # the wide tables do scroll, with their step column fixed
    shot = page.with_name(f"screenshot-{width}.png")
    frame = framed(page, page, width, 2600)
    chromium(f"--window-size={max(width, 500)},2600", f"--screenshot={shot}", frame.as_uri())
    assert shot.stat().st_size > 10_000
