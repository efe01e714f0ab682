"""A lab host on this machine: a `kvm-host` image booted under TCG with EL2, reached over SSH.

The host is an arm64 KVM host emulated here (`-machine virt,virtualization=on,gic-version=3`): its
kernel's KVM runs the lab's guests with `-accel kvm`, so a run sees what real arm64 KVM does with
SYSTEM_OFF2, on a machine that has no arm64 KVM of its own. `start_host` builds (or finds) the
image, boots it with the lab's Machine, waits for init's `lab-init: kvm` and `lab-init: ready`
lines and an SSH login, records the host in the hosts file, and stops it on the way out.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lab.deadline import Deadline
from lab.errors import ChannelError, MachineError, SetupError, UsageError, WaitTimeout
from lab.hosts.known import KnownHost, forget_host, hosts_dir, record_host
from lab.image.guest_image import GuestImage
from lab.image.recipe import ImageRecipe, ImageRole
from lab.image.store import ImageStore
from lab.machine.channels.ssh import HOST, SshChannel
from lab.machine.process import Machine
from lab.machine.spec import MachineSpec, free_local_port
from lab.qemu.builder import QemuBuilder
from lab.qemu.recipe import TARGETS
from lab.rundir import BootFiles, timestamp, unique_dir

_log = logging.getLogger(__name__)

DEFAULT_HOST = "kvm-host"
BOOT_SECONDS = 300.0
"""The host's boot to `lab-init: ready`: about 20 s on an idle two-core machine, several times that when busy."""
SSH_SECONDS = 60.0
HOST_MEMORY_MIB = 6144
"""The host's RAM: a system guest takes 2048 MiB of it and its disk overlay lives in the host's RAM too.
TCG gives the host pages only as it touches them, so RAM it does not use costs nothing here."""
PORT_ATTEMPTS = 3
DRAIN_SLICE = 1.0
READER_STOP_SECONDS = 5.0
_KVM_LINE = re.compile(r"lab-init: kvm (?P<detail>[^\r\n]*)\r?\n")
_READY = re.compile(r"lab-init: ready|Kernel panic")


@dataclass(frozen=True)
class KvmStatus:
    """Whether the host's /dev/kvm works, and init's words for it (the mode, or why not)."""

    available: bool
    detail: str

    @classmethod
    def from_line(cls, detail: str) -> KvmStatus:
        return cls(detail.startswith("/dev/kvm ready"), detail)


@dataclass(frozen=True)
class RunningHost:
    """A booted lab host: where it answers SSH, the keys to reach it, what it runs."""

    name: str
    url: str
    """`ssh://root@127.0.0.1:PORT`: what `--host` takes."""
    port: int
    user: str
    host_key: str
    """The host's SSH server key, an OpenSSH public key line: pin it, never trust on first use."""
    client_key: Path
    kernel_release: str
    """What `uname -r` said on the host."""
    kvm: KvmStatus
    image: GuestImage
    machine: Machine
    log_dir: Path

    def ssh(self, timeout: float = SSH_SECONDS) -> SshChannel:
        """A new SSH channel to the host, logged in (the caller closes it)."""
        channel = SshChannel.from_files(self.port, self.user, self.host_key, self.client_key)
        channel.connect(timeout)
        return channel


def qemu_builder(log: Callable[[str], None]) -> Callable[[str], Path]:
    """The lab's patched QEMU for a target, built first if it is not yet (saying how long that takes)."""
    def build(target: str) -> Path:
        job = QemuBuilder(TARGETS[target], say=lambda line: log(f"lab qemu build: {line}"))
        if not job.done:
            log(f"the lab's patched QEMU for {target} is not built yet: building it now "
                "(`lab qemu build --target arm64`; about 15 minutes on two idle cores, up to 45 when busy)")
        return job.run()
    return build


def host_recipe(name: str, kernel_deb: str | None = None) -> ImageRecipe:
    recipe = ImageRecipe.named(name)
    if recipe.role is not ImageRole.KVM_HOST:
        raise UsageError(f"image {name} is not a lab host (role {recipe.role}); `lab host` boots recipes with "
                         f"role: {ImageRole.KVM_HOST}")
    return recipe.pinned(kernel_deb) if kernel_deb else recipe


def build_host_image(name: str = DEFAULT_HOST, kernel_deb: str | None = None, refresh: bool = False,
                     log: Callable[[str], None] = print) -> tuple[GuestImage, bool]:
    """Build (or find in the cache) a host image from its recipe and today's packages; True when built now."""
    recipe = host_recipe(name, kernel_deb)
    return ImageStore().build(recipe, refresh=refresh, log=log, qemu_builder=qemu_builder(log))


def host_image(name: str = DEFAULT_HOST, kernel_deb: str | None = None,
               log: Callable[[str], None] = print) -> GuestImage:
    """The newest built image of the host recipe (with that kernel), built now if there is none."""
    recipe = host_recipe(name, kernel_deb)
    pin = recipe.kernel_version and f"{recipe.kernel_package}={recipe.kernel_version}"
    found = ImageStore().latest(name, pin)
    return found if found is not None else build_host_image(name, kernel_deb, log=log)[0]


class _ConsoleReader(threading.Thread):
    """Keeps reading the host's serial console while the host runs: a console nobody reads fills
    its socket, and the host's kernel then stalls in printk. It waits for nothing, so kernel trouble
    on the host's console (recorded there) does not stop it."""

    def __init__(self, machine: Machine) -> None:
        super().__init__(name=f"console-{machine.name}", daemon=True)
        self.console = machine.console
        self.console.trouble_quiet = None
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.is_set() and not self.console.closed:
            try:
                self.console.drain_until_closed(DRAIN_SLICE, "the host's console to close")
            except WaitTimeout:
                continue
            except (ChannelError, OSError):
                return

    def stop(self) -> None:
        self.finished.set()
        self.join(DRAIN_SLICE + READER_STOP_SECONDS)


def _spec(image: GuestImage, port: int, memory_mib: int, cpus: int) -> MachineSpec:
    return MachineSpec(arch=image.qemu_arch, kernel=image.kernel, initrd=image.initramfs, append=image.kernel_append,
                       accel="tcg", memory_mib=memory_mib, cpus=cpus, ssh_port=port, virtualization=True)


def _launch_once(image: GuestImage, memory_mib: int, cpus: int, files: BootFiles) -> Machine:
    machine = Machine(_spec(image, free_local_port(), memory_mib, cpus), files, time.monotonic())
    machine.launch()
    return machine


def _launch(image: GuestImage, memory_mib: int, cpus: int, log_dir: Path) -> Machine:
    """Launch QEMU paused with SSH forwarded from a free port; another port if one is taken under us."""
    for attempt in range(1, PORT_ATTEMPTS):
        try:
            return _launch_once(image, memory_mib, cpus, BootFiles(log_dir, f"host{attempt}"))
        except MachineError as error:
            if "host forwarding" not in error.output:
                raise
    return _launch_once(image, memory_mib, cpus, BootFiles(log_dir, f"host{PORT_ATTEMPTS}"))


def _wait_ready(machine: Machine, timeout: float) -> KvmStatus:
    """init's `lab-init: ready`, and the `lab-init: kvm` line it prints before it on a host."""
    match = machine.console.expect(_READY.pattern, timeout, f"the host {machine.name} to print `lab-init: ready`")
    if match.group(0) != "lab-init: ready":
        raise MachineError("the host's kernel panicked while booting", machine.record.command,
                           "\n".join(machine.console.last_lines(20)))
    seen = "\n".join(line for _, line in machine.console.lines) + "\n"
    kvm = _KVM_LINE.search(seen)
    if kvm is None:
        raise SetupError("the host printed no `lab-init: kvm` line: is its image built with role kvm-host?")
    return KvmStatus.from_line(kvm.group("detail"))


@contextmanager
def start_host(name: str = DEFAULT_HOST, kernel_deb: str | None = None, memory_mib: int = HOST_MEMORY_MIB,
               cpus: int = 2, boot_timeout: float = BOOT_SECONDS, log: Callable[[str], None] = print,
               image: GuestImage | None = None) -> Iterator[RunningHost]:
    """Boot a lab host and yield it once it is ready: init said so and SSH logs in. Stops it on exit.

    `kernel_deb` (`linux-image-…=VERSION`) boots the host with that Debian kernel: the host kernel
    as a dimension of a run. `image` is an already built host image to boot as it is.
    """
    image = image or host_image(name, kernel_deb, log)
    login = image.ssh
    if image.manifest.get("role") != ImageRole.KVM_HOST or login is None:
        raise UsageError(f"{image.path} is not a lab host image with an SSH server")
    deadline = Deadline(boot_timeout)
    log_dir = unique_dir(hosts_dir() / "logs", f"{image.name}-{timestamp()}")
    machine = _launch(image, memory_mib, cpus, log_dir)
    reader: _ConsoleReader | None = None
    try:
        machine.resume()
        kvm = _wait_ready(machine, deadline.remaining)
        port = machine.spec.ssh_port
        if port is None:
            raise SetupError(f"host image {image.name} has no SSH port forward")
        channel = SshChannel.from_files(port, login.user, login.host_key, login.client_key)
        try:
            channel.connect(max(min(SSH_SECONDS, deadline.remaining), 1.0))
            release = channel.run("uname -r").output.strip()
        finally:
            channel.close()
        reader = _ConsoleReader(machine)
        reader.start()
        host = RunningHost(image.name, f"ssh://{login.user}@{HOST}:{port}", port, login.user, login.host_key,
                           login.client_key, release, kvm, image, machine, log_dir)
        record_host(KnownHost(
            url=host.url, user=host.user, host_key=host.host_key, client_key=str(host.client_key), image=image.name,
            image_dir=str(image.path), kernel_release=release, kvm=kvm.available, kvm_detail=kvm.detail,
            pid=os.getpid(), qemu_pid=machine.pid, started=datetime.now(UTC).isoformat(timespec="seconds"),
            log_dir=str(log_dir)))
        _log.debug("lab host %s ready at %s (kernel %s, kvm: %s)", image.name, host.url, release, kvm.available)
        try:
            yield host
        finally:
            forget_host(host.url, os.getpid())
    finally:
        _log.debug("lab host %s stopping (QEMU pid %s)", image.name, machine.pid)
        if reader is not None:
            reader.stop()
        machine.close()
