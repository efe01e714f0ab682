"""The lab's yardstick: `lab scenario hibernate-resume` against a bare QEMU + pexpect script doing the same
guest work (benchmarks/bare_hibernate_resume.py), and the lab's warm paths: a cached image build, a
re-run of ./bootstrap, start-up (command to the first QEMU launch), and a boot with and without the PSCI layer.

Run: .venv/bin/python benchmarks/timings.py [--pairs N] [--builds N] [--layer-boots N] [--no-bootstrap]
                                            [--before CHECKOUT]
`--before` adds the lab of another checkout (`git worktree add /tmp/before COMMIT`) to every round, so
a change is measured side by side with what it changed; that lab gets a cache of its own beside the real
one (the same images and apt lists), so the two never rewrite each other's kernel symbols.

Figures are printed, not asserted: targets belong here, not in timed tests. The machine may be shared, so
the contenders take turns in rounds (each round starts with the next one), the load average is printed
with every sample, and CPU-seconds (user + system of the whole process tree, from rusage) are the figure
to trust when the machine is busy: another process slows a run's wall time, and leaves its CPU-seconds
nearly alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.image.recipe import DEFAULT_IMAGE
from lab.image.store import ImageStore
from lab.machine.process import Machine
from lab.machine.spec import Disk, MachineSpec
from lab.paths import REPO_ROOT, cache_root
from lab.psci.attach import psci_attacher
from lab.psci.firmware import PsciPersonality
from lab.rundir import RunDirectory
from lab.vocabulary import CONSOLE_PATTERNS, KERNEL_TIMESTAMP, ConsoleMark

BARE = Path(__file__).with_name("bare_hibernate_resume.py")
PHASES = ("boot1", "mark", "hibernate", "boot2", "check")
SAME_MACHINE_IGNORES = ("disks", "ssh_port", "host")
"""What differs between two runs of one machine by design: the run's own disk and forwarded port."""


@dataclass
class Sample:
    """One timed command: wall and CPU-seconds of its process tree, the load when it ended, and what it left."""

    wall: float
    cpu: float
    switches: int
    load: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lab:
    """A checkout whose `lab` is timed, and the environment it runs in."""

    name: str
    checkout: Path
    cache: Path | None = None

    def env(self) -> dict[str, str]:
        extra = {"LAB_CACHE_DIR": str(self.cache)} if self.cache is not None else {}
        return {**os.environ, "PYTHONPATH": str(self.checkout), **extra}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lab.cli", *args]


THIS = Lab("lab", REPO_ROOT)


def timed(command: list[str], lab: Lab = THIS, timeout: float = 900) -> tuple[Sample, str]:
    """Run `command`; its process tree's CPU comes from the rusage of reaped children (QEMU included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(command, cwd=lab.checkout, capture_output=True, text=True, timeout=timeout, env=lab.env())
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    switches = (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw)
    return Sample(wall, cpu, switches, os.getloadavg()[0]), done.stdout


def spread(values: list[float], unit: str = "s") -> str:
    return f"median {statistics.median(values):6.2f}{unit}  ({min(values):.2f} to {max(values):.2f})"


def guest_seconds(console_log: Path, start: str, end: str) -> float | None:
    """Kernel-timestamp seconds between two console lines of one boot: the guest's own time."""
    times = {}
    for line in console_log.read_text(errors="replace").splitlines():
        match = KERNEL_TIMESTAMP.match(line)
        for name, text in (("start", start), ("end", end)):
            if text in line and match and name not in times:
                times[name] = float(match.group(1))
    return times["end"] - times["start"] if len(times) == 2 else None


def kernel_reported(console_log: Path, pattern: str) -> float | None:
    """Seconds the guest kernel itself reports, as in `PM: hibernation: Wrote 74940 kbytes in 7.00 seconds`."""
    match = re.search(pattern, console_log.read_text(errors="replace"))
    return float(match.group(1)) if match else None


def guest_times(boot1: Path, boot2: Path) -> dict[str, float | None]:
    """The guest's own time: from boot to hibernation entry, entry to power-down, and the image's write and read."""
    return {"guest boot": guest_seconds(boot1, "Booting Linux", "Freeing unused kernel memory"),
            "guest hibernate": guest_seconds(boot1, "PM: hibernation: hibernation entry", "reboot: Power down"),
            "guest image write": kernel_reported(boot1, r"PM: hibernation: Wrote \d+ kbytes in ([\d.]+) seconds"),
            "guest image read": kernel_reported(boot2, r"PM: hibernation: Read \d+ kbytes in ([\d.]+) seconds")}


def lab_run(lab: Lab, work: Path) -> Sample:
    runs = work / "runs"
    spawned = time.time()
    sample, _ = timed(lab.command("scenario", "hibernate-resume", "--runs-dir", str(runs)), lab)
    (run_dir,) = runs.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    if result["verdict"]["status"] != "PASS":
        raise SystemExit(f"the lab's run failed: {result['verdict']['reason']} ({run_dir})")
    launched = next(e["t"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                    if e["kind"] == "qemu-launched")
    sample.details = {
        "phases": dict(zip(PHASES, (phase["seconds"] for phase in result["phases"]), strict=True)),
        "start-up": (run_dir / "qemu-boot1.cmdline").stat().st_mtime - spawned,
        "run start to QEMU": launched,
        "machine": json.loads((run_dir / "machine-boot1.json").read_text()),
        **guest_times(run_dir / "console-boot1.log", run_dir / "console-boot2.log"),
    }
    return sample


def bare_run(work: Path) -> Sample:
    spawned = time.time()
    sample, output = timed([sys.executable, str(BARE), "--work", str(work / "bare")])
    report = json.loads(output)
    if not report["passed"]:
        raise SystemExit(f"the bare script's check failed: {report['found']}")
    sample.details = {"phases": report["phases"], "start-up": report["qemu_launched"] - spawned,
                      "machine": report["machine"],
                      **guest_times(work / "bare" / "console-boot1.log", work / "bare" / "console-boot2.log")}
    return sample


def phase_values(samples: list[Sample], phase: str) -> list[float]:
    """A step's wall seconds, or the guest's own time read from the console logs where it printed both ends."""
    found = [s.details[phase] if phase in s.details else s.details["phases"][phase] for s in samples]
    return [value for value in found if value is not None]


def machine_differences(lab: dict[str, Any], bare: dict[str, Any]) -> list[str]:
    return [name for name in sorted(set(lab) | set(bare))
            if name not in SAME_MACHINE_IGNORES and lab.get(name) != bare.get(name)]


def compare(labs: list[Lab], rounds: int) -> None:
    """Every lab and the bare script once per round, each round starting with the next contender."""
    contenders: list[tuple[str, Callable[[Path], Sample]]] = [
        *((lab.name, lambda work, lab=lab: lab_run(lab, work)) for lab in labs), ("bare", bare_run)]
    names = [name for name, _ in contenders]
    print(f"\nhibernate-resume: {', '.join(names)}; {rounds} rounds, taking turns")
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(contenders)
        for name, run in contenders[shift:] + contenders[:shift]:
            with tempfile.TemporaryDirectory(prefix=f"timings-{name}-") as scratch:
                sample = run(Path(scratch))
            samples[name].append(sample)
            print(f"  round {index + 1} {name:<6} wall {sample.wall:6.2f}s  cpu {sample.cpu:6.2f}s  "
                  f"context switches {sample.switches:>6}  load {sample.load:4.1f}", flush=True)
    bare = samples["bare"]
    for lab in labs:
        differences = machine_differences(samples[lab.name][0].details["machine"], bare[0].details["machine"])
        print(f"  {lab.name} boots the same QEMU arguments as bare: "
              f"{'yes' if not differences else 'no, they differ in ' + ', '.join(differences)}")
    for label, value in (("wall", lambda s: s.wall), ("cpu", lambda s: s.cpu)):
        bare_values = [value(s) for s in bare]
        for name in names:
            values = [value(s) for s in samples[name]]
            ratios = "" if name == "bare" else (
                f"  /bare {statistics.median(values) / statistics.median(bare_values):.3f}x "
                f"(rounds: {', '.join(f'{a / b:.3f}' for a, b in zip(values, bare_values, strict=True))})")
            print(f"  {label:<4} {name:<6} {spread(values)}{ratios}")
    print(f"  {'phase (wall)':<18}" + "".join(f"{name:>36}" for name in names))
    for phase in (*PHASES, "guest boot", "guest hibernate", "guest image write", "guest image read"):
        print(f"  {phase:<18}" + "".join(f"{spread(phase_values(samples[name], phase)):>36}" for name in names))
    print(f"  {'start-up':<18}" + "".join(f"{spread([s.details['start-up'] for s in samples[name]]):>36}"
                                          for name in names))
    print("    (command to the first QEMU launch; for a lab, of which from its run's start, events.jsonl: "
          + ", ".join(f"{lab.name} {spread([s.details['run start to QEMU'] for s in samples[lab.name]])}"
                      for lab in labs) + ")")


def warm_builds(lab: Lab, count: int) -> None:
    command = lab.command("images", "build", "--arch", "arm64")
    timed(command, lab)
    samples = [timed(command, lab)[0] for _ in range(count)]
    print(f"{lab.name}: warm `lab images build --arch arm64` ({count} runs after one more): "
          f"wall {spread([s.wall for s in samples])}  cpu {spread([s.cpu for s in samples])}  "
          f"load {samples[-1].load:.1f}")


def before_lab(checkout: Path, scratch: Path) -> Lab:
    """Another checkout's lab, with a cache of its own that shares this one's images, apt lists and QEMU
    builds; its kernel symbols are found once now, untimed by the rounds, and the time it took is printed."""
    cache = scratch / "cache"
    cache.mkdir()
    for entry in cache_root().iterdir():
        if entry.name not in ("symbols", "digests.sqlite3", "resolutions"):
            (cache / entry.name).symlink_to(entry)
    lab = Lab("before", checkout.resolve(), cache)
    image = ImageStore().latest(DEFAULT_IMAGE["arm64"])
    if image is not None:
        find = ("import sys; from pathlib import Path; from lab.psci.symbols import find_conduit_sites; "
                "find_conduit_sites(Path(sys.argv[1]), Path(sys.argv[2]))")
        sample, _ = timed([sys.executable, "-c", find, str(image.kernel), str(cache / "symbols")], lab)
        print(f"before: finding the kernel's symbols (once per kernel): wall {sample.wall:.2f}s  cpu {sample.cpu:.2f}s")
    return lab


def bootstrap_rerun() -> None:
    if not (REPO_ROOT / ".venv" / "bin" / "lab").exists():
        print("./bootstrap re-run: skipped, ./bootstrap has not run in this checkout yet")
        return
    sample, _ = timed(["./bootstrap"], timeout=1800)
    print(f"./bootstrap re-run: wall {sample.wall:.2f}s  cpu {sample.cpu:.2f}s  load {sample.load:.1f}")


def boot_to_ready(image, with_layer: bool) -> tuple[float, float]:
    """Wall seconds from launching QEMU to the guest init's `ready` line, and QEMU's CPU-seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        disk = work / "swap.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "256M"], check=True)
        spec = MachineSpec(arch="aarch64", kernel=image.kernel, initrd=image.initramfs,
                           append=image.kernel_append, disks=(Disk(disk),), gdbstub=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        session = None
        with Machine(spec, RunDirectory(work).boot("bench"), started) as machine:
            machine.launch()
            if with_layer:
                session = psci_attacher(PsciPersonality.KVM, image).attach(machine, work / "psci.jsonl")
            else:
                machine.resume()
            machine.console.expect(CONSOLE_PATTERNS[ConsoleMark.READY].pattern, 300, "ready")
            seconds = time.monotonic() - started
        if session is not None:
            session.close()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def layer_boots(count: int) -> None:
    image = ImageStore().latest(DEFAULT_IMAGE["arm64"])
    if image is None:
        raise SystemExit("build the default image first: ./bootstrap")
    print(f"\nboot to `lab-init: ready` ({count} boots each, interleaved, TCG, {image.kernel_release})")
    samples: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(count):
        for with_layer in (False, True):
            samples[with_layer].append(boot_to_ready(image, with_layer))
    for with_layer, found in samples.items():
        label = "with PSCI layer   " if with_layer else "without PSCI layer"
        print(f"  {label} wall {spread([w for w, _ in found])}  QEMU cpu {spread([c for _, c in found])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="hibernate-resume rounds, lab and bare (default 4)")
    parser.add_argument("--builds", type=int, default=5, help="warm image builds to time (default 5)")
    parser.add_argument("--layer-boots", type=int, default=2, help="boots with and without the layer (default 2)")
    parser.add_argument("--no-bootstrap", action="store_true", help="do not time a re-run of ./bootstrap")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT", help="also time the lab of this checkout")
    args = parser.parse_args()
    print(f"on {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the start")
    with tempfile.TemporaryDirectory(prefix="timings-before-") as scratch:
        labs = [THIS, *([before_lab(args.before, Path(scratch))] if args.before else [])]
        if args.builds:
            for lab in labs:
                warm_builds(lab, args.builds)
        if not args.no_bootstrap:
            bootstrap_rerun()
        if args.pairs:
            compare(labs, args.pairs)
    if args.layer_boots:
        layer_boots(args.layer_boots)
    print(f"\nload average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; "
          f"largest process {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
