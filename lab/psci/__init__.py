"""The PSCI v1.3 layer for TCG guests: firmware decisions, conduit sites, gdbstub trapping.

`firmware` is pure logic (what a PSCI v1.3 firmware of each personality answers); `symbols`
finds the kernel's conduit instructions; `layer` serves traps through QEMU's gdbstub; `attach`
wires a layer to a machine. What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
