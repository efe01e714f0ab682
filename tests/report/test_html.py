"""report.html from a recorded run: the timeline carries the witnesses' marks, links resolve, pages are well-formed.

Well-formed is checked the way a browser reads a page, without one: html5lib implements the HTML5
parsing algorithm and, strict, stops at the first parse error; the inline SVG must also be XML.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import html5lib
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
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _assert_well_formed(path: Path) -> None:
    """A strict HTML5 parse of the bytes as written (so the declared charset counts), and the SVG as XML."""
    parser = html5lib.HTMLParser(strict=True)
    parser.parse(path.read_bytes())
    assert parser.errors == []
    assert parser.documentEncoding == "utf-8"
    for svg in re.findall(r"<svg\b.*?</svg>", path.read_text(encoding="utf-8"), re.DOTALL):
        root = ElementTree.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert root.findall(".//{http://www.w3.org/2000/svg}text")


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
    events = write_html_report(RunDirectory(run_dir)).read_text()
    assert "SYSTEM_OFF2_64(0x0, 0x0, 0x0) on vCPU 0 at guest +43.156s: power-off</code>" in events, \
        "a call that did not return has no response to show"


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
    result["scenario"]["description"] = "half a surrogate pair: \ud83d"
    (run_dir / "result.json").write_text(json.dumps(result))
    report = write_html_report(RunDirectory(run_dir))
    html = report.read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "half a surrogate pair: \ufffd" in html
    _assert_well_formed(report)


def test_guest_console_text_is_escaped_even_when_it_is_not_utf8(run_dir: Path) -> None:
    guest = b'[   17.100000] reboot: Power down <script>alert("x")</script> & \'q\' \xff\xfe \x1b[0m\x00</svg>\n'
    with (run_dir / "console-boot1.log").open("ab") as console:
        console.write(guest)
    report = write_html_report(RunDirectory(run_dir))
    html = report.read_text(encoding="utf-8")
    assert "<script>" not in html
    assert html.count("</svg>") == 1, "the guest's </svg> must not close the timeline"
    shown = ("reboot: Power down &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39; \ufffd\ufffd "
             "\u241b[0m\u2400&lt;/svg&gt;")
    assert html.count(shown) == 2, "in the timeline's hover text and in the witness events table"
    _assert_well_formed(report)


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


def test_pages_are_well_formed_html5_with_well_formed_svg(run_dir: Path, tmp_path: Path) -> None:
    unfinished = Path(shutil.copytree(RECORDED_RUN, tmp_path / "unfinished"))
    (unfinished / "result.json").unlink()
    pages = [write_html_report(RunDirectory(each)) for each in (run_dir, unfinished)]
    pages.append(write_matrix_report([RunDirectory(run_dir), RunDirectory(unfinished)], tmp_path / "matrix.html"))
    for page in pages:
        _assert_well_formed(page)


def test_kernel_phases_are_a_lane_and_findings_a_table(run_dir: Path) -> None:
    """The recorded run's own consoles, read into kernel phases and matched against the catalogue."""
    from lab.judge.catalogue import catalogue, match_consoles
    from lab.judge.phase_summary import kernel_phases

    runs = RunDirectory(run_dir)
    consoles = {boot.name: boot.read_console() for boot in runs.boots()}
    result = json.loads(runs.result.read_text())
    result["observations"]["kernel_phases"] = kernel_phases(consoles)
    result["verdict"]["findings"] = [f.to_json() for f in match_consoles(consoles, catalogue())]
    runs.result.write_text(json.dumps(result))
    page = _parse(write_html_report(runs))
    assert "kernel PM" in page.svg_texts
    marks = " | ".join(page.svg_texts)
    assert "image write 6.98 MB/s" in marks and "image read 5.76 MB/s" in marks and "restore" in marks
    text = " ".join(page.texts)
    assert "Kernel log findings" in text and "kernel panic" in text and "sysrq triggered crash" in text
    _assert_well_formed(runs.html)
