"""Judging: observations in, witnesses and a verdict out.

Pure functions over recorded data: nothing here starts a process or talks to QEMU. What it may import
is the contracts in pyproject.toml (layers, and what judging may never import), checked by
import-linter (tests/test_layers.py).
"""
