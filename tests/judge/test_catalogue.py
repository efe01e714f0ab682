"""The kernel log catalogue against consoles recorded by real runs (see data/): an Oops while resuming
(Debian's 6.12.117 under TCG), a swap area too small for the image (8 MiB), and clean runs."""

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.judge.catalogue import Severity, catalogue, load_catalogue, match_boot, match_consoles
from lab.judge.observations import Observations
from lab.judge.verdict import judge
from lab.rundir import read_console_file

DATA = Path(__file__).parent / "data"


def _console(name: str, boot: str) -> list[str]:
    return read_console_file(DATA / name / f"console-{boot}.log")


def test_the_6_12_117_oops_is_a_critical_finding_with_advice():
    findings = match_boot("boot2", _console("oops-6.12.117", "boot2"), catalogue())
    assert findings[0].label == "kernel Oops" and findings[0].severity is Severity.CRITICAL
    assert "Internal error: Oops" in findings[0].line and findings[0].advice
    assert "kernel WARN" in {f.label for f in findings}


def test_a_too_small_swap_area_is_named_and_leads_the_failed_verdict():
    consoles = {"boot1": _console("small-swap", "boot1")}
    (finding,) = match_consoles(consoles, catalogue())
    assert (finding.label, finding.severity) == ("not enough swap", Severity.CRITICAL)
    assert "Image saving failed: -28" in finding.line
    verdict = judge(Observations(), consoles, "timed out after 180.0s waiting for QEMU to exit")
    assert verdict.reason.startswith("boot1: not enough swap [critical]: ")
    assert verdict.reason.endswith("; timed out after 180.0s waiting for QEMU to exit")
    assert verdict.to_json()["findings"][0]["severity"] == "critical"


@pytest.mark.parametrize("name", ["hibernate-resume-default", "hibernate-resume-generic"])
def test_clean_runs_have_no_findings_and_a_passing_verdict_keeps_its_reason(name):
    consoles = {boot: _console(name, boot) for boot in ("boot1", "boot2")}
    assert match_consoles(consoles, catalogue()) == []


def test_a_kernel_message_in_the_middle_of_a_userspace_line_is_found():
    """Recorded from a system guest whose command line named a stale resume_offset: initramfs-tools printed
    "Begin: Running /scripts/local-premount ... " and the kernel's refusal landed on the same line."""
    consoles = {"boot2": _console("stale-resume-offset", "boot2")}
    (finding,) = match_consoles(consoles, catalogue(), resuming={"boot2"})
    assert finding.label == "image not found"
    assert finding.line == "[   33.245745] PM: Image not found (code -22)"


def test_image_not_found_is_no_finding_on_a_boot_expected_fresh():
    """With pm_debug_messages, every fresh boot that names a resume device logs "Image not found"."""
    consoles = {"boot2": _console("stale-resume-offset", "boot2")}
    assert match_consoles(consoles, catalogue(), resuming=set()) == []


def test_the_lab_s_own_echoed_commands_never_count_as_the_kernel_s():
    assert match_boot("boot1", ["~ # echo 'Kernel panic - not syncing' Oops BUG: x"], catalogue()) == []


def test_a_user_catalogue_adds_entries(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("entries:\n  - {label: slow disk, pattern: 'virtio_blk', severity: low, advice: Look.}\n")
    findings = match_boot("boot1", _console("small-swap", "boot1"), catalogue(mine))
    assert {"slow disk", "not enough swap"} <= {f.label for f in findings}
    assert next(f for f in findings if f.label == "slow disk").source == "mine.yaml:2"


@pytest.mark.parametrize(("text", "says"), [
    ("entries:\n  - {label: x, pattern: 'a', severity: fatal, advice: y}\n", "severity: 'fatal' is not one of"),
    ("entries:\n  - {label: x, pattern: '(', severity: low, advice: y}\n", "not a regular expression"),
    ("entries:\n  - {label: x, pattern: 'a', severity: low}\n", "'advice' is a required property"),
    ("entries: []\n", "entries"),
])
def test_a_catalogue_that_does_not_validate_is_one_line_naming_file_and_line(tmp_path, text, says):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(UsageError) as raised:
        load_catalogue(bad)
    message = str(raised.value)
    assert message.startswith(f"{bad}:") and "\n" not in message
    assert says.split(":")[0] in message
