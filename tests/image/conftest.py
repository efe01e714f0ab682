"""The default image's initramfs, read member by member, for the tests of what the build put in it."""

from __future__ import annotations

from pathlib import Path

import pytest


def archive_files(path: Path) -> dict[str, tuple[int, bytes]]:
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


@pytest.fixture(scope="module")
def archive(default_image) -> dict[str, tuple[int, bytes]]:
    return archive_files(default_image.initramfs)
