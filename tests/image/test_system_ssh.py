"""A system image's SSH set-up on a root filesystem tree: the keys it pins and the links that start the network.

The real thing (sshd answering over the forwarded port before hibernation and after resume) is
system-hibernate-resume in tests/scenario/test_shipped_e2e.py and test_system_x86_e2e.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
import pytest

from lab.errors import SetupError
from lab.image.keys import CLIENT_KEY
from lab.image.system_ssh import HOST_KEY, NETWORKD_UNITS, UNIT_DIR, configure_ssh


def _root(tmp_path: Path) -> Path:
    """What mmdebstrap leaves that matters here: sshd, the keys its maintainer script made, networkd's units."""
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/sshd").write_bytes(b"")
    (root / "etc/ssh").mkdir(parents=True)
    for made in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_mldsa44_ed25519_key"):
        (root / "etc/ssh" / made).write_text("made by the maintainer script\n")
    (root / UNIT_DIR).mkdir(parents=True)
    for unit in set(NETWORKD_UNITS.values()):
        (root / UNIT_DIR / unit).write_text("[Unit]\n")
    return root


def test_one_host_key_is_pinned_and_the_client_key_logs_in_as_root(tmp_path: Path) -> None:
    root, out = _root(tmp_path), tmp_path / "out"
    out.mkdir()
    manifest = configure_ssh(root, out)
    assert sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*")) == ["ssh_host_ed25519_key",
                                                                           "ssh_host_ed25519_key.pub"]
    host_key = paramiko.Ed25519Key.from_private_key_file(str(root / HOST_KEY))
    assert manifest["host_key"] == f"{host_key.get_name()} {host_key.get_base64()}"
    assert os.stat(root / HOST_KEY).st_mode & 0o777 == 0o600
    client_key = paramiko.Ed25519Key.from_private_key_file(str(out / CLIENT_KEY))
    authorized = (root / "root/.ssh/authorized_keys").read_text().split()
    assert authorized[:2] == [client_key.get_name(), client_key.get_base64()]
    assert os.stat(out / CLIENT_KEY).st_mode & 0o777 == 0o600
    assert (manifest["user"], manifest["client_key"]) == ("root", CLIENT_KEY)
    for link, unit in NETWORKD_UNITS.items():
        assert os.readlink(root / "etc/systemd/system" / link) == f"/{UNIT_DIR}/{unit}"


def test_a_system_without_sshd_is_refused_in_one_line(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "usr/sbin/sshd").unlink()
    with pytest.raises(SetupError, match="no /usr/sbin/sshd: add openssh-server"):
        configure_ssh(root, tmp_path)
