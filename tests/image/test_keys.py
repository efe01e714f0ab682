"""The image's SSH keys: dropbear's key format, the pinned host key and the private client key."""

from __future__ import annotations

import os
import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lab.image.keys import DROPBEAR_HOST_KEY, dropbear_ed25519_key


def _ssh_strings(data: bytes) -> list[bytes]:
    strings = []
    while data:
        length = int.from_bytes(data[:4], "big")
        strings.append(data[4:4 + length])
        data = data[4 + length:]
    return strings


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_dropbear_host_key_is_type_then_seed_and_public_key():
    key = Ed25519PrivateKey.generate()
    kind, material = _ssh_strings(dropbear_ed25519_key(key))
    assert kind == b"ssh-ed25519" and len(material) == 64
    assert _raw_public(Ed25519PrivateKey.from_private_bytes(material[:32])) == material[32:] == _raw_public(key)


def test_the_image_pins_its_host_key_and_keeps_the_client_key_private(default_image, archive):
    login = default_image.ssh
    assert login is not None
    host_mode, host_key = archive[DROPBEAR_HOST_KEY]
    _, material = _ssh_strings(host_key)
    public = Ed25519PrivateKey.from_private_bytes(material[:32]).public_key()
    assert login.host_key == public.public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode()
    assert stat.S_IMODE(os.stat(login.client_key).st_mode) == 0o600
    client = serialization.load_ssh_private_key(login.client_key.read_bytes(), None)
    authorized = archive["root/.ssh/authorized_keys"][1].decode().split()
    assert isinstance(serialization.load_ssh_public_key(" ".join(authorized[:2]).encode()), Ed25519PublicKey)
    assert authorized[:2] == client.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                             serialization.PublicFormat.OpenSSH).decode().split()
    assert stat.S_IMODE(host_mode) == 0o600
    assert stat.S_IMODE(archive["root/.ssh"][0]) == 0o700
    assert default_image.with_overrides(None, default_image.initramfs, None).ssh is None, \
        "a user's initramfs has no SSH server of the image's"
