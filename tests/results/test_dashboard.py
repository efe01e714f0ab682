"""`lab dashboard` opened in a real headless Chromium (Debian's `chromium`): what the page shows.

Chromium gives both the document it built (--dump-dom) and what it drew (--screenshot): the test
reads the sections and the grid from the first, and the squares' colours from the second.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import html5lib
import pytest
from PIL import Image

from lab.cli import main
from tests.support.results_history import Cell, write_night

GOOD = "hibernate-resume[kernel=default]"
OTHER = "no-stale-resume[kernel=default]"
PSCI = "psci-none[kernel=default]"
KNOWN = """known_issues:
  - id: psci-none-panics
    match: {cell: "psci-none[kernel=default]", console: "Kernel panic"}
    link: https://bugs.example/psci-none
    advice: fixed in 7.3; ignore until then
"""
COLOURS = {"PASS": (0xb7, 0xe4, 0xb0), "FAIL": (0xf4, 0xa6, 0xa6), "FLAKY": (0xf7, 0xd8, 0x8b),
           "KNOWN": (0xd6, 0xc4, 0xf0)}
NS = {"h": "http://www.w3.org/1999/xhtml"}


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: apt-get install chromium (the dashboard test opens the page in it)",
                    pytrace=False)
    return found


def _open(page: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Chromium headless on `page`, with a profile of its own that is removed afterwards."""
    profile = tempfile.mkdtemp(prefix="lab-chromium-")
    try:
        return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                               "--window-size=1400,1000", *mode, page.as_uri()],
                              capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six nights: hibernate-resume regresses on night 4, no-stale-resume is flaky on night 2, psci-none fails
    with a known issue every night."""
    runs = tmp_path_factory.mktemp("dashboard") / "runs"
    for night in range(6):
        first = Cell(GOOD, "FAIL", "hibernate-off", kernel="7.2.14-1") if night >= 4 else \
            Cell(GOOD, hibernate_seconds=15.0 + night)
        psci = Cell(PSCI, "FAIL", "crash", console="Kernel panic - not syncing: Attempted to kill init!")
        write_night(runs, "nightly", night, [first, Cell(OTHER, flaky=night == 2), psci])
    (runs / "known-issues.yaml").write_text(KNOWN)
    assert main(["results", "import", str(runs), "--runs-dir", str(runs)]) == 0
    assert main(["dashboard", "--runs-dir", str(runs)]) == 0
    return runs / "dashboard.html"


def test_the_page_chromium_builds_puts_regressions_and_known_issues_on_top(dashboard: Path) -> None:
    document = html5lib.parse(_open(dashboard, "--dump-dom").stdout)
    headings = [" ".join("".join(h.itertext()).split()) for h in document.iterfind(".//h:h2", NS)]
    assert headings[:3] == ["Active regressions (1)", "Known issues on the last night (1)", "Cells by night"]
    [regression] = document.iterfind(".//h:ul[@class='regressions']/h:li", NS)
    assert "".join(regression.itertext()).startswith(f"{GOOD}: PASS→FAIL; boot1 class hibernate-off2 → hibernate-off")
    [known] = document.iterfind(".//h:ul[@class='known']/h:li", NS)
    assert "psci-none-panics" in "".join(known.itertext()) and "fixed in 7.3" in "".join(known.itertext())
    rows = {row.find("h:th", NS).text: [td.get("class") for td in row.iterfind("h:td", NS)][1:]
            for row in document.iterfind(".//h:table[@class='grid']/h:tbody/h:tr", NS) if row.find("h:td", NS)
            is not None}
    assert rows == {GOOD: ["PASS"] * 4 + ["FAIL"] * 2, OTHER: ["PASS", "PASS", "FLAKY", "PASS", "PASS", "PASS"],
                    PSCI: ["KNOWN"] * 6}
    links = [a.get("href") for a in document.iterfind(".//h:table[@class='grid']//h:a", NS)]
    assert len(links) == 18 and all((dashboard.parent / link).parent.is_dir() for link in links)
    lines = {line.get("class"): line.get("points") for line in
             document.iterfind(".//{http://www.w3.org/2000/svg}polyline")}
    assert set(lines) == {"hibernate", "resume", "kernel-hibernate", "kernel-restore"}
    assert len(list(document.iterfind(".//{http://www.w3.org/2000/svg}polyline"))) == 12
    assert not list(document.iterfind(".//h:script", NS))


def test_chromium_draws_the_squares_in_their_status_colours(dashboard: Path) -> None:
    shot = dashboard.parent / "dashboard.png"
    _open(dashboard, f"--screenshot={shot}")
    counts = {state: 0 for state in COLOURS}
    with Image.open(shot) as image:
        for count, colour in image.convert("RGB").getcolors(maxcolors=1 << 20) or []:
            for state, wanted in COLOURS.items():
                if colour == wanted:
                    counts[state] += count
    square = min(counts.values())
    assert square > 200, counts
    assert counts["PASS"] > counts["FAIL"] > counts["FLAKY"] and counts["KNOWN"] > counts["FLAKY"], counts
