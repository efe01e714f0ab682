"""The lab's own QEMU against Debian's, side by side: the build, and what a guest costs on each setup.

Setups, interleaved round by round so that the machine's load falls on all alike:
  patched        the lab's QEMU with the SYSTEM_OFF2 series: QEMU's own PSCI v1.3, no layer
  debian+layer   Debian's QEMU with the lab's PSCI layer on the gdbstub (the default on TCG)
  debian         Debian's QEMU alone: PSCI v1.1, plain SYSTEM_OFF (hibernate-resume then fails its
                 hibernate-off2 expectation, which does not change its timing)

For each: boot to `lab-init: ready`, and the wall time of `hibernate-resume`. The build is timed warm
(a cached build: what every run but the first pays) and, with --cold, from nothing into a fresh cache.

Run: .venv/bin/python benchmarks/qemu_setups.py [--rounds N] [--cold]
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec
from lab.psci.attach import psci_attacher
from lab.psci.firmware import PsciPersonality
from lab.qemu.builder import build_qemu
from lab.rundir import RunDirectory
from lab.scenario.model import find_scenario
from lab.scenario.run import RunOptions, run_scenario
from lab.vocabulary import CONSOLE_PATTERNS, ConsoleMark

SETUPS = {"patched": ("patched", None), "debian+layer": (None, "kvm"), "debian": (None, "qemu")}
LAB = Path(sys.executable).parent / "lab"


def boot_to_ready(qemu: Path | None, layer: bool) -> float:
    """Seconds from launching QEMU to the guest init's `ready` line."""
    image = ImageStore().latest(DEFAULT_IMAGE["arm64"])
    assert image is not None, "build the default image first: ./bootstrap"
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        disk = work / "swap.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "256M"], check=True)
        spec = MachineSpec(arch="aarch64", kernel=image.kernel, initrd=image.initramfs, append=image.kernel_append,
                           disks=(Disk(disk),), qemu=qemu, gdbstub=layer)
        started = time.monotonic()
        session = None
        with Machine(spec, RunDirectory(work).boot("bench"), started) as machine:
            machine.launch()
            if layer:
                session = psci_attacher(PsciPersonality.KVM, image).attach(machine, work / "psci.jsonl")
            else:
                machine.resume()
            machine.console.expect(CONSOLE_PATTERNS[ConsoleMark.READY].pattern, 180, "ready")
            seconds = time.monotonic() - started
        if session is not None:
            session.close()
        return seconds


def hibernate_resume(qemu: str | None, psci: str | None) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as scratch:
        result = run_scenario(find_scenario("hibernate-resume"),
                              RunOptions(run_dir=Path(scratch) / "run", qemu=qemu, psci=psci), [])
        return result.seconds, result.verdict.power_offs[0].kind if result.verdict.power_offs else "none"


def timed_build(cache: str | None) -> float:
    env = {**os.environ, **({"LAB_CACHE_DIR": cache} if cache else {})}
    started = time.monotonic()
    subprocess.run([str(LAB), "qemu", "build"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def spread(samples: list[float]) -> str:
    return f"median {statistics.median(samples):6.1f}s  (min {min(samples):.1f}, max {max(samples):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also build from nothing into a fresh cache (slow)")
    args = parser.parse_args()
    patched = build_qemu("native", say=lambda line: None)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"lab qemu build, warm (cached): {timed_build(None):.2f}s")
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="lab-cold-") as cache:
            print(f"lab qemu build, cold (fetch, verify, unpack, patch, configure, compile): {timed_build(cache):.0f}s")
    boots: dict[str, list[float]] = {name: [] for name in SETUPS}
    runs: dict[str, list[float]] = {name: [] for name in SETUPS}
    classes: dict[str, set[str]] = {name: set() for name in SETUPS}
    for _ in range(args.rounds):
        for name, (qemu, psci) in SETUPS.items():
            boots[name].append(boot_to_ready(patched if qemu else None, psci == "kvm"))
            seconds, kind = hibernate_resume(qemu, psci)
            runs[name].append(seconds)
            classes[name].add(kind)
    print(f"\n{args.rounds} rounds, setups interleaved; load average at end: {os.getloadavg()[0]:.1f}")
    print(f"{'setup':<14} {'boot to ready':<44} {'hibernate-resume (wall)':<44} class")
    for name in SETUPS:
        print(f"{name:<14} {spread(boots[name]):<44} {spread(runs[name]):<44} {', '.join(sorted(classes[name]))}")


if __name__ == "__main__":
    main()
