"""The kernel's PM lines, parsed from consoles recorded by real `lab scenario hibernate-resume` runs.

`data/hibernate-resume-default`: Debian's cloud-arm64 7.2 kernel (no CONFIG_PM_SLEEP_DEBUG: no device
phases). `data/hibernate-resume-generic`: Debian's generic arm64 7.2 kernel (`--kernel-deb
linux-image-arm64=7.2.13-1`), where `pm_debug_messages` and `pm_print_times` time every device phase
and callback. Both booted by the lab with its PM debugging on.
"""

from pathlib import Path

import pytest

from lab.judge.kernel_phases import PhaseKind, parse_kernel_phases
from lab.judge.phase_summary import kernel_phases, summarize, summarize_runs
from lab.rundir import read_console_file

DATA = Path(__file__).parent / "data"


def _console(kernel: str, boot: str) -> list[str]:
    return read_console_file(DATA / f"hibernate-resume-{kernel}" / f"console-{boot}.log")


def _kinds(phases):
    return [phase.kind for phase in phases]


@pytest.mark.parametrize("kernel", ["default", "generic"])
def test_the_hibernating_boot_freezes_snapshots_writes_and_powers_down(kernel):
    boot = parse_kernel_phases(_console(kernel, "boot1"))
    kinds = _kinds(boot.phases)
    assert kinds.index(PhaseKind.FREEZE) < kinds.index(PhaseKind.SNAPSHOT) < kinds.index(PhaseKind.IMAGE_WRITE)
    write = next(p for p in boot.phases if p.kind is PhaseKind.IMAGE_WRITE)
    assert write.kbytes > 0 and write.mb_per_s > 0 and write.seconds > 0
    assert 0 < write.detail["compressed_kbytes"] < write.kbytes
    assert kinds[-1] is PhaseKind.POWER_DOWN
    assert not boot.failed()


@pytest.mark.parametrize("kernel", ["default", "generic"])
def test_the_resuming_boot_reads_restores_and_thaws(kernel):
    boot = parse_kernel_phases(_console(kernel, "boot2"))
    kinds = _kinds(boot.phases)
    assert kinds.index(PhaseKind.IMAGE_READ) < kinds.index(PhaseKind.RESTORE) < kinds.index(PhaseKind.THAW)
    read = next(p for p in boot.phases if p.kind is PhaseKind.IMAGE_READ)
    assert read.kbytes > 0 and read.mb_per_s > 0
    restore = next(p for p in boot.phases if p.kind is PhaseKind.RESTORE)
    assert restore.seconds is not None and 0 < restore.seconds < 30


def test_a_debug_kernel_times_each_device_phase_and_callback():
    hibernating = parse_kernel_phases(_console("generic", "boot1"))
    names = [p.name for p in hibernating.phases if p.kind is PhaseKind.DEVICES]
    assert names[:3] == ["devices: freeze", "devices: late freeze", "devices: noirq freeze"]
    assert "devices: thaw" in names
    assert hibernating.slowest_callbacks, "pm_print_times was on: callbacks are timed"
    usecs = [c.usecs for c in hibernating.slowest_callbacks]
    assert usecs == sorted(usecs, reverse=True)
    assert {c.phase for c in hibernating.slowest_callbacks} <= {"freeze", "late freeze", "noirq freeze",
                                                                 "noirq thaw", "early thaw", "thaw"}
    resuming = parse_kernel_phases(_console("generic", "boot2"))
    assert "devices: restore" in [p.name for p in resuming.phases]


def test_a_cloud_kernel_shows_no_device_phases():
    boot = parse_kernel_phases(_console("default", "boot1"))
    assert PhaseKind.DEVICES not in _kinds(boot.phases)
    assert boot.slowest_callbacks == []


def test_a_failed_freeze_and_an_aborted_device_phase_are_failures():
    lines = ["[   10.000000] Freezing user space processes",
             "[   30.004000] Freezing user space processes failed after 20.004 seconds (1 tasks refusing to freeze):",
             "[   31.000000] PM: freeze of devices aborted after 3.100 msecs"]
    failed = parse_kernel_phases(lines).failed()
    assert [(p.name, p.seconds) for p in failed] == [("freeze user space", 20.004), ("devices: freeze", 0.0031)]


def test_repeated_phases_are_summarised_min_median_max():
    boots = [{"phases": [{"name": "image write", "seconds": s, "mb_per_s": r}]}
             for s, r in ((3.0, 20.0), (1.0, 60.0), (2.0, 30.0))]
    assert summarize(boots)["image write"] == {
        "seconds": {"count": 3, "min": 1.0, "median": 2.0, "max": 3.0},
        "mb_per_s": {"count": 3, "min": 20.0, "median": 30.0, "max": 60.0}}


def test_kernel_phases_of_a_run_cover_its_boots_and_their_spread():
    consoles = {"boot1": _console("default", "boot1"), "boot2": _console("default", "boot2"), "boot3": []}
    phases = kernel_phases(consoles)
    assert set(phases["boots"]) == {"boot1", "boot2"}
    assert phases["summary"]["freeze user space"]["seconds"]["count"] == 2


def test_a_matrix_summarises_each_scenario_over_its_runs():
    def run(scenario, seconds):
        phases = {"boots": {"boot1": {"phases": [{"name": "image write", "seconds": seconds}]}}}
        return {"scenario": {"name": scenario}, "observations": {"kernel_phases": phases}}

    summary = summarize_runs([run("a", 1.0), run("a", 3.0), run("b", 2.0), {"scenario": {"name": "c"}}])
    assert summary["a"]["image write"]["seconds"] == {"count": 2, "min": 1.0, "median": 2.0, "max": 3.0}
    assert summary["b"]["image write"]["seconds"]["count"] == 1 and summary["c"] == {}
