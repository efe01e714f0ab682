import io

import pytest

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


def _headers(archive: bytes) -> list[list[int]]:
    """The 13 numeric fields of every member's newc header, the trailer's included."""
    headers, offset = [], 0
    while offset < len(archive) and archive[offset:offset + 6] == b"070701":
        fields = [int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        headers.append(fields)
        start = offset + 110 + fields[11] + (-(110 + fields[11]) % 4)
        offset = start + fields[6] + (-fields[6] % 4)
    return headers


def test_the_bytes_hold_nothing_of_when_where_or_by_whom_they_were_written():
    """Same entries, same bytes, on any machine at any time: owner, mtime and device are zero, and inode
    numbers count the entries (what a writer taking them from the build host would get wrong)."""
    entries = [initramfs.directory("bin"), initramfs.regular_file("init", b"#!/bin/sh\n", 0o755),
               initramfs.symlink("bin/sh", "busybox")]
    headers = _headers(_archive(entries))
    assert len(headers) == len(entries) + 1, "every entry and the trailer"
    for position, (ino, _, uid, gid, _, mtime, _, devmajor, devminor, *_rest) in enumerate(headers[:-1], 1):
        assert (ino, uid, gid, mtime, devmajor, devminor) == (position, 0, 0, 0, 0, 0)


def _inodes(archive: bytes) -> dict[str, tuple[int, int, int]]:
    """(ino, nlink, filesize) per member name, read from the raw newc headers."""
    found, offset = {}, 0
    while True:
        fields = [int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        ino, nlink, size, name_size = fields[0], fields[4], fields[6], fields[11]
        name = archive[offset + 110:offset + 110 + name_size - 1].decode()
        if name == "TRAILER!!!":
            return found
        found[name] = (ino, nlink, size)
        start = offset + 110 + name_size + (-(110 + name_size) % 4)
        offset = start + size + (-size % 4)


def test_hard_links_share_the_inode_and_carry_the_data_once():
    data = initramfs.regular_file("var/cache/lab/files/abc", b"kernel" * 100)
    archive = _archive([data, initramfs.hard_link("var/lib/lab/images/g/vmlinuz", data),
                        initramfs.regular_file("other", b"x")])
    inodes = _inodes(archive)
    assert inodes["var/cache/lab/files/abc"][:2] == inodes["var/lib/lab/images/g/vmlinuz"][:2]
    assert inodes["var/cache/lab/files/abc"][1] == 2 and inodes["other"][1] == 1
    assert inodes["var/cache/lab/files/abc"][2] == 600 and inodes["var/lib/lab/images/g/vmlinuz"][2] == 0
    assert archive.count(b"kernel" * 100) == 1


def test_a_hard_link_before_its_file_is_refused():
    data = initramfs.regular_file("a", b"x")
    with pytest.raises(ValueError, match="not earlier"):
        _archive([initramfs.hard_link("b", data), data])


def test_parent_directories_come_parents_first_without_known_ones():
    assert initramfs.parent_directories(["opt/q/bin/x", "opt/q/lib/y"], {"opt"}) == ["opt/q", "opt/q/bin", "opt/q/lib"]
