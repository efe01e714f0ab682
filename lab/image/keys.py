"""An image's SSH server: dropbear with its libraries, a host key and a client key made for this image alone.

The public half of the host key goes into the manifest (the lab pins it); the private half of
the client key is written next to the image, readable by its owner only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.image import initramfs
from lab.image.closure import program_closure
from lab.image.recipe import ImageRecipe

DROPBEAR = "usr/sbin/dropbear"
DROPBEAR_HOST_KEY = "etc/dropbear/dropbear_ed25519_host_key"
CLIENT_KEY = "ssh-client-key"
SSH_USER = "root"


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def dropbear_ed25519_key(key: Ed25519PrivateKey) -> bytes:
    """The key in dropbear's own file format: string "ssh-ed25519", then string(seed || public key).

    dropbearkey cannot run on the build host (it is an arm64 binary), so the image's host key is
    generated here and written the way dropbear reads it.
    """
    raw = serialization.Encoding.Raw
    seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return _ssh_string(b"ssh-ed25519") + _ssh_string(seed + public)


def openssh_public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def openssh_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def new_client_key(out: Path) -> Ed25519PrivateKey:
    """A client key for this image alone; its private half goes to `out`, readable by its owner only."""
    client_key = Ed25519PrivateKey.generate()
    descriptor = os.open(out / CLIENT_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(openssh_private(client_key))
    return client_key


def ssh_server(
    root: Path, recipe: ImageRecipe, out: Path, directories: Iterable[str]
) -> tuple[list[initramfs.Entry], dict[str, Any]]:
    """Dropbear with its libraries, a fresh host key, root's authorized client key (private half to `out`).

    `root` is the tree the image's packages were extracted into; `directories` are those the
    initramfs already has. Returns the initramfs entries and the manifest's `ssh` section.
    """
    host_key, client_key = Ed25519PrivateKey.generate(), new_client_key(out)
    programs = program_closure(root, DROPBEAR, recipe.arch)
    files: dict[str, tuple[bytes, int]] = {path: (data, 0o755) for path, data in programs.items()}
    files |= {
        "etc/passwd": (f"{SSH_USER}:x:0:0:{SSH_USER}:/root:/bin/sh\n".encode(), 0o644),
        "etc/group": (b"root:x:0:\n", 0o644),
        "etc/shells": (b"/bin/sh\n", 0o644),
        DROPBEAR_HOST_KEY: (dropbear_ed25519_key(host_key), 0o600),
        "root/.ssh/authorized_keys": (f"{openssh_public(client_key)} lab\n".encode(), 0o600),
    }
    private = ["root", "root/.ssh"]
    known = {*directories, *private}
    entries = [initramfs.directory(d, 0o700) for d in private]
    entries += [initramfs.directory(d) for d in initramfs.parent_directories(sorted(files), known)]
    entries += [initramfs.regular_file(path, data, perm) for path, (data, perm) in sorted(files.items())]
    manifest = {"server": recipe.ssh_server, "user": SSH_USER, "host_key": openssh_public(host_key),
                "client_key": CLIENT_KEY, "files": sorted(programs)}
    return entries, manifest
