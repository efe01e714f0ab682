"""The host kernel as a witness: KVM's `kvm_hvc_arm64` tracepoint records the guest's x0 on every HVC.

Stock QEMU reports SYSTEM_OFF2 exactly like SYSTEM_OFF, but the host kernel saw which one the guest
called: KVM traces each HVC with the function ID in x0 before it handles it (0xc4000015 is
SYSTEM_OFF2, 0x84000008 SYSTEM_OFF). Each traced QEMU gets a trace instance of its own
(`/sys/kernel/tracing/instances/lab-…`), filtered to that QEMU's threads, so runs side by side on one
host never read each other's calls. The instance is removed when the machine is done with it.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shlex
from dataclasses import dataclass

from lab.errors import ChannelError, SetupError, WaitTimeout
from lab.hosts.base import Host

TRACEFS = "/sys/kernel/tracing"
EVENT = "kvm/kvm_hvc_arm64"
BUFFER_KB = 8192
"""Per CPU: a guest's MMIO makes no HVCs, but its PSCI and TRNG calls do, many during boot."""
_LINE = re.compile(r"\s(?P<seconds>\d+\.\d+): kvm_hvc_arm64: HVC at 0x(?P<pc>[0-9a-f]+) "
                   r"\(r0: 0x(?P<x0>[0-9a-f]+), imm: 0x(?P<imm>[0-9a-f]+)\)")


@dataclass(frozen=True)
class HvcCall:
    """One HVC the guest made, as the host kernel traced it."""

    seconds: float
    """The host's trace clock, seconds since its boot."""
    function_id: int
    pc: int

    def as_record(self) -> dict[str, object]:
        return {"seconds": self.seconds, "function_id": f"0x{self.function_id:08x}", "pc": f"0x{self.pc:x}"}


def parse_trace(text: str) -> list[HvcCall]:
    return [HvcCall(float(m["seconds"]), int(m["x0"], 16) & 0xFFFF_FFFF, int(m["pc"], 16))
            for m in map(_LINE.search, text.splitlines()) if m]


def kvm_trace_problem(host: Host) -> str | None:
    """Why the host cannot trace KVM's HVCs, or None when it can."""
    done = host.run(["test", "-e", f"{TRACEFS}/events/{EVENT}/enable"])
    if done.returncode != 0:
        return f"no tracefs event {EVENT} under {TRACEFS} (mount tracefs; a kernel with KVM and tracing)"
    return None


class KvmTrace:
    """`kvm_hvc_arm64` for one QEMU process on a host: started once its threads exist, read after it ends."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.instance = f"{TRACEFS}/instances/lab-{secrets.token_hex(6)}"
        self._started = False

    def _shell(self, script: str, what: str) -> str:
        done = self.host.run(["sh", "-c", script])
        if done.returncode != 0:
            raise SetupError(f"{what} on host {self.host.name}: {done.last_error_line()}")
        return done.text()

    def start(self, pid: int) -> None:
        """Trace the HVCs of `pid`'s threads (its vCPUs exist once QEMU is up, even while paused)."""
        instance = shlex.quote(self.instance)
        self._shell(f"mkdir {instance}", "cannot make a trace instance")
        self._started = True
        self._shell(
            f"cd {instance} && echo {BUFFER_KB} > buffer_size_kb && echo 1 > options/event-fork"
            f" && echo $(ls /proc/{pid}/task) > set_event_pid && echo 1 > events/{EVENT}/enable",
            f"cannot trace {EVENT} for pid {pid}")

    def read(self) -> list[HvcCall]:
        if not self._started:
            return []
        return parse_trace(self._shell(f"cat {shlex.quote(self.instance)}/trace", "cannot read the trace"))

    def close(self) -> None:
        """Stop tracing and remove the instance; a lost host has nothing left to remove."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(ChannelError, SetupError, WaitTimeout):
            instance = shlex.quote(self.instance)
            self.host.run(["sh", "-c", f"echo 0 > {instance}/events/{EVENT}/enable; rmdir {instance}"])
