"""The kernel's own PM debugging knobs (Documentation/power/basic-pm-debugging.rst), set in the guest.

`pm_debug_messages` has the PM core time each device phase; it prints at KERN_DEBUG, so the
console's loglevel must show debug lines. `pm_print_times` times each device callback; it has
no boot parameter of its own (only `initcall_debug`, which also prints every initcall), so the lab
turns it on through sysfs just before hibernating. A kernel built without CONFIG_PM_SLEEP_DEBUG
has neither: it says so once ("Unknown kernel command line parameters") and the lab reads the
phases it prints anyway. `/sys/power/pm_test` (CONFIG_PM_DEBUG) stops a hibernation at a level.
"""

from __future__ import annotations

from lab.errors import UsageError
from lab.machine.channels.shell import GuestShell

PM_DEBUG_APPEND = "pm_debug_messages loglevel=8"
INITCALL_DEBUG_APPEND = "initcall_debug"
PM_TEST_LEVELS = ("freezer", "devices", "platform", "processors", "core")
"""Where a hibernation can stop, in the order the kernel reaches them."""
NO_PM_TEST = "none"
_ENABLE_PRINT_TIMES = "if [ -w /sys/power/pm_print_times ]; then echo 1 > /sys/power/pm_print_times; fi"
_READ_PM_TEST = "cat /sys/power/pm_test 2>/dev/null || echo lab-no-pm-test"


class PmTestUnavailable(UsageError):
    """A scenario asked for a pm_test level the guest's kernel does not offer: nothing to judge."""


def kernel_debug_append(pm_debug: bool, initcall_debug: bool) -> str:
    """The kernel command-line words that make the guest's kernel time its PM phases."""
    return " ".join(([PM_DEBUG_APPEND] if pm_debug else []) + ([INITCALL_DEBUG_APPEND] if initcall_debug else []))


def enable_print_times(shell: GuestShell) -> None:
    shell.succeed(_ENABLE_PRINT_TIMES)


def parse_pm_test(text: str) -> tuple[tuple[str, ...], str | None]:
    """The levels `/sys/power/pm_test` offers and the one chosen (`[none] core … freezer`)."""
    words = text.split()
    chosen = next((word.strip("[]") for word in words if word.startswith("[")), None)
    return tuple(word.strip("[]") for word in words), chosen


def set_pm_test(shell: GuestShell, level: str) -> None:
    """Choose `level`, refusing one the guest kernel does not offer (read from the guest first)."""
    output = shell.succeed(_READ_PM_TEST).strip()
    if "lab-no-pm-test" in output:
        raise PmTestUnavailable(f"pm_test {level}: the guest kernel has no /sys/power/pm_test "
                                "(built without CONFIG_PM_DEBUG; Debian's cloud kernels are)")
    offered, _ = parse_pm_test(output)
    if level not in offered:
        raise PmTestUnavailable(f"pm_test {level}: the guest kernel offers only {', '.join(offered)}")
    shell.succeed(f"echo {level} > /sys/power/pm_test")

