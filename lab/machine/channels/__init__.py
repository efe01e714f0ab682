"""Channels to a running guest: serial console (a unix socket), QMP (qemu.qmp), gdbstub, shell, SSH (paramiko).

Each channel is a protocol client with every wait bounded; none of them starts a process.
May import: lab.errors, lab.deadline, lab.vocabulary.
"""
