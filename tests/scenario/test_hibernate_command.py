"""How the guest is told to hibernate: sysfs, or systemd with a limit that follows the host's patience."""

from __future__ import annotations

import re

from lab.scenario.model import find_scenario
from lab.scenario.steps import SYSTEMD_SLEEP_SECONDS, SYSTEMD_SLEEP_UNFINISHED, hibernate_command


def _limit(command: str) -> int:
    (limit,) = {int(seconds) for seconds in re.findall(r"-gt (\d+) \]", command)}
    return limit


def test_systemd_gives_up_later_on_a_slower_host_and_says_why() -> None:
    paths = find_scenario("system-hibernate-resume").hibernation
    here, emulated = hibernate_command(paths), hibernate_command(paths, patience=4.0)
    assert _limit(here) == SYSTEMD_SLEEP_SECONDS and _limit(emulated) == 4 * SYSTEMD_SLEEP_SECONDS
    assert f"not finished {4 * SYSTEMD_SLEEP_SECONDS}s after systemctl hibernate" in emulated
    assert f"exit {SYSTEMD_SLEEP_UNFINISHED}\n" in emulated and "systemctl hibernate || exit $?" in emulated


def test_sysfs_is_one_echo_whatever_the_patience() -> None:
    paths = find_scenario("hibernate-resume").hibernation
    assert hibernate_command(paths, patience=4.0) == hibernate_command(paths) == "echo disk > /sys/power/state"
