"""One QEMU process and the channels to its guest.

Owns the typed machine spec (the only source of a QEMU command line), the process lifecycle,
accelerator choice and, in `channels/`, the serial console, QMP, the gdbstub client, guest
shell commands and SSH. Never imports the scenario, judge or report packages.
What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
