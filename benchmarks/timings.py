"""Print the lab's own costs on this machine: boot time with and without the PSCI layer, and
where the wall time of `hibernate-resume` goes compared to what the guest itself spends.

Run: .venv/bin/python benchmarks/timings.py [--boots N]
Figures are printed, not asserted: targets belong here, not in timed tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec
from lab.psci.attach import psci_attacher
from lab.rundir import RunDirectory
from lab.scenario.model import find_scenario
from lab.scenario.run import RunOptions, run_scenario
from lab.vocabulary import CONSOLE_PATTERNS, KERNEL_TIMESTAMP, ConsoleMark


def boot_to_ready(image, with_layer: bool) -> float:
    """Seconds from launching QEMU to the guest init's `ready` line."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        disk = work / "swap.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "256M"], check=True)
        spec = MachineSpec(arch="aarch64", kernel=image.kernel, initrd=image.initramfs,
                           append=image.kernel_append, disks=(Disk(disk),), gdbstub=with_layer)
        started = time.monotonic()
        session = None
        with Machine(spec, RunDirectory(work).boot("bench"), started) as machine:
            machine.launch()
            if with_layer:
                session = psci_attacher("kvm", image).attach(machine, work / "psci.jsonl")
            else:
                machine.resume()
            machine.console.expect(CONSOLE_PATTERNS[ConsoleMark.READY].pattern, 120, "ready")
            seconds = time.monotonic() - started
        if session is not None:
            session.close()
        return seconds


def guest_seconds(console_log: Path, start: str, end: str) -> float | None:
    """Kernel-timestamp seconds between two console lines of one boot."""
    times = {}
    for line in console_log.read_text(errors="replace").splitlines():
        match = KERNEL_TIMESTAMP.match(line)
        for name, text in (("start", start), ("end", end)):
            if text in line and match and name not in times:
                times[name] = float(match.group(1))
    return times["end"] - times["start"] if len(times) == 2 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args()
    image = ImageStore().latest(DEFAULT_IMAGE["arm64"])
    if image is None:
        raise SystemExit("build the default image first: ./bootstrap")

    print(f"boot to `lab-init: ready` ({args.boots} boots each, TCG, {image.kernel_release})")
    for with_layer in (False, True):
        samples = [boot_to_ready(image, with_layer) for _ in range(args.boots)]
        label = "with PSCI layer   " if with_layer else "without PSCI layer"
        print(f"  {label} median {statistics.median(samples):5.2f}s  "
              f"min {min(samples):5.2f}s  max {max(samples):5.2f}s")

    with tempfile.TemporaryDirectory() as scratch:
        result = run_scenario(find_scenario("hibernate-resume"), RunOptions(run_dir=Path(scratch) / "run"), [])
        run_dir = result.run_dir
        print(f"\nhibernate-resume: {result.verdict.reason}, {result.seconds:.1f}s wall")
        for phase in json.loads((run_dir / "result.json").read_text())["phases"]:
            print(f"  {phase['label'][:40]:<40} {phase['seconds']:6.2f}s")
        hibernate = guest_seconds(run_dir / "console-boot1.log", "PM: hibernation: hibernation entry",
                                  "reboot: Power down")
        resume = guest_seconds(run_dir / "console-boot2.log", "Booting Linux", "PM: hibernation: hibernation exit")
        print(f"  guest's own time: hibernate {hibernate:.2f}s (entry to power-down), "
              f"resume {resume:.2f}s (kernel start to hibernation exit)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    qemu_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak memory: lab process {peak:.0f} MiB, largest QEMU child {qemu_peak:.0f} MiB")


if __name__ == "__main__":
    main()
