"""The guest's swap disk seen from the host: the hibernation header, the lab's disk lock, and which
paths may be taken for a disk (`paths`: regular files; devices only when forced).

Uses QEMU's own disk tools (`qemu_tools`), so raw and qcow2 work alike.
What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
