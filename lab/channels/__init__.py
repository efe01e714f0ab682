"""Channels to a running guest: serial console, QMP, gdbstub, SSH."""
