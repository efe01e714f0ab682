"""Channels to a running guest: serial console (pexpect), QMP (qemu.qmp), gdbstub, shell, SSH (paramiko).

Each channel is a protocol client with every wait bounded; none of them starts a process.
May import: lab.errors, lab.deadline, lab.vocabulary.
"""
