"""report.html from a recorded run: the timeline carries the witnesses' marks, links resolve, a browser renders it."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lab.report.html import write_html_report, write_matrix_report
from lab.rundir import RunDirectory

RECORDED_RUN = Path(__file__).parent / "data" / "run-no-stale-resume"


class Page(HTMLParser):
    """What the tests look at: link targets, the SVG's texts, all visible text, and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.svg_texts: list[str] = []
        self.texts: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open.append(tag)
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            if (values.get(name) or "").startswith(("http:", "https:", "//")):
                self.external.append(values[name])

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop() != tag:
            continue

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if "svg" in self._open and self._open[-1] == "text":
            self.svg_texts.append(data)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(RECORDED_RUN, tmp_path / "run"))


def _parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def test_timeline_shows_the_witnesses_of_the_power_offs(run_dir: Path) -> None:
    page = _parse(write_html_report(RunDirectory(run_dir)))
    marks = " | ".join(page.svg_texts)
    assert "SYSTEM_OFF2_64 → power-off" in marks
    assert "SHUTDOWN guest-shutdown" in marks
    assert "SHUTDOWN guest-reset" in marks
    assert "PSCI_FEATURES(SYSTEM_OFF2) → 1" in marks
    assert "Power down" in marks and "Kernel panic" in marks
    assert "STOP" not in page.svg_texts and "RESUME" not in page.svg_texts
    text = " ".join(page.texts)
    assert "13 checks passed (boot1 hibernate-off2, boot2 crash)" in text
    assert "the guest called SYSTEM_OFF2 and the VM powered off" in text
    assert "approximate" in text


def test_links_resolve_to_every_log_and_nothing_is_external(run_dir: Path) -> None:
    page = _parse(write_html_report(RunDirectory(run_dir)))
    assert page.links
    assert all((run_dir / link).is_file() for link in page.links)
    logs = {"console-boot2.log", "qmp-boot1.jsonl", "psci-boot3.jsonl", "events.jsonl", "qemu-boot3.stderr"}
    assert logs <= set(page.links)
    assert page.external == []
    assert page.scripts == 0


def test_everything_from_the_run_is_escaped(run_dir: Path) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    result["verdict"]["status"] = "FAIL"
    result["verdict"]["reason"] = "<script>alert(1)</script> & more"
    (run_dir / "result.json").write_text(json.dumps(result))
    html = write_html_report(RunDirectory(run_dir)).read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html


def test_unfinished_run_still_gets_a_page(run_dir: Path) -> None:
    (run_dir / "result.json").unlink()
    page = _parse(write_html_report(RunDirectory(run_dir)))
    assert "INCOMPLETE" in page.texts
    assert "SYSTEM_OFF2_64 → power-off" in page.svg_texts


def test_matrix_links_each_runs_report(run_dir: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(RECORDED_RUN, tmp_path / "other"))
    (other / "result.json").unlink()
    for each in (run_dir, other):
        write_html_report(RunDirectory(each))
    out = write_matrix_report([RunDirectory(run_dir), RunDirectory(other)], tmp_path / "matrix.html")
    page = _parse(out)
    assert page.links == ["run/report.html", "other/report.html"]
    assert all((out.parent / link).is_file() for link in page.links)
    assert "1 passed, 1 did not" in page.texts


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=600, check=False)
        found = shutil.which("chromium")
    return found


@pytest.mark.needs_chromium
def test_renders_in_a_headless_browser(run_dir: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` did not install it")
    report = write_html_report(RunDirectory(run_dir))
    screenshot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--window-size=1400,2000",
             report.as_uri()],
            capture_output=True, timeout=180, check=False,
        )
    assert screenshot.is_file(), "chromium wrote no screenshot"
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 50_000, f"a {len(png)}-byte screenshot of a full report is blank or nearly so"
    assert len(set(png)) > 200
