"""The OFF2 probe: a bare-metal program that powers off as a hibernating guest does, booted on a QEMU build
to learn whether the build reports SYSTEM_OFF2 on QMP. Its logic is checked through the lab's PSCI layer
(which records every call it made), its answer on Debian's QEMU, under load, and its one-line failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.errors import SetupError
from lab.machine.bare_metal import HEADER_BYTES, LOAD_ADDRESS
from lab.machine.process import Machine
from lab.machine.spec import MachineSpec
from lab.psci.firmware import PsciPersonality
from lab.psci.layer import PsciLayer
from lab.psci.symbols import ConduitSites
from lab.qemu.off2_probe import CONDUIT_WORD, ERROR_LINE_CHARS, probe_program, reports_off2
from lab.rundir import BootFiles
from lab.vocabulary import HIBERNATE_OFF, PSCI_FEATURES, PSCI_SYSTEM_OFF, PSCI_SYSTEM_OFF2_64

pytestmark = pytest.mark.qemu


def _debian_qemu() -> Path:
    found = shutil.which("qemu-system-aarch64")
    if found is None:
        pytest.fail("qemu-system-aarch64 is missing: ./bootstrap installs it")
    return Path(found)


def _calls_through_the_layer(tmp_path: Path, personality: PsciPersonality) -> list[tuple[int, int, int]]:
    tmp_path.mkdir(parents=True)
    program = tmp_path / "probe.img"
    program.write_bytes(probe_program())
    spec = MachineSpec(arch="aarch64", kernel=program, initrd=None, append="", memory_mib=64, cpus=1, gdbstub=True)
    sites = ConduitSites(kernel_sha256="", hvc=LOAD_ADDRESS + HEADER_BYTES + 4 * CONDUIT_WORD, smc=None)
    with Machine(spec, BootFiles(tmp_path, "probe"), time.monotonic()) as machine:
        machine.launch()
        layer = PsciLayer(machine.gdb_socket, sites, personality, tmp_path / "calls.jsonl")
        try:
            layer.attach(timeout=10)
            layer.resume()
            machine.qmp.wait_event("SHUTDOWN", 60)
        finally:
            layer.close()
    return [(call.function_id, *call.args[:2]) for call in layer.calls]


@pytest.mark.guest
def test_the_probe_calls_system_off2_only_where_psci_features_offers_it(tmp_path: Path) -> None:
    offered = _calls_through_the_layer(tmp_path / "kvm", PsciPersonality.KVM)
    assert offered == [(PSCI_FEATURES, PSCI_SYSTEM_OFF2_64, 0), (PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 0)]
    refused = _calls_through_the_layer(tmp_path / "none", PsciPersonality.NONE)
    assert [call[0] for call in refused] == [PSCI_FEATURES, PSCI_SYSTEM_OFF]


def test_debian_qemu_does_not_report_off2() -> None:
    assert reports_off2(_debian_qemu()) is False


def test_repeated_probes_on_a_loaded_machine_all_answer() -> None:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: reports_off2(_debian_qemu()), range(12)))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(30)
    assert answers == [False] * 12


def test_a_failed_probe_says_one_short_line_and_keeps_what_qemu_said(tmp_path: Path) -> None:
    """A "QEMU" that prints 150 KB on one line and exits: the line is cut, the output kept."""
    garbage = tmp_path / "garbage-qemu"
    garbage.write_text("#!/bin/sh\nhead -c 150000 /dev/zero | tr '\\0' x >&2\nexit 3\n")
    garbage.chmod(0o755)
    with pytest.raises(SetupError) as caught:
        reports_off2(garbage)
    message = str(caught.value)
    assert message.startswith(f"cannot ask {garbage} whether it reports SYSTEM_OFF2: xxx"), message[:300]
    assert len(message.splitlines()) == 1 and len(message) < ERROR_LINE_CHARS + 300, len(message)
    kept = Path(message.rsplit("(the probe's files: ", 1)[1].rstrip(")"))
    assert sum(path.read_text(errors="replace").count("x") for path in kept.glob("qemu-*.stderr")) >= 150000
    shutil.rmtree(kept)
