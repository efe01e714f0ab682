"""A built image: its directory and `manifest.json`, optionally booted with a user's kernel, initrd or arguments.

The directory holds the kernel Image, an initramfs (busybox, the lab's init, the kernel modules
the guest needs), a blank raw swap disk template and the manifest, which records every input and
output with its sha256. An image with an SSH server also holds the private half of the client key
its server accepts, and the server's public host key is in the manifest, so the lab can pin it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.digest import sha256_file
from lab.errors import SetupError, UsageError
from lab.vocabulary import guest_arch


@dataclass(frozen=True)
class SshLogin:
    """How the lab logs in to an image's SSH server: the pinned host key and the image's own client key."""

    user: str
    host_key: str
    client_key: Path


@dataclass(frozen=True)
class GuestImage:
    """A built image directory and its manifest, optionally with a user's kernel, initrd or arguments."""

    path: Path
    manifest: dict[str, Any]
    kernel_file: Path | None = None
    initrd_file: Path | None = None
    extra_append: str = ""

    @classmethod
    def open(cls, path: Path) -> GuestImage:
        manifest_path = path / "manifest.json"
        try:
            return cls(path, json.loads(manifest_path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise SetupError(f"{path} is not a built guest image: {error}") from error

    def with_overrides(self, kernel: Path | None, initrd: Path | None, append: str | None) -> GuestImage:
        """The same image booted with the user's own kernel, initramfs or extra kernel arguments."""
        for given in (kernel, initrd):
            if given is not None and not given.is_file():
                raise UsageError(f"no such file: {given}")
        return dataclasses.replace(self, kernel_file=kernel, initrd_file=initrd, extra_append=append or "")

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def qemu_arch(self) -> str:
        return guest_arch(self.arch).qemu

    @property
    def kernel(self) -> Path:
        return self.kernel_file or self.path / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.initrd_file or self.path / "initramfs.cpio"

    @property
    def swap_template(self) -> Path:
        return self.path / "swap.raw"

    @property
    def kernel_append(self) -> str:
        return f"{self.manifest['kernel_append']} {self.extra_append}".strip()

    @property
    def ssh(self) -> SshLogin | None:
        """None when the image has no SSH server, or when a user's initramfs replaces the image's."""
        server = self.manifest.get("ssh")
        if server is None or self.initrd_file is not None:
            return None
        return SshLogin(server["user"], server["host_key"], self.path / server["client_key"])

    @property
    def kernel_release(self) -> str:
        return "user-given kernel" if self.kernel_file else self.manifest["kernel_release"]

    def boot_inputs(self) -> dict[str, dict[str, str]]:
        """What a run boots, with sha256: recorded in result.json so a run can be matched to its inputs."""
        return {role: {"path": str(path), "sha256": sha256_file(path)}
                for role, path in (("kernel", self.kernel), ("initramfs", self.initramfs))}
