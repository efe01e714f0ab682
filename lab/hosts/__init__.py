"""Where QEMU and its disk tools run: this machine, or a lab host reached over SSH.

A host runs commands, starts long-lived processes and gives the lab a local address for each of
QEMU's channels, so that everything above it (the console, QMP, the gdbstub, the guest's SSH, the
swap disk's tools) works the same on either. `local` is a thin layer over subprocess; `ssh` drives a
remote machine with paramiko (`ssh_login` logs in); `trace` reads the host kernel's KVM tracepoints.
Nothing here knows about scenarios or verdicts.
What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
