"""What a lab host image carries from the build host besides Debian packages, and where it goes.

A `kvm-host` image runs guests' QEMU for lab runs driven over SSH, so it carries the lab's patched
QEMU build (installed as /opt/lab-qemu/{bin,lib}, started through its own loader) and the guest
images it will boot. Those are pre-seeded in the host's file cache, `/var/cache/lab/files/SHA256`
(the runner copies a file a run needs there once and reuses it by sha256), and also named under
`/var/lib/lab/images/NAME/` (hard links: one copy in RAM). A blank swap template is not carried
byte by byte: init creates it sparse at boot from `/etc/lab/blank-files`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.digest import sha256_file
from lab.errors import SetupError
from lab.image import initramfs
from lab.image.guest_image import GuestImage

QEMU_PREFIX = "opt/lab-qemu"
FILE_CACHE = "var/cache/lab/files"
IMAGES_ROOT = "var/lib/lab/images"
RUNS_ROOT = "var/lib/lab/runs"
BLANK_FILES = "etc/lab/blank-files"
ROLE_FILE = "etc/lab/role"
GUEST_IMAGE_FILES = ("vmlinuz", "initramfs.cpio", "manifest.json")
"""Files of a guest image a host carries as they are; the swap template is made blank at boot."""
SWAP_TEMPLATE = "swap.raw"
BLOCK = 1 << 20


@dataclass(frozen=True)
class CarriedFile:
    """One file from the build host under one or more guest paths (the first holds the data, the
    others are hard links). A blank one is all zeros: created sparse at boot, never archived."""

    source: Path
    sha256: str
    size: int
    paths: tuple[str, ...]
    mode: int = 0o644
    blank: bool = False

    @classmethod
    def of(cls, source: Path, paths: tuple[str, ...], mode: int = 0o644) -> CarriedFile:
        return cls(source, sha256_file(source), source.stat().st_size, paths, mode)

    def key(self) -> list[Any]:
        return [list(self.paths), self.sha256, self.size, self.blank]


@dataclass(frozen=True)
class Payload:
    """Everything an image carries from the build host, and what its manifest says about it."""

    files: tuple[CarriedFile, ...] = ()
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)

    def key(self) -> list[list[Any]]:
        """What the image's cache key takes from the payload: every guest path with the sha256 it holds."""
        return sorted(f.key() for f in self.files)


def payload(qemu_binaries: dict[str, Path], images: list[GuestImage]) -> Payload:
    """The QEMU builds and guest images a recipe names, as files and manifest sections.

    Two images holding the same file (a blank swap template of the same size) share its file-cache entry.
    """
    files: dict[str, CarriedFile] = {}
    sections: dict[str, Any] = {}
    builds = [qemu_build_payload(binary, target) for target, binary in qemu_binaries.items()]
    guests = [guest_image_payload(image) for image in images]
    for carried, _ in [*builds, *guests]:
        for item in carried:
            known = files.get(item.paths[0])
            files[item.paths[0]] = item if known is None else \
                dataclasses.replace(known, paths=(*known.paths, *item.paths[1:]))
    if builds:
        sections["qemu_builds"] = [manifest for _, manifest in builds]
    if guests:
        sections["guest_images"] = {image.name: manifest for image, (_, manifest) in zip(images, guests, strict=True)}
    return Payload(tuple(files.values()), sections)


def blank_digest(source: Path) -> tuple[str, int]:
    """sha256 and size of a file that must hold only zeros (a blank swap template), checked in the same pass."""
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            if block.strip(b"\0"):
                raise SetupError(f"{source} is not blank: a host creates its swap template at boot")
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def qemu_build_payload(binary: Path, target: str) -> tuple[list[CarriedFile], dict[str, Any]]:
    """The lab's QEMU build for `target` (its binary and every library it loads) under /opt/lab-qemu."""
    build = binary.parent.parent
    try:
        record = json.loads((build / "build.json").read_text())
    except (OSError, ValueError) as error:
        raise SetupError(f"{build} is not a finished lab QEMU build: {error}") from error
    libraries = sorted((build / "lib").iterdir()) if (build / "lib").is_dir() else []
    if not any(library.name.startswith("ld-linux") for library in libraries):
        raise SetupError(f"{build} has no lib/ld-linux-*: it is not a build for another host (target {target})")
    files = [CarriedFile.of(binary, (f"{QEMU_PREFIX}/bin/{binary.name}",), 0o755)]
    files += [CarriedFile.of(library, (f"{QEMU_PREFIX}/lib/{library.name}",), 0o755) for library in libraries]
    loader = next(library.name for library in libraries if library.name.startswith("ld-linux"))
    prefix = f"/{QEMU_PREFIX}"
    manifest = {
        "target": target, "prefix": prefix, "build": build.name, "source": record.get("source"),
        "series_sha256": record.get("series_sha256"), "binary_sha256": files[0].sha256,
        "command": [f"{prefix}/lib/{loader}", "--library-path", f"{prefix}/lib", f"{prefix}/bin/{binary.name}"],
    }
    return files, manifest


def guest_image_payload(image: GuestImage) -> tuple[list[CarriedFile], dict[str, Any]]:
    """A built guest image: in the file cache by sha256, and named under /var/lib/lab/images/NAME/."""
    directory = f"{IMAGES_ROOT}/{image.name}"
    files = []
    for name in GUEST_IMAGE_FILES:
        source = image.path / name
        if not source.is_file():
            raise SetupError(f"guest image {image.path} has no {name}")
        sha256 = sha256_file(source)
        paths = (f"{FILE_CACHE}/{sha256}", f"{directory}/{name}")
        files.append(CarriedFile(source, sha256, source.stat().st_size, paths))
    swap = image.swap_template
    if not swap.is_file():
        raise SetupError(f"guest image {image.path} has no {SWAP_TEMPLATE}")
    sha256, size = blank_digest(swap)
    paths = (f"{FILE_CACHE}/{sha256}", f"{directory}/{SWAP_TEMPLATE}")
    files.append(CarriedFile(swap, sha256, size, paths, blank=True))
    manifest = {
        "directory": f"/{directory}", "source": str(image.path), "kernel_release": image.kernel_release,
        "kernel_append": image.kernel_append,
        "files": {Path(f.paths[1]).name: {"sha256": f.sha256, "size": f.size, "cache": f"/{f.paths[0]}"}
                  for f in files},
    }
    return files, manifest


def payload_entries(files: tuple[CarriedFile, ...], known: set[str]) -> list[initramfs.Entry]:
    """Archive entries for the carried files (data once, hard links for the other names), the
    directories they need, and the list init reads to create the blank ones."""
    paths = [path for f in files for path in f.paths]
    blanks = [f for f in files if f.blank]
    if blanks:
        paths.append(BLANK_FILES)
    entries = [initramfs.directory(d) for d in initramfs.parent_directories(paths, known)]
    for carried in files:
        if carried.blank:
            continue
        first = initramfs.regular_file(carried.paths[0], carried.source.read_bytes(), carried.mode)
        entries += [first, *(initramfs.hard_link(path, first) for path in carried.paths[1:])]
    if blanks:
        listing = "".join(f"{f.size} {' '.join(f.paths)}\n" for f in blanks)
        entries.append(initramfs.regular_file(BLANK_FILES, listing.encode()))
    return entries
