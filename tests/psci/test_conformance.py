"""The KVM selftest's SYSTEM_OFF2 cases, issued by a bare-metal guest through the real gdbstub path.

A tiny aarch64 program (encoded here, booted by QEMU as a Linux-style Image at EL1) makes each PSCI
call through one `hvc #0` that the layer traps, and stores every x0 it gets back in RAM; the test reads
that RAM over QMP. So the answers checked are the ones the guest saw, not what PsciFirmware returned.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.deadline import wait_until
from lab.machine.bare_metal import (
    HEADER_BYTES,
    INSN_HVC_0,
    LOAD_ADDRESS,
    RAM_BASE,
    RET,
    bit_branch,
    branch,
    image,
    image_header,
    mov_imm64,
    movk,
    movz,
    str_imm,
)
from lab.machine.process import Machine
from lab.machine.spec import MachineSpec
from lab.psci.firmware import INTERNAL_FAILURE, INVALID_PARAMS, VERSION_1_3, PsciAction, PsciPersonality, to_signed
from lab.psci.layer import PsciLayer
from lab.psci.symbols import ConduitSites
from lab.rundir import RunDirectory
from lab.vocabulary import HIBERNATE_OFF, PSCI_FEATURES, PSCI_SYSTEM_OFF2, PSCI_SYSTEM_OFF2_64, PSCI_VERSION

RESULTS_ADDRESS = RAM_BASE + 0x10_0000
DONE_MAGIC = 0x600D_F00D
CONDUIT_OFFSET = HEADER_BYTES
"""The one `hvc #0` every call goes through sits right after the Image header."""

RESULTS_REGISTER = 19

Call = tuple[int, int, int]

SELFTEST_PREAMBLE: list[Call] = [
    (PSCI_VERSION, 0, 0),
    (PSCI_FEATURES, PSCI_SYSTEM_OFF2, 0),
    (PSCI_FEATURES, PSCI_SYSTEM_OFF2_64, 0),
    (PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 1),
    (PSCI_SYSTEM_OFF2_64, 0, 1),
]


def program(calls: list[Call]) -> bytes:
    """x0..x2 per call, `bl` to the conduit, store x0 to results[i]; then the done marker; then spin."""
    body = [INSN_HVC_0, RET]
    body += mov_imm64(RESULTS_REGISTER, RESULTS_ADDRESS)
    for index, (function_id, x1, x2) in enumerate(calls):
        for register, value in enumerate((function_id, x1, x2, 0)):
            body += mov_imm64(register, value)
        body.append(branch(HEADER_BYTES + 4 * len(body), CONDUIT_OFFSET, link=True))
        body.append(str_imm(0, RESULTS_REGISTER, 8 * index))
    body += mov_imm64(0, DONE_MAGIC)
    body.append(str_imm(0, RESULTS_REGISTER, 8 * len(calls)))
    body.append(branch(0, 0))
    return image(body, entry_word=2)


def test_encoders() -> None:
    assert movz(0, 0x15, 0) == 0xD28002A0
    assert movk(0, 0xC400, 16) == 0xF2B88000
    assert mov_imm64(1, 0) == [0xD2800001]
    assert str_imm(0, 19, 8) == 0xF9000660
    assert branch(0x48, 0x40, link=True) == 0x97FFFFFE
    assert branch(0, 0) == 0x14000000
    assert RET == 0xD65F03C0
    assert image_header(0x100)[0x38:0x3C] == b"ARM\x64"
    assert bit_branch(0, 63, 0x10, 0x20, if_set=True) == 0xB7F80080
    assert bit_branch(0, 0, 0x10, 0x20, if_set=False) == 0x36000080
    assert image([RET], entry_word=0)[:4] == branch(0, HEADER_BYTES).to_bytes(4, "little")


@dataclass
class BareMetalRun:
    machine: Machine
    layer: PsciLayer | None

    def results(self, count: int) -> list[int]:
        """`count` results and the done marker, read from guest RAM through the monitor."""
        dump = self.machine.qmp.execute(
            "human-monitor-command", {"command-line": f"xp /{count + 1}gx 0x{RESULTS_ADDRESS:x}"}
        )
        return [int(value, 16) for value in re.findall(r"0x([0-9a-f]{16})", dump)]

    def wait_done(self, count: int) -> list[int]:
        wait_until(lambda: self.results(count)[count] == DONE_MAGIC or None, 30, "the program's done marker")
        return [to_signed(value) for value in self.results(count)[:count]]


@contextmanager
def bare_metal(tmp_path: Path, calls: list[Call], personality: PsciPersonality | None,
               qemu: Path | None = None) -> Iterator[BareMetalRun]:
    """The program in the lab's Machine, paused, kept alive after power-off so its RAM stays readable.

    With a personality the PSCI layer answers through the gdbstub; without one QEMU's own PSCI does.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "selftest.img"
    image.write_bytes(program(calls))
    spec = MachineSpec(arch="aarch64", kernel=image, initrd=None, append="", memory_mib=256, cpus=1,
                       qemu=qemu, gdbstub=personality is not None, keep_after_shutdown=True)
    sites = ConduitSites(kernel_sha256="", hvc=LOAD_ADDRESS + CONDUIT_OFFSET, smc=None)
    with Machine(spec, RunDirectory(tmp_path).boot("selftest"), time.monotonic()) as machine:
        machine.launch()
        if personality is None:
            machine.resume()
            yield BareMetalRun(machine, None)
            return
        layer = PsciLayer(machine.gdb_socket, sites, personality, tmp_path / "calls.jsonl")
        try:
            layer.attach(timeout=10)
            layer.resume()
            yield BareMetalRun(machine, layer)
            assert layer.error is None
        finally:
            layer.close()


def selftest_table(run: BareMetalRun, calls: list[Call]) -> list[int]:
    """What the guest read back from each call, once the VM powered off after the last one."""
    run.machine.qmp.wait_event("SHUTDOWN", 30)
    return [to_signed(value) for value in run.results(len(calls))]


@pytest.mark.guest
@pytest.mark.parametrize("off_type", [HIBERNATE_OFF, 0])
def test_kvm_answers_the_selftest_and_powers_off(tmp_path: Path, off_type: int) -> None:
    calls = [*SELFTEST_PREAMBLE, (PSCI_SYSTEM_OFF2_64, off_type, 0)]
    with bare_metal(tmp_path, calls, PsciPersonality.KVM) as run:
        shutdown = run.machine.qmp.wait_event("SHUTDOWN", 30)
        assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
        results = [to_signed(value) for value in run.results(len(calls))]
        version, features32, features64, invalid_type1, invalid_type0, after_off2, done = results
        assert version >= VERSION_1_3
        assert features32 & HIBERNATE_OFF and features64 & HIBERNATE_OFF
        assert (invalid_type1, invalid_type0) == (INVALID_PARAMS, INVALID_PARAMS)
        assert (after_off2, done) == (0, 0), "the guest ran on after an accepted SYSTEM_OFF2"
        assert run.layer is not None
        assert [call.action for call in run.layer.calls] == [PsciAction.RETURN] * 5 + [PsciAction.POWER_OFF]
        assert run.layer.calls[-1].vcpu == 0


@pytest.mark.guest
def test_return_to_guest_resumes_with_internal_failure(tmp_path: Path) -> None:
    narrowed = (PSCI_SYSTEM_OFF2, (1 << 32) | HIBERNATE_OFF, 1 << 32)
    calls = [
        *SELFTEST_PREAMBLE,
        (PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 0),
        (PSCI_SYSTEM_OFF2_64, 0, 0),
        narrowed,
    ]
    with bare_metal(tmp_path, calls, PsciPersonality.RETURN_TO_GUEST) as run:
        results = run.wait_done(len(calls))
        assert results[0] >= VERSION_1_3
        assert results[1] & HIBERNATE_OFF and results[2] & HIBERNATE_OFF
        assert results[3:5] == [INVALID_PARAMS, INVALID_PARAMS]
        assert results[5:] == [INTERNAL_FAILURE] * 3
        assert not run.machine.qmp.seen("SHUTDOWN")
        assert run.layer is not None
        assert [call.response for call in run.layer.calls] == results


@pytest.mark.guest
def test_without_the_layer_answering_qemu_says_psci_1_1(tmp_path: Path) -> None:
    calls = [(PSCI_VERSION, 0, 0), (PSCI_FEATURES, PSCI_SYSTEM_OFF2_64, 0), (PSCI_SYSTEM_OFF2_64, 0, 0)]
    with bare_metal(tmp_path, calls, PsciPersonality.NONE) as run:
        assert run.wait_done(len(calls)) == [0x10001, -1, -1]
        assert run.layer is not None
        assert {call.action for call in run.layer.calls} == {PsciAction.PASS_THROUGH}
        assert [call.response for call in run.layer.calls] == [0x10001, -1, -1]


@pytest.mark.guest
@pytest.mark.parametrize("power_off", [(PSCI_SYSTEM_OFF2_64, HIBERNATE_OFF, 0), (PSCI_SYSTEM_OFF2_64, 0, 0),
                                       (PSCI_SYSTEM_OFF2, (1 << 32) | HIBERNATE_OFF, 1 << 32)],
                         ids=["hibernate-off", "type-0", "smc32-narrowed"])
def test_the_patched_qemus_own_psci_gives_the_layers_table(tmp_path: Path, power_off: Call,
                                                           patched_qemu: Path) -> None:
    """Every SYSTEM_OFF2 case of KVM's psci_test.c, answered by the patched QEMU's TCG PSCI with no layer
    attached, reads back exactly as through the layer; the power-off is reported over QMP as OFF2."""
    calls = [*SELFTEST_PREAMBLE, power_off]
    with bare_metal(tmp_path / "layer", calls, PsciPersonality.KVM) as run:
        through_layer = selftest_table(run, calls)
    with bare_metal(tmp_path / "patched", calls, None, qemu=patched_qemu) as run:
        own = selftest_table(run, calls)
        events = [e["event"] for e in run.machine.qmp.events if e["event"] in ("SUSPEND_DISK", "SHUTDOWN")]
        shutdown = run.machine.qmp.seen("SHUTDOWN")[0]["data"]
    assert own == through_layer
    assert own[0] >= VERSION_1_3 and own[1] & HIBERNATE_OFF and own[2] & HIBERNATE_OFF
    assert own[3:5] == [INVALID_PARAMS, INVALID_PARAMS]
    assert events == ["SUSPEND_DISK", "SHUTDOWN"]
    assert shutdown == {"guest": True, "reason": "guest-shutdown"}
