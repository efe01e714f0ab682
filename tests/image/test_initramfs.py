import io

from lab.image import initramfs


def _members(archive: bytes) -> list[tuple[str, int, bytes]]:
    """Parse newc back: (name, mode, data) per member; independent of the writer's code."""
    members, offset = [], 0
    while True:
        header = archive[offset:offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = archive[name_start:name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        data = archive[data_start:data_start + size]
        offset = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            return members
        members.append((name, mode, data))


def _archive(entries) -> bytes:
    out = io.BytesIO()
    initramfs.write_newc(out, entries)
    return out.getvalue()


def test_members_round_trip_with_alignment():
    archive = _archive([
        initramfs.directory("bin"),
        initramfs.regular_file("bin/tool", b"x" * 5, 0o755),
        initramfs.symlink("bin/sh", "tool"),
        initramfs.char_device("dev/console", 5, 1),
    ])
    assert len(archive) % 4 == 0
    names = [(name, oct(mode), data) for name, mode, data in _members(archive)]
    assert names == [
        ("bin", "0o40755", b""),
        ("bin/tool", "0o100755", b"xxxxx"),
        ("bin/sh", "0o120777", b"tool"),
        ("dev/console", "0o20600", b""),
    ]


def test_same_entries_give_same_bytes():
    entries = [initramfs.regular_file("init", b"#!/bin/sh\n", 0o755)]
    assert _archive(entries) == _archive(entries)
