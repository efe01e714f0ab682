"""A system image's disk packed for lab hosts, and a host run's disk brought home.

A lab host keeps its files in RAM, and a system image's GPT disk is 3.3 GB raw with about 1.1 GB of
data: copying it to a host for every run would cost minutes and gigabytes. Instead the disk is packed
once here into a zstd-compressed qcow2 (kept in the lab's cache by the raw disk's sha256), the host keeps
one copy of that by its own sha256 (`Host.file_for`), and each run on the host writes to a qcow2 overlay
backed by it. Only the overlay, what the run wrote, comes home; rebased onto the image's raw disk here,
it reads as the whole disk the guest saw.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lab.errors import SetupError
from lab.hosts.local import LOCAL
from lab.paths import cache_root

PACK_SECONDS = 1800.0
"""Packing a system disk: 5 to 8 s for the arm64 ones on this machine; much longer on a slow disk under load."""
REBASE_SECONDS = 60.0


def packed_disk(raw: Path, sha256: str) -> Path:
    """The packed copy of the raw disk whose sha256 is `sha256`, made now if the cache has none.

    A copy is only ever put in place by renaming a finished one, so a present file is complete; runs
    packing at once (on this machine, or on Slurm nodes sharing the cache) each write a partial file of
    their own, and the later rename replaces the earlier with identical content.
    """
    packed = cache_root() / "packed-disks" / f"{sha256}.qcow2"
    if packed.is_file():
        return packed
    packed.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{packed.name}.", suffix=".partial", dir=packed.parent)
    os.close(handle)
    partial = Path(name)
    try:
        done = LOCAL.run(["qemu-img", "convert", "-c", "-o", "compression_type=zstd", "-f", "raw", "-O", "qcow2",
                          str(raw), str(partial)], timeout=PACK_SECONDS)
        if done.returncode != 0:
            raise SetupError(f"cannot pack {raw} for a lab host: qemu-img convert: {done.last_error_line()}")
        partial.replace(packed)
    finally:
        partial.unlink(missing_ok=True)
    return packed


def rebase_home(overlay: Path, raw: Path) -> None:
    """Point an overlay brought home from a host at the image's raw disk here, which holds the same data as
    the packed copy it was backed by there (so the rebase is metadata only: `-u`)."""
    done = LOCAL.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", str(raw.resolve()), str(overlay)],
                     timeout=REBASE_SECONDS)
    if done.returncode != 0:
        raise SetupError(f"cannot rebase {overlay} onto {raw}: qemu-img rebase: {done.last_error_line()}")
