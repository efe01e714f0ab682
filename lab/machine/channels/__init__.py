"""Channels to a running guest: serial console (pexpect), QMP (qemu.qmp), gdbstub, shell, SSH (paramiko).

Each channel is a protocol client with every wait bounded; none of them starts a process.
What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
