"""Which paths the lab takes as a disk image: regular files, unless the user forces a device.

`lab disk set-signature` writes the disk in place and `--disk` is copied (and hashed) whole, so a
mistyped `/dev/sda`, or a symlink to it, would edit a host disk or copy a whole device (`/dev/zero`:
forever). QEMU's tools open devices as readily as files; the lab refuses them unless told otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lab.errors import UsageError

_DEVICES = {stat.S_IFBLK: "a block device", stat.S_IFCHR: "a character device"}
_OTHERS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}


def checked_disk_path(path: Path, force: bool, force_option: str = "--force") -> Path:
    """`path` if it names a regular disk image file (through symlinks or not), or a device and `force`.

    Anything else is a one-line usage error that says what the path is and, for a device, which option
    takes it anyway.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"no such disk image: {path}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot use {path} as a disk image: {getattr(error, 'strerror', None) or error}") from None
    if stat.S_ISREG(mode):
        return path
    through = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
    kind = _DEVICES.get(stat.S_IFMT(mode))
    if kind is None:
        raise UsageError(f"{path}{through} is {_OTHERS.get(stat.S_IFMT(mode), 'a special file')}, not a disk image")
    if force:
        return path
    raise UsageError(f"{path}{through} is {kind}, not a disk image file: refused ({force_option} to use it anyway)")
