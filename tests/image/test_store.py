"""The image builder's SSH server: dropbear's key format, the shared-library closure, the keys in the image."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from elftools.elf.elffile import ELFFile

from lab.errors import SetupError, UsageError
from lab.image.store import (
    DROPBEAR,
    DROPBEAR_HOST_KEY,
    ImageRecipe,
    _cache_key,
    dropbear_ed25519_key,
    program_closure,
)


def _archive_files(path: Path) -> dict[str, tuple[int, bytes]]:
    """Members of a newc archive by name: (mode, data); parsed here, independently of the writer."""
    archive, members, offset = path.read_bytes(), {}, 0
    while True:
        fields = [int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name = archive[offset + 110:offset + 110 + name_size - 1].decode()
        start = offset + 110 + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return members
        members[name] = (mode, archive[start:start + size])
        offset = start + size + (-size % 4)


def _ssh_strings(data: bytes) -> list[bytes]:
    strings = []
    while data:
        length = int.from_bytes(data[:4], "big")
        strings.append(data[4:4 + length])
        data = data[4 + length:]
    return strings


def _links(data: bytes) -> tuple[str | None, list[str]]:
    elf = ELFFile(io.BytesIO(data))
    interpreter = next((s.get_interp_name() for s in elf.iter_segments() if s["p_type"] == "PT_INTERP"), None)
    dynamic = next((s for s in elf.iter_segments() if s["p_type"] == "PT_DYNAMIC"), None)
    return interpreter, [t.needed for t in dynamic.iter_tags("DT_NEEDED")] if dynamic else []


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_dropbear_host_key_is_type_then_seed_and_public_key():
    key = Ed25519PrivateKey.generate()
    kind, material = _ssh_strings(dropbear_ed25519_key(key))
    assert kind == b"ssh-ed25519" and len(material) == 64
    assert _raw_public(Ed25519PrivateKey.from_private_bytes(material[:32])) == material[32:] == _raw_public(key)


@pytest.fixture(scope="module")
def archive(default_image) -> dict[str, tuple[int, bytes]]:
    return _archive_files(default_image.initramfs)


def test_every_elf_file_in_the_initramfs_finds_its_loader_and_libraries(archive):
    elves = {name: data for name, (_, data) in archive.items() if data[:4] == b"\x7fELF"}
    assert f"{DROPBEAR}" in elves
    sonames = {Path(name).name for name in elves}
    for name, data in elves.items():
        interpreter, needed = _links(data)
        assert interpreter is None or interpreter.lstrip("/") in archive, f"{name} needs {interpreter}"
        assert set(needed) <= sonames, f"{name} needs {set(needed) - sonames}"
    assert sum(Path(name).name.startswith("ld-linux") for name in elves) == 1, "the loader is taken once"


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


def _tree_like_debian(archive: dict[str, tuple[int, bytes]], files: list[str], root: Path) -> None:
    """The closure's files laid out as Debian ships them: versioned names behind soname symlinks."""
    for name in files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(name).name.startswith("ld-linux"):
            real = root / "usr/lib/aarch64-linux-gnu" / Path(name).name
            real.parent.mkdir(parents=True, exist_ok=True)
            real.write_bytes(archive[name][1])
            (root / "usr/lib" / Path(name).name).symlink_to(f"/usr/lib/aarch64-linux-gnu/{Path(name).name}")
        elif ".so." in name:
            target.with_name(target.name + ".0.1").write_bytes(archive[name][1])
            target.symlink_to(target.name + ".0.1")
        else:
            target.write_bytes(archive[name][1])


def test_closure_follows_symlinks_within_the_tree_and_merged_usr(default_image, archive, tmp_path):
    files = default_image.manifest["ssh"]["files"]
    _tree_like_debian(archive, files, tmp_path)
    closure = program_closure(tmp_path, f"/{DROPBEAR}", "arm64")
    assert sorted(closure) == sorted(files)
    assert all(closure[name] == archive[name][1] for name in files)


def test_closure_names_the_library_it_cannot_find(archive, tmp_path):
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / DROPBEAR).write_bytes(archive[DROPBEAR][1])
    with pytest.raises(SetupError, match=r"lib\S+\.so\.\d+ \(needed by /usr/sbin/dropbear\)|ld-linux"):
        program_closure(tmp_path, DROPBEAR, "arm64")


def test_recipe_accepts_dropbear_only(tmp_path):
    recipe = ImageRecipe.named("debian-arm64")
    assert recipe.ssh_server == "dropbear" and "dropbear-bin" in recipe.extra_packages
    text = Path("images/debian-arm64.yaml").read_text().replace("ssh_server: dropbear", "ssh_server: openssh")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UsageError, match="ssh_server"):
        ImageRecipe.load(tmp_path / "r.yaml")


def test_extra_packages_change_the_cache_key():
    recipe = ImageRecipe.named("debian-arm64")
    assert _cache_key(recipe, []) != _cache_key(dataclasses.replace(recipe, extra_packages=()), [])


def test_extra_packages_and_their_dependencies_are_inputs_of_the_image_once(default_image):
    names = [i["package"] for i in default_image.manifest["inputs"] if "package" in i]
    assert names[names.index("busybox-static") + 1] == "dropbear-bin"
    assert {"libc6", "libtomcrypt1", "libtommath1", "libgmp10", "zlib1g", "libcrypt1"} <= set(names)
    assert len(names) == len(set(names))
