"""FAIL is the guest's behaviour, ERROR the lab's or its infrastructure's; `lab bisect`'s version range."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab.errors import ChannelError, HostLost, LabError, RunDirectoryFull, SetupError, UsageError, WaitTimeout
from lab.fleet.bisect import between
from lab.judge.observations import KernelTroubleObservation, Observations
from lab.judge.verdict import judge
from lab.results.record import Status

OOPS = "[   70.3] Internal error: Oops: 0000000096000004 [#1] SMP"
SERVED = ["6.1.176-1", "6.12.117-1", "7.2.12-1", "7.2.13-1"]


@pytest.mark.parametrize(("error", "status"), [
    (HostLost("lost the connection to host h1"), "ERROR"),
    (RunDirectoryFull(OSError(28, "No space left on device")), "ERROR"),
    (WaitTimeout("boot1 to become ready", 1.0), "FAIL"),
    (ChannelError("the guest's console closed"), "FAIL"),
])
def test_a_run_stopped_by_the_lab_is_an_error_and_one_stopped_by_the_guest_a_failure(error: LabError,
                                                                                     status: str) -> None:
    verdict = judge(Observations(), {}, str(error), lab_fault=error.lab_fault)
    assert verdict.status == status and verdict.reason == str(error)
    assert Status(verdict.status).bisect_exit == (125 if status == "ERROR" else 1)


def test_kernel_trouble_is_the_guest_s_fault_even_when_the_host_then_went_away() -> None:
    trouble = KernelTroubleObservation(step_line=5, step="boot", boot="boot1", line=OOPS, waiting_for="ready",
                                       quiet_seconds=5.0, seen_at=70.3, stopped_at=75.4)
    verdict = judge(Observations(kernel_troubles=[trouble]), {"boot1": [OOPS]}, "lost the connection to host h1",
                    lab_fault=True)
    assert verdict.status == "FAIL"


def test_set_up_errors_are_the_lab_s_and_usage_errors_are_not_a_run_at_all() -> None:
    assert SetupError("no QEMU").lab_fault and not UsageError("no such scenario").lab_fault
    assert judge(Observations(), {}, "no QEMU", set_up_failed=True).status == "ERROR"
    assert [Status(s).bisect_exit for s in ("PASS", "FAIL", "ERROR")] == [0, 1, 125]


def test_bisect_spans_served_versions_in_debian_order_either_way() -> None:
    assert between(SERVED, "6.12.117-1", "7.2.13-1") == ["6.12.117-1", "7.2.12-1", "7.2.13-1"]
    assert between(SERVED, "7.2.13-1", "6.1.176-1") == ["7.2.13-1", "7.2.12-1", "6.12.117-1", "6.1.176-1"]
    for good, bad, words in (("7.2.13-1", "7.3-1", "--bad 7.3-1: not a version the archive serves"),
                             ("7.2.13-1", "7.2.13-1", "the same version")):
        with pytest.raises(UsageError, match=words):
            between(SERVED, good, bad)


def test_lab_bisect_refuses_a_version_the_archive_does_not_serve_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "lab.cli", "bisect", "hibernate-resume", "--good", "7.2.13-1",
                           "--bad", "0.1-1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("lab: error: --bad 0.1-1: not a version the archive serves (")
    assert "7.2.13-1" in done.stderr
