"""Whether a QEMU build reports SYSTEM_OFF2 power-offs on QMP, asked of the build by booting a probe.

The lab's series reports SYSTEM_OFF2 exactly as x86 QEMU reports ACPI S4: `SUSPEND_DISK`, then
`SHUTDOWN` (reason `guest-shutdown`). Nothing in the QMP schema says a build does so, so the lab asks
the way a guest would: an 18-instruction program, booted as an arm64 Image under TCG in the lab's own
Machine (the one launch path), asks PSCI_FEATURES for SYSTEM_OFF2. If the build's PSCI offers it, the
program powers off with SYSTEM_OFF2(HIBERNATE_OFF, 0), else with SYSTEM_OFF. A build reports OFF2 when
QMP sees `SUSPEND_DISK` before `SHUTDOWN`; a stock build sees the plain SYSTEM_OFF, so only `SHUTDOWN`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from lab.errors import ChannelError, MachineError, SetupError, WaitTimeout
from lab.hosts.base import Host
from lab.hosts.local import LOCAL
from lab.machine.bare_metal import INSN_HVC_0, RET, bit_branch, branch, image, mov_imm64
from lab.machine.process import Machine
from lab.machine.spec import MachineSpec
from lab.paths import qemu_cache
from lab.rundir import BootFiles
from lab.vocabulary import HIBERNATE_OFF, PSCI_FEATURES, PSCI_SYSTEM_OFF, PSCI_SYSTEM_OFF2_64

_log = logging.getLogger(__name__)
PROBE_SECONDS = 60.0
"""Start-up to power-off is well under a second on an idle machine; a loaded or emulated host is slower."""
ERROR_LINE_CHARS = 200
"""How much of QEMU's output an error line quotes; the rest stays in the probe's directory, which the line names."""
SIGN_BIT = 63


CONDUIT_WORD = 0
"""The program's one `hvc #0` (then `ret`), which every call branches to: one site for a PSCI layer to trap."""


def probe_program() -> bytes:
    """PSCI_FEATURES(SYSTEM_OFF2_64); SYSTEM_OFF2(HIBERNATE_OFF, 0) when bit HIBERNATE_OFF of a non-negative
    answer is set; SYSTEM_OFF otherwise (or if SYSTEM_OFF2 returned); then spin."""
    code = [INSN_HVC_0, RET]
    entry = len(code)

    def call(function_id: int, *arguments: int) -> None:
        for register, value in enumerate((function_id, *arguments)):
            code.extend(mov_imm64(register, value))
        code.append(branch(4 * len(code), 4 * CONDUIT_WORD, link=True))

    call(PSCI_FEATURES, PSCI_SYSTEM_OFF2_64)
    tests = len(code)
    code.extend([0, 0])
    call(PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 0)
    plain = 4 * len(code)
    code[tests] = bit_branch(0, SIGN_BIT, 4 * tests, plain, if_set=True)
    code[tests + 1] = bit_branch(0, HIBERNATE_OFF.bit_length() - 1, 4 * (tests + 1), plain, if_set=False)
    call(PSCI_SYSTEM_OFF)
    code.append(branch(0, 0))
    return image(code, entry_word=entry)


def _probe_dir() -> Path:
    directory = qemu_cache() / "probes" / f"{os.getpid()}-{time.time_ns()}"
    directory.mkdir(parents=True)
    return directory


def _cut(line: str) -> str:
    return line if len(line) <= ERROR_LINE_CHARS else f"{line[:ERROR_LINE_CHARS]}… ({len(line)} characters)"


def reports_off2(binary: Path, loader: Path | None = None, host: Host = LOCAL) -> bool:
    """Boot the probe on `binary` (run through `loader` if given) on `host`; True when QMP saw SUSPEND_DISK
    before SHUTDOWN. A build that cannot run the probe is refused in one line naming the kept output."""
    directory = _probe_dir()
    program = directory / "off2-probe.img"
    program.write_bytes(probe_program())
    kernel = Path(host.file_for(program))
    spec = MachineSpec(arch="aarch64", kernel=kernel, initrd=None, append="", accel="tcg", memory_mib=64, cpus=1,
                       qemu=binary, loader=loader)
    files = BootFiles(directory, "off2-probe")
    try:
        with Machine(spec, files, time.monotonic(), host, trouble_quiet=None) as machine:
            machine.launch(PROBE_SECONDS)
            machine.resume()
            machine.qmp.wait_event("SHUTDOWN", PROBE_SECONDS)
            seen = [event["event"] for event in machine.qmp.events]
    except (MachineError, WaitTimeout, ChannelError) as error:
        said = files.stderr_tail() or str(error)
        raise SetupError(f"cannot ask {binary} whether it reports SYSTEM_OFF2: {_cut(said)} "
                         f"(the probe's files: {directory})") from error
    shutil.rmtree(directory, ignore_errors=True)
    _log.debug("OFF2 probe of %s on %s: QMP events %s", binary, host.name, seen)
    return "SUSPEND_DISK" in seen[:seen.index("SHUTDOWN")]
