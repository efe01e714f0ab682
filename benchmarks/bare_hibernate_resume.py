"""The yardstick for `lab scenario hibernate-resume`: the same guest work, done by a bare QEMU + pexpect script.

Same image, same QEMU arguments (built with the lab's MachineSpec the way a run builds them, or copied
from a run's machine-boot1.json), same guest commands: boot, mark (a token in /run and a sleeping
marker process), `echo disk > /sys/power/state`, a second QEMU on the same disk, check. Nothing else:
no PSCI layer, no QMP events kept, no witnesses, no reports. What the lab costs is the difference.

Run: .venv/bin/python benchmarks/bare_hibernate_resume.py [--machine-json RUN/machine-boot1.json]
Prints one JSON object: each phase's wall seconds, what the check found, when QEMU was first launched
(seconds since the epoch) and the machine it booted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pexpect
from pexpect.fdpexpect import fdspawn

from lab.image.guest_image import GuestImage
from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore
from lab.machine.spec import Disk, MachineSpec, free_local_port, unix_channels
from lab.scenario.model import find_scenario

CONNECT_SECONDS = 15
BOOT_SECONDS = 120
HIBERNATE_SECONDS = 180
COMMAND_SECONDS = 30


def connect(path: Path) -> socket.socket:
    """QEMU's chardev sockets appear a moment after it starts."""
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            peer.connect(str(path))
            return peer
        except OSError:
            peer.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Qmp:
    """Just enough QMP to start the paused guest and to quit: one line per command, events skipped."""

    def __init__(self, path: Path) -> None:
        self.stream = connect(path).makefile("rw", encoding="utf-8")
        self.stream.readline()
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> None:
        """Send a command and read up to its answer (QEMU may hang up instead of answering `quit`)."""
        self.stream.write(json.dumps({"execute": command}) + "\n")
        self.stream.flush()
        while (line := self.stream.readline()) and "return" not in (reply := json.loads(line)):
            if "error" in reply:
                raise SystemExit(f"QMP {command}: {reply['error']}")


def spec_for(machine_json: str | None, image: GuestImage, disk: Path) -> MachineSpec:
    """The run's own machine, or one built as `Guest.spec` builds it for the default arm64 image on TCG."""
    if machine_json:
        spec = MachineSpec.from_json(json.loads(Path(machine_json).read_text()))
        port = free_local_port() if spec.ssh_port is not None else None
        return dataclasses.replace(spec, disks=(Disk(disk),), ssh_port=port)
    scenario = find_scenario("hibernate-resume")
    return MachineSpec(
        arch=image.qemu_arch, kernel=image.kernel, initrd=image.initramfs, append=f"{image.kernel_append} lab.swap=vda",
        disks=(Disk(disk),), accel="tcg", memory_mib=scenario.memory_mib, cpus=scenario.cpus, gdbstub=True,
        ssh_port=free_local_port() if image.ssh is not None else None,
    )


class Boot:
    """One QEMU started paused, its console on pexpect, then let run."""

    def __init__(self, spec: MachineSpec, work: Path, name: str) -> None:
        (work / name).mkdir()
        self.qemu = subprocess.Popen(spec.command(unix_channels(work / name), str(work / f"console-{name}.log")),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.qmp = Qmp(work / name / "qmp.sock")
        self.socket = connect(work / name / "console.sock")
        self.console = fdspawn(self.socket.fileno(), encoding="utf-8", codec_errors="replace")
        self.qmp.execute("cont")

    def run(self, command: str) -> dict[str, str]:
        """Type a command whose output ends with a marker its echo cannot match; its `key=value` lines."""
        self.console.sendline(f"{command}; echo DONE''-DONE")
        self.console.expect("DONE-DONE", timeout=COMMAND_SECONDS)
        return dict(re.findall(r"^(\w+)=(.*?)\r?$", self.console.before, re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine-json", help="a lab run's machine-boot1.json: boot exactly that machine")
    parser.add_argument("--work", help="a directory to keep the disk and console logs in (default: a temporary one)")
    args = parser.parse_args()
    image = ImageStore().latest(DEFAULT_IMAGE["arm64"])
    if image is None:
        raise SystemExit("build the default image first: ./bootstrap")
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bare-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        disk = work / "swap.raw"
        spec = spec_for(args.machine_json, image, disk).resolved()
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), f"{image.manifest['swap_size_mib']}M"],
                       check=True)

        started = time.monotonic()
        launched = time.time()
        boot = Boot(spec, work, "boot1")
        boot.console.expect("lab-init: ready", timeout=BOOT_SECONDS)
        phases["boot1"] = time.monotonic() - started

        mark = time.monotonic()
        token, seconds = secrets.token_hex(16), 2_000_000_000 + secrets.randbelow(100_000_000)
        planted = boot.run(f"echo {token} > /run/lab-token; sleep {seconds} </dev/null >/dev/null 2>&1 & "
                           "echo marker=$!; echo boot_id=$(cat /proc/sys/kernel/random/boot_id)")
        phases["mark"] = time.monotonic() - mark

        hibernate = time.monotonic()
        boot.console.sendline("echo disk > /sys/power/state")
        boot.console.expect(pexpect.EOF, timeout=HIBERNATE_SECONDS)
        boot.qemu.wait(HIBERNATE_SECONDS)
        boot.socket.close()
        phases["hibernate"] = time.monotonic() - hibernate

        resumed = time.monotonic()
        boot = Boot(spec, work, "boot2")
        boot.console.expect("PM: hibernation: hibernation exit", timeout=BOOT_SECONDS)
        phases["boot2"] = time.monotonic() - resumed

        check = time.monotonic()
        found = boot.run(f"echo token=$(cat /run/lab-token); echo marker=$(tr '\\0' ' ' < /proc/{planted['marker']}"
                         "/cmdline); echo boot_id=$(cat /proc/sys/kernel/random/boot_id)")
        phases["check"] = time.monotonic() - check
        boot.qmp.execute("quit")
        boot.qemu.wait(CONNECT_SECONDS)
    passed = (found.get("token") == token and found.get("marker", "").split() == ["sleep", str(seconds)]
              and found.get("boot_id") == planted.get("boot_id"))
    json.dump({"passed": passed, "seconds": time.monotonic() - started, "phases": phases,
               "qemu_launched": launched, "found": found, "machine": spec.to_json()}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
