"""What the terminal shows: guest text (Oops lines, console brackets) is printed verbatim."""

from io import StringIO
from pathlib import Path

from rich.console import Console

from lab.events import StepEnded
from lab.judge.observations import Observations
from lab.judge.verdict import judge
from lab.report.terminal import TerminalReport


def test_terminal_report_prints_guest_text_verbatim():
    out = StringIO()
    report = TerminalReport(Console(file=out, highlight=False, soft_wrap=True, color_system=None))
    reason = "boot2: kernel trouble (found: '[ 4.8] Internal error: Oops: 0000000096000006 [#1] SMP')"
    report.verdict(judge(Observations(), {}, reason), Path("/runs/x"), 1.0)
    assert "[#1] SMP" in out.getvalue()
    assert "[1.0s, /runs/x]" in out.getvalue()


def test_phase_lines_show_the_step_outcome():
    out = StringIO()
    report = TerminalReport(Console(file=out, highlight=False, soft_wrap=True, color_system=None))
    report(StepEnded(t=4.2, step="boot", line=3, label="boot expect=fresh", status="done", seconds=4.2,
                     outcome={"outcome": "fresh", "boot": "boot1"},
                     expectations=[{"name": "boot1 came up fresh", "passed": True, "detail": "", "line": 3}]))
    assert out.getvalue().split() == ["✓", "boot", "expect=fresh", "4.2s", "outcome=fresh"]


def test_a_step_that_missed_its_expectation_is_marked_failed():
    out = StringIO()
    report = TerminalReport(Console(file=out, highlight=False, soft_wrap=True, color_system=None))
    missed = {"name": "boot1 power-off", "passed": False, "line": 10,
              "detail": "hibernate ended as hibernate-off, expected hibernate-off2"}
    report(StepEnded(t=9.0, step="hibernate", line=10, label="hibernate expect=hibernate-off2", status="done",
                     seconds=4.1, outcome={"image_on_disk": True}, expectations=[missed]))
    line = out.getvalue()
    assert line.split()[0] == "✗"
    assert "hibernate ended as hibernate-off, expected hibernate-off2" in line


def test_findings_are_printed_with_their_advice_and_lead_the_reason():
    out = StringIO()
    report = TerminalReport(Console(file=out, highlight=False, soft_wrap=True, color_system=None))
    consoles = {"boot1": ["[    6.942986] PM: Image saving failed: -28"]}
    report.verdict(judge(Observations(), consoles, "it stopped"), Path("/runs/x"), 1.0)
    lines = out.getvalue().splitlines()
    assert lines[0] == "  finding boot1: not enough swap [critical]: '[    6.942986] PM: Image saving failed: -28'"
    assert lines[1].startswith("    advice: The swap area cannot hold the image")
    assert lines[2].startswith("FAIL boot1: not enough swap [critical]: ") and "; it stopped" in lines[2]


def test_the_kernel_phases_are_summed_up_in_one_line():
    from lab.judge.phase_summary import kernel_phases
    from lab.rundir import read_console_file

    data = Path(__file__).parents[1] / "judge" / "data" / "hibernate-resume-default"
    consoles = {boot: read_console_file(data / f"console-{boot}.log") for boot in ("boot1", "boot2")}
    out = StringIO()
    TerminalReport(Console(file=out, highlight=False, soft_wrap=True, color_system=None)).kernel_phases(
        kernel_phases(consoles))
    line = out.getvalue().strip()
    assert line.startswith("kernel: freeze user space 0.00s (min 0.00s, max 0.01s of 2), snapshot 0.47s")
    assert "image write 5.53s 13.57 MB/s" in line and "restore" in line
