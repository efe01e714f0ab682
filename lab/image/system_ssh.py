"""A system image's SSH server: Debian's OpenSSH, keyed for this image alone, on the network QEMU gives it.

OpenSSH's maintainer script makes host keys of every type while mmdebstrap installs it; they are
replaced by one ed25519 host key whose public half goes into the manifest, so the lab pins it as it
pins the busybox guest's dropbear key. systemd-networkd (part of Debian's systemd) brings up QEMU's
user-mode network by DHCP; the lab forwards a port of 127.0.0.1 to the guest's port 22 on each boot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.errors import SetupError
from lab.image.keys import CLIENT_KEY, SSH_USER, new_client_key, openssh_private, openssh_public

SSH_DIR = "etc/ssh"
HOST_KEY = f"{SSH_DIR}/ssh_host_ed25519_key"
SSHD_SETTINGS = f"{SSH_DIR}/sshd_config.d/lab.conf"
NETWORK = "etc/systemd/network/20-lab.network"
NETWORKD_UNITS = {
    "multi-user.target.wants/systemd-networkd.service": "systemd-networkd.service",
    "sockets.target.wants/systemd-networkd.socket": "systemd-networkd.socket",
    "dbus-org.freedesktop.network1.service": "systemd-networkd.service",
}
"""What `systemctl enable systemd-networkd` links, made by hand: the build host's systemctl is not the guest's."""
UNIT_DIR = "usr/lib/systemd/system"


def _write(root: Path, path: str, data: bytes, mode: int) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)


def _enable_networkd(root: Path) -> None:
    for unit in set(NETWORKD_UNITS.values()):
        if not (root / UNIT_DIR / unit).is_file():
            raise SetupError(f"the system has no {unit}: systemd-networkd is missing from its systemd package")
    units = root / "etc/systemd/system"
    for link, unit in NETWORKD_UNITS.items():
        (units / link).parent.mkdir(parents=True, exist_ok=True)
        (units / link).unlink(missing_ok=True)
        (units / link).symlink_to(f"/{UNIT_DIR}/{unit}")


def configure_ssh(root: Path, out: Path) -> dict[str, Any]:
    """Key OpenSSH in the root filesystem `root` for this image (the client key's private half to `out`),
    start the network, and return the manifest's `ssh` section."""
    if not (root / "usr/sbin/sshd").is_file():
        raise SetupError("the system has no /usr/sbin/sshd: add openssh-server to the recipe's packages")
    for made in (root / SSH_DIR).glob("ssh_host_*"):
        made.unlink()
    host_key = Ed25519PrivateKey.generate()
    client_key = new_client_key(out)
    _write(root, HOST_KEY, openssh_private(host_key), 0o600)
    _write(root, f"{HOST_KEY}.pub", f"{openssh_public(host_key)} root@lab-system\n".encode(), 0o644)
    _write(root, SSHD_SETTINGS, (f"HostKey /{HOST_KEY}\nPermitRootLogin prohibit-password\n"
                                 "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n").encode(),
           0o644)
    (root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(root, "root/.ssh/authorized_keys", f"{openssh_public(client_key)} lab\n".encode(), 0o600)
    _write(root, NETWORK, b"[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n", 0o644)
    _enable_networkd(root)
    return {"server": "openssh", "user": SSH_USER, "host_key": openssh_public(host_key), "client_key": CLIENT_KEY,
            "files": []}
